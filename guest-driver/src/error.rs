//! The driver's error type: one variant per device status, plus what the driver itself detects.

use core::fmt;

use virtio_iommu_spec::{Features, Status};

/// Why a request, the initialisation or a queue operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    // ---- Device statuses (the tail's status byte) ----
    /// `S_IOERR`: virtio communication error.
    IoErr,
    /// `S_UNSUPP`: the device does not support the request.
    Unsupported,
    /// `S_DEVERR`: internal device error.
    DevErr,
    /// `S_INVAL`: invalid parameters.
    Inval,
    /// `S_RANGE`: out-of-range parameters.
    Range,
    /// `S_NOENT`: entry (endpoint, domain) not found.
    NoEnt,
    /// `S_FAULT`: bad address.
    Fault,
    /// `S_NOMEM`: the device ran out of resources.
    NoMem,
    /// The device wrote a status byte no protocol version defines.
    UnknownStatus(u8),

    // ---- Replies the driver cannot accept ----
    /// The device returned the request with used length 0: it did not understand it.
    NoReply,
    /// The device's used length is neither 0 nor the size of the writable part.
    UsedLengthMismatch {
        /// Size of the writable part the driver supplied.
        expected: usize,
        /// Used length the device reported.
        got: u32,
    },
    /// The device did not complete the request within `DriverOptions::max_spins` polls. The
    /// request stays in flight: its buffers and ring slots are held until the device returns
    /// it (the late completion is then discarded) or the driver is dropped (which resets the
    /// device).
    Timeout,
    /// A used-ring entry names a descriptor that heads no buffer the driver has in flight on
    /// that queue (out of range, inside a chain, or already returned). The driver cannot skip
    /// the entry safely, so every later call on that queue reports it again until the device
    /// rewrites it or the driver is dropped; the other queue is unaffected.
    BadUsedId {
        /// The queue (0: requests, 1: events).
        queue: u16,
        /// The descriptor id as `virtio-drivers` reads it (the low 16 bits of the entry).
        id: u16,
    },
    /// An event record that is no fault or page request this driver knows, or whose used
    /// length exceeds the buffer. The buffer was re-posted; poll again for the next event.
    MalformedEvent {
        /// The used length the device reported.
        used_len: u32,
    },
    /// A PROBE reply whose properties break the format: a property running past the area, a
    /// known property too short for its type, a reserved region or input range whose last
    /// address is below its start, or a zero page-size mask. Nothing of the reply is used.
    MalformedProbe {
        /// Offset of the offending property in the properties area.
        offset: u32,
    },

    // ---- Pre-flight checks (nothing was sent) ----
    /// An address or size is not a multiple of the granule.
    Unaligned,
    /// The range is empty or wraps around the address space.
    EmptyRange,
    /// The range leaves `input_range`.
    OutOfRange,
    /// The domain ID lies outside `domain_range`.
    DomainOutOfRange,
    /// The request or flag needs a feature that was not negotiated.
    NotNegotiated(Features),
    /// A flags value has bits the protocol does not define.
    UnknownFlags,
    /// An INVALIDATE range granule outside 12..=63 (log2 of the page size).
    InvalidGranule,
    /// The device's `probe_size` is larger than the driver is willing to allocate.
    ProbeTooLarge(u32),

    // ---- Initialisation ----
    /// The transport is not a virtio-iommu device.
    WrongDeviceType,
    /// The device does not offer `VIRTIO_F_VERSION_1`.
    NoVersion1,
    /// The device does not offer `F_MAP_UNMAP`; this driver cannot use it.
    NoMapUnmap,
    /// The device's `page_size_mask` is zero.
    ZeroPageSizeMask,
    /// The device cleared `FEATURES_OK`: it refused the feature subset.
    FeaturesRejected,
    /// The config generation kept changing while the driver read the config space.
    ConfigUnstable,
    /// The config's input range ends below its start.
    BadInputRange {
        /// `input_range.start`.
        start: u64,
        /// `input_range.end` (inclusive).
        last: u64,
    },
    /// The config's domain range ends below its start.
    BadDomainRange {
        /// `domain_range.start`.
        start: u32,
        /// `domain_range.end` (inclusive).
        last: u32,
    },
    /// The device did not keep the `bypass` byte the driver wrote (read back after writing).
    BypassNotKept {
        /// The value written.
        wanted: bool,
    },

    // ---- Queue handling ----
    /// The request queue has no room for another request.
    QueueFull,
    /// The token names no outstanding or completed request.
    UnknownToken,
    /// An error from `virtio-drivers` (queue setup, DMA allocation, a used-ring entry that
    /// names no buffer the driver posted, ...).
    Transport(virtio_drivers::Error),
}

