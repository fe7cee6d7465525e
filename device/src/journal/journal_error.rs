//! Why a state file could not be used.

use std::io;
use std::path::PathBuf;

use crate::engine::state::StateError;

/// A state file the daemon cannot resume from or keep. The daemon refuses to start on one
/// rather than serve a guest with less than the guest built.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading, writing or renaming the file failed.
    #[error("state file {path}: {err}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        err: io::Error,
    },
    /// The file does not start with the journal's magic and version.
    #[error("state file {0}: not a virtio-iommu state file of version 1")]
    NotAJournal(PathBuf),
    /// Larger than any journal this daemon writes.
    #[error("state file {path}: {len} bytes is more than the {max} a journal can hold")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
        /// The bound.
        max: u64,
    },
    /// The snapshot was refused (another configuration, or damaged).
    #[error("state file {path}: its snapshot was refused: {err}")]
    Snapshot {
        /// The file.
        path: PathBuf,
        /// Why.
        err: StateError,
    },
    /// A complete record (its checksum holds) that this daemon cannot read.
    #[error("state file {path}: record of kind {kind} at byte {offset} is malformed")]
    Record {
        /// The file.
        path: PathBuf,
        /// The record's kind byte.
        kind: u8,
        /// Where it starts.
        offset: usize,
    },
}
