//! Why a device-state stream was refused.

use virtio_iommu_spec::Status;

/// A refused device-state stream. Every variant but [`StateError::Host`] is found before
/// anything changes, so the device keeps its state; the message names the difference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Longer than the device accepts.
    #[error("stream of {len} bytes is longer than the {max} bytes accepted")]
    TooLong {
        /// Bytes received (at least).
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The first bytes are not the magic.
    #[error("not a virtio-iommu device state (magic {0:02x?})")]
    BadMagic([u8; 8]),
    /// A version this device cannot read.
    #[error("state version {found} is not supported (this device reads version {supported})")]
    Version {
        /// The stream's version.
        found: u32,
        /// The one this device reads.
        supported: u32,
    },
    /// The header's length is not the stream's.
    #[error("the header says {declared} bytes but the stream has {actual}")]
    Length {
        /// Length in the header.
        declared: u64,
        /// Bytes received.
        actual: usize,
    },
    /// The checksum does not match the bytes.
    #[error("checksum {found:#010x} but the bytes give {computed:#010x}: the stream is corrupt")]
    Checksum {
        /// The stream's checksum.
        found: u32,
        /// The checksum of its bytes.
        computed: u32,
    },
    /// A section or record ends before its fields do.
    #[error("truncated in {section}: {need} more bytes needed, {left} left")]
    Truncated {
        /// Where.
        section: &'static str,
        /// Bytes the next field needs.
        need: u64,
        /// Bytes left.
        left: usize,
    },
    /// Sections out of order, unknown or missing.
    #[error("section {found} where {expected} was expected")]
    Section {
        /// The section that belongs here.
        expected: &'static str,
        /// The ID found.
        found: u32,
    },
    /// A section is longer than its records.
    #[error("{section}: {left} bytes left over after its records")]
    Trailing {
        /// Where.
        section: &'static str,
        /// Bytes left over.
        left: usize,
    },
    /// The source device was configured differently from this one.
    #[error("{what} differs: {stream} in the stream, {device} on this device")]
    Mismatch {
        /// The field.
        what: String,
        /// Its value in the stream.
        stream: String,
        /// Its value here.
        device: String,
    },
    /// A value no guest could have built on a device configured as this one.
    #[error("{section}: {why}")]
    Invalid {
        /// Where.
        section: &'static str,
        /// What is wrong, with the record it is in.
        why: String,
    },
    /// Rebuilding the checked state failed (the host refused: it ran out of room, say); the
    /// device was reset.
    #[error("rebuilding the state failed at {what}: S_{status}; the device was reset")]
    Rebuild {
        /// The step.
        what: String,
        /// The status the request would have had.
        status: Status,
    },
}

impl StateError {
    pub(super) fn invalid(section: &'static str, why: impl Into<String>) -> Self {
        StateError::Invalid {
            section,
            why: why.into(),
        }
    }

    pub(super) fn mismatch(
        what: impl Into<String>,
        stream: impl core::fmt::Display,
        device: impl core::fmt::Display,
    ) -> Self {
        StateError::Mismatch {
            what: what.into(),
            stream: stream.to_string(),
            device: device.to_string(),
        }
    }
}