impl Error {
    /// The error for a non-OK status byte, or `None` for `S_OK`.
    #[must_use]
    pub fn from_status_byte(byte: u8) -> Option<Error> {
        match Status::try_from(byte) {
            Ok(Status::Ok) => None,
            Ok(s) => Some(Error::from(s)),
            Err(unknown) => Some(Error::UnknownStatus(unknown.0)),
        }
    }

    /// The device status this error carries, if it is one.
    #[must_use]
    pub const fn status(&self) -> Option<Status> {
        Some(match self {
            Error::IoErr => Status::IoErr,
            Error::Unsupported => Status::Unsupp,
            Error::DevErr => Status::DevErr,
            Error::Inval => Status::Inval,
            Error::Range => Status::Range,
            Error::NoEnt => Status::NoEnt,
            Error::Fault => Status::Fault,
            Error::NoMem => Status::NoMem,
            _ => return None,
        })
    }
}

impl From<Status> for Error {
    /// Maps a device status to its error. `S_OK` is not an error; it maps to `IoErr` only so
    /// that the conversion is total (the driver never converts `S_OK`).
    fn from(s: Status) -> Self {
        match s {
            Status::Ok | Status::IoErr => Error::IoErr,
            Status::Unsupp => Error::Unsupported,
            Status::DevErr => Error::DevErr,
            Status::Inval => Error::Inval,
            Status::Range => Error::Range,
            Status::NoEnt => Error::NoEnt,
            Status::Fault => Error::Fault,
            Status::NoMem => Error::NoMem,
        }
    }
}

impl From<virtio_drivers::Error> for Error {
    fn from(e: virtio_drivers::Error) -> Self {
        match e {
            virtio_drivers::Error::QueueFull => Error::QueueFull,
            other => Error::Transport(other),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = self.status() {
            return write!(f, "device status {s}");
        }
        match self {
            Error::UnknownStatus(b) => write!(f, "unknown device status {b:#x}"),
            Error::NoReply => f.write_str("device returned the request unwritten"),
            Error::UsedLengthMismatch { expected, got } => {
                write!(f, "used length {got}, expected {expected}")
            }
            Error::Timeout => f.write_str("device did not answer in time"),
            Error::BadUsedId { queue, id } => {
                write!(
                    f,
                    "used entry on queue {queue} names descriptor {id}, not in flight"
                )
            }
            Error::MalformedEvent { used_len } => {
                write!(f, "malformed event record ({used_len} bytes)")
            }
            Error::MalformedProbe { offset } => {
                write!(f, "malformed PROBE property at offset {offset}")
            }
            Error::Unaligned => f.write_str("address or size not aligned to the granule"),
            Error::EmptyRange => f.write_str("empty or wrapping range"),
            Error::OutOfRange => f.write_str("range outside input_range"),
            Error::DomainOutOfRange => f.write_str("domain outside domain_range"),
            Error::NotNegotiated(feat) => write!(f, "feature {feat:?} not negotiated"),
            Error::UnknownFlags => f.write_str("undefined flag bits"),
            Error::InvalidGranule => f.write_str("invalidation granule outside 12..=63"),
            Error::ProbeTooLarge(n) => write!(f, "probe_size {n} too large"),
            Error::WrongDeviceType => f.write_str("not a virtio-iommu device"),
            Error::NoVersion1 => f.write_str("device does not offer VIRTIO_F_VERSION_1"),
            Error::NoMapUnmap => f.write_str("device does not offer F_MAP_UNMAP"),
            Error::ZeroPageSizeMask => f.write_str("device page_size_mask is zero"),
            Error::FeaturesRejected => f.write_str("device rejected the features"),
            Error::ConfigUnstable => f.write_str("config generation never settled"),
            Error::BadInputRange { start, last } => {
                write!(f, "input range {start:#x}..={last:#x} is inverted")
            }
            Error::BadDomainRange { start, last } => {
                write!(f, "domain range {start}..={last} is inverted")
            }
            Error::BypassNotKept { wanted } => {
                write!(f, "device did not keep bypass = {}", u8::from(*wanted))
            }
            Error::QueueFull => f.write_str("request queue full"),
            Error::UnknownToken => f.write_str("unknown request token"),
            Error::Transport(e) => write!(f, "virtio transport: {e}"),
            _ => Ok(()),
        }
    }
}

impl core::error::Error for Error {}
