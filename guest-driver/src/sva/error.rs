//! Why building a table or binding it failed.

use core::fmt;

use virtio_iommu_spec::ext::TableFormat;

use crate::error::Error;

/// An error of the `sva` module: a table operation the caller got wrong, or a request error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvaError {
    /// A request failed (device status, pre-flight check, transport).
    Driver(Error),
    /// An address or size is not a multiple of 4 KiB.
    Unaligned,
    /// The size is zero or the range wraps around.
    EmptyRange,
    /// The input range leaves the table's address space (VA bits, or canonical form on x86).
    OutOfRange,
    /// The output range does not fit the format's output address field.
    OutputTooWide,
    /// Part of the range is already mapped at `va`; nothing was changed.
    AlreadyMapped {
        /// The first address found mapped.
        va: u64,
    },
    /// The `Hal` could not provide table memory (or gave unaligned pages).
    NoMem,
    /// A table's address-space size this module does not build (`va_bits`, `addr_width`).
    UnsupportedWidth(u32),
    /// A PASID outside the table (`pasid >= 2^s1cdmax`).
    PasidOutOfRange {
        /// The PASID asked for.
        pasid: u32,
        /// The table's `s1cdmax`.
        cdmax: u32,
    },
    /// An `s1cdmax` too large for the layout (linear > 10, two-level > 20).
    CdMaxTooLarge(u32),
    /// The endpoint's PROBE did not advertise this table format.
    FormatNotAdvertised(TableFormat),
    /// The endpoint supports fewer PASID bits than the table needs.
    PasidBitsTooFew {
        /// Bits the table needs (`s1cdmax`, or the width of the PASID).
        needed: u32,
        /// Bits the endpoint advertised (0 when it advertised none).
        supported: u8,
    },
    /// A table descriptor with values no table of this module has (format code, `s1fmt`,
    /// alignment, address width).
    BadTableDesc,
    /// The table's own bookkeeping disagrees with its memory (a bug, or memory corruption).
    Corrupt,
}

impl From<Error> for SvaError {
    fn from(e: Error) -> Self {
        SvaError::Driver(e)
    }
}

impl fmt::Display for SvaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SvaError::Driver(e) => write!(f, "request failed: {e}"),
            SvaError::Unaligned => f.write_str("address or size not 4 KiB aligned"),
            SvaError::EmptyRange => f.write_str("empty or wrapping range"),
            SvaError::OutOfRange => f.write_str("range outside the table's input space"),
            SvaError::OutputTooWide => f.write_str("output address too wide for the format"),
            SvaError::AlreadyMapped { va } => write!(f, "{va:#x} is already mapped"),
            SvaError::NoMem => f.write_str("no memory for table pages"),
            SvaError::UnsupportedWidth(w) => write!(f, "unsupported address width {w}"),
            SvaError::PasidOutOfRange { pasid, cdmax } => {
                write!(f, "PASID {pasid} outside a table of 2^{cdmax} entries")
            }
            SvaError::CdMaxTooLarge(n) => write!(f, "s1cdmax {n} too large for the layout"),
            SvaError::FormatNotAdvertised(t) => {
                write!(f, "endpoint does not advertise table format {t:?}")
            }
            SvaError::PasidBitsTooFew { needed, supported } => {
                write!(
                    f,
                    "table needs {needed} PASID bits, endpoint has {supported}"
                )
            }
            SvaError::BadTableDesc => f.write_str("malformed table descriptor"),
            SvaError::Corrupt => f.write_str("table bookkeeping does not match its memory"),
        }
    }
}

impl core::error::Error for SvaError {}
