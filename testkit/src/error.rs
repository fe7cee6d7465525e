//! The test kit's error type.

use std::time::Duration;

/// What can go wrong in guest RAM or on a raw ring.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A guest-physical range is not inside guest RAM.
    #[error("guest address range {gpa:#x}+{len:#x} is outside guest RAM")]
    OutOfBounds {
        /// First address of the range.
        gpa: u64,
        /// Length of the range in bytes.
        len: u64,
    },
    /// Guest RAM has no free run of the requested number of pages.
    #[error("guest RAM has no {pages} contiguous free pages")]
    OutOfMemory {
        /// The number of pages that were asked for.
        pages: usize,
    },
    /// An operating-system call failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Nothing happened within the allowed time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
    /// The other side of a ring broke the virtqueue rules.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The caller used the kit in a way it does not support.
    #[error("invalid use of the test kit: {0}")]
    Usage(String),
}

/// Result alias used across the kit.
pub type Result<T> = std::result::Result<T, Error>;
