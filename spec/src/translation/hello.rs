//! `HELLO` and `HELLO_REPLY` (§2.1, §2.2).

use bitflags::bitflags;
use zerocopy::{FromBytes, IntoBytes};

use super::error::ProtocolError;
use super::layout::{WireEndpointRange, WireHello, WireHelloReply};
use super::{MAX_HELLO_RANGES, VERSION};

/// An inclusive range of endpoint IDs a client serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EndpointRange {
    /// First endpoint ID.
    pub first: u32,
    /// Last endpoint ID, inclusive.
    pub last: u32,
}

impl EndpointRange {
    /// Whether `endpoint` is in the range.
    #[must_use]
    pub const fn contains(&self, endpoint: u32) -> bool {
        self.first <= endpoint && endpoint <= self.last
    }
}

/// A decoded `HELLO`; its ranges borrow the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello<'a> {
    /// Protocol version the client speaks.
    pub version: u32,
    /// Flags (none defined; the daemon ignores bits it does not know).
    pub flags: u32,
    /// Endpoint ranges, as sent (not yet checked: see [`Hello::status`]).
    pub ranges: &'a [WireEndpointRange],
}

impl<'a> Hello<'a> {
    /// Fixed part's size.
    pub const FIXED_SIZE: usize = 16;

    /// Decodes a payload whose size passed the header check.
    ///
    /// # Errors
    /// `BadSize` when `nr_ranges` does not match the payload size.
    pub fn parse(payload: &'a [u8]) -> Result<Self, ProtocolError> {
        let bad = ProtocolError::BadSize {
            msg_type: super::MessageType::Hello.code(),
            size: u32::try_from(payload.len()).unwrap_or(u32::MAX),
        };
        let (fixed, rest) = WireHello::read_from_prefix(payload).map_err(|_| bad)?;
        let n = usize::try_from(fixed.nr_ranges.get()).map_err(|_| bad)?;
        let ranges = <[WireEndpointRange]>::ref_from_bytes_with_elems(rest, n).map_err(|_| bad)?;
        Ok(Hello {
            version: fixed.version.get(),
            flags: fixed.flags.get(),
            ranges,
        })
    }

    /// The status the daemon answers: the version first, then the ranges.
    #[must_use]
    pub fn status(&self) -> HelloStatus {
        if self.version != VERSION {
            return HelloStatus::VersionUnsupported;
        }
        if self.ranges.is_empty() || self.ranges.len() > MAX_HELLO_RANGES {
            return HelloStatus::InvalidRanges;
        }
        if self.ranges.iter().any(|r| r.first.get() > r.last.get()) {
            return HelloStatus::InvalidRanges;
        }
        HelloStatus::Accepted
    }

    /// The ranges, typed.
    pub fn endpoint_ranges(&self) -> impl Iterator<Item = EndpointRange> + 'a {
        self.ranges.iter().map(|r| EndpointRange {
            first: r.first.get(),
            last: r.last.get(),
        })
    }

    /// Payload bytes of this message.
    #[must_use]
    pub fn payload_len(&self) -> usize {
        Self::FIXED_SIZE + core::mem::size_of_val(self.ranges)
    }

    /// Writes the payload into `out` (at least [`Hello::payload_len`] bytes); returns its length.
    /// Returns `None` when `out` is too small.
    pub fn write_payload(&self, out: &mut [u8]) -> Option<usize> {
        let len = self.payload_len();
        let out = out.get_mut(..len)?;
        let fixed = WireHello {
            version: self.version.into(),
            flags: self.flags.into(),
            nr_ranges: u32::try_from(self.ranges.len()).ok()?.into(),
            reserved: 0.into(),
        };
        out[..Self::FIXED_SIZE].copy_from_slice(fixed.as_bytes());
        out[Self::FIXED_SIZE..].copy_from_slice(self.ranges.as_bytes());
        Some(len)
    }
}

impl WireEndpointRange {
    /// The range `first..=last`.
    #[must_use]
    pub fn new(first: u32, last: u32) -> Self {
        WireEndpointRange {
            first: first.into(),
            last: last.into(),
        }
    }
}

/// `HELLO_REPLY.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum HelloStatus {
    /// The client is accepted.
    Accepted = 0,
    /// The version is not supported.
    VersionUnsupported = 1,
    /// `first > last`, or `nr_ranges` out of bounds.
    InvalidRanges = 2,
}

bitflags! {
    /// `HELLO_REPLY.flags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct HelloReplyFlags: u32 {
        /// Translations of PASID spaces may wait for the guest's page response (§3.3).
        const PAGE_REQUESTS = 1 << 0;
    }
}

/// A decoded `HELLO_REPLY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloReply {
    /// Protocol version of the daemon.
    pub version: u32,
    /// Whether the client is accepted.
    pub status: HelloStatus,
    /// The device's page-size mask; its lowest set bit is the granule.
    pub page_size_mask: u64,
    /// Flags (unknown bits dropped).
    pub flags: HelloReplyFlags,
}

impl HelloReply {
    /// Payload size.
    pub const SIZE: usize = 24;

    /// Decodes a payload.
    ///
    /// # Errors
    /// `BadValue` for an undefined status; `BadSize` for a wrong length.
    pub fn parse(payload: &[u8]) -> Result<Self, ProtocolError> {
        let w = WireHelloReply::read_from_bytes(payload).map_err(|_| ProtocolError::BadSize {
            msg_type: super::MessageType::HelloReply.code(),
            size: u32::try_from(payload.len()).unwrap_or(u32::MAX),
        })?;
        let status = match w.status.get() {
            0 => HelloStatus::Accepted,
            1 => HelloStatus::VersionUnsupported,
            2 => HelloStatus::InvalidRanges,
            _ => return Err(ProtocolError::BadValue),
        };
        Ok(HelloReply {
            version: w.version.get(),
            status,
            page_size_mask: w.page_size_mask.get(),
            flags: HelloReplyFlags::from_bits_truncate(w.flags.get()),
        })
    }

    /// The wire layout.
    #[must_use]
    pub fn to_wire(&self) -> WireHelloReply {
        WireHelloReply {
            version: self.version.into(),
            status: (self.status as u32).into(),
            page_size_mask: self.page_size_mask.into(),
            flags: self.flags.bits().into(),
            reserved: 0.into(),
        }
    }
}
