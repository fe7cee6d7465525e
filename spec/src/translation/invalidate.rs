//! `INVALIDATE` and `INVAL_ACK` (§2.5, §2.6).

use bitflags::bitflags;
use zerocopy::FromBytes;

use super::error::ProtocolError;
use super::layout::{WireInvalAck, WireInvalidate};
use super::MessageType;

bitflags! {
    /// `INVALIDATE.flags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct InvalidateFlags: u32 {
        /// Only PASID `pasid`.
        const PASID = 1 << 0;
        /// Any PASID or none.
        const ALL_PASIDS = 1 << 1;
        /// Every endpoint the client serves.
        const ALL_ENDPOINTS = 1 << 2;
    }
}

/// Which endpoints an `INVALIDATE` affects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoints {
    /// One endpoint.
    One(u32),
    /// Every endpoint the client serves.
    All,
}

/// Which address spaces of the affected endpoints an `INVALIDATE` affects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pasids {
    /// Translations made without a PASID.
    NoPasid,
    /// Translations of one PASID.
    One(u32),
    /// Translations with any PASID or none.
    All,
}

/// A decoded `INVALIDATE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Invalidate {
    /// Sequence number on the connection.
    pub seq: u64,
    /// First IOVA affected.
    pub first: u64,
    /// Last IOVA affected, inclusive.
    pub last: u64,
    /// Affected endpoints.
    pub endpoints: Endpoints,
    /// Affected address spaces.
    pub pasids: Pasids,
}

impl Invalidate {
    /// Payload size.
    pub const SIZE: usize = 40;

    /// Decodes a payload.
    ///
    /// # Errors
    /// `BadSize` for a wrong length; `BadValue` for undefined flags, `PASID` with
    /// `ALL_PASIDS`, or `first > last`.
    pub fn parse(payload: &[u8]) -> Result<Self, ProtocolError> {
        let w = WireInvalidate::read_from_bytes(payload).map_err(|_| ProtocolError::BadSize {
            msg_type: MessageType::Invalidate.code(),
            size: u32::try_from(payload.len()).unwrap_or(u32::MAX),
        })?;
        let flags = InvalidateFlags::from_bits(w.flags.get()).ok_or(ProtocolError::BadValue)?;
        let pasids = match (
            flags.contains(InvalidateFlags::PASID),
            flags.contains(InvalidateFlags::ALL_PASIDS),
        ) {
            (false, false) => Pasids::NoPasid,
            (true, false) => Pasids::One(w.pasid.get()),
            (false, true) => Pasids::All,
            (true, true) => return Err(ProtocolError::BadValue),
        };
        let endpoints = if flags.contains(InvalidateFlags::ALL_ENDPOINTS) {
            Endpoints::All
        } else {
            Endpoints::One(w.endpoint.get())
        };
        let (first, last) = (w.first.get(), w.last.get());
        if first > last {
            return Err(ProtocolError::BadValue);
        }
        Ok(Invalidate {
            seq: w.seq.get(),
            first,
            last,
            endpoints,
            pasids,
        })
    }

    /// The wire layout.
    #[must_use]
    pub fn to_wire(&self) -> WireInvalidate {
        let mut flags = InvalidateFlags::empty();
        let endpoint = match self.endpoints {
            Endpoints::One(e) => e,
            Endpoints::All => {
                flags |= InvalidateFlags::ALL_ENDPOINTS;
                0
            }
        };
        let pasid = match self.pasids {
            Pasids::NoPasid => 0,
            Pasids::One(p) => {
                flags |= InvalidateFlags::PASID;
                p
            }
            Pasids::All => {
                flags |= InvalidateFlags::ALL_PASIDS;
                0
            }
        };
        WireInvalidate {
            seq: self.seq.into(),
            first: self.first.into(),
            last: self.last.into(),
            endpoint: endpoint.into(),
            pasid: pasid.into(),
            flags: flags.bits().into(),
            reserved: 0.into(),
        }
    }

    /// Whether a translation of `[first, last]` made for `endpoint` with `pasid` is affected.
    #[must_use]
    pub fn covers(&self, endpoint: u32, pasid: Option<u32>, first: u64, last: u64) -> bool {
        let ep = match self.endpoints {
            Endpoints::One(e) => e == endpoint,
            Endpoints::All => true,
        };
        let space = match self.pasids {
            Pasids::NoPasid => pasid.is_none(),
            Pasids::One(p) => pasid == Some(p),
            Pasids::All => true,
        };
        ep && space && first <= self.last && self.first <= last
    }
}

/// A decoded `INVAL_ACK`: every `INVALIDATE` up to `seq` is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InvalAck {
    /// Highest sequence number handled.
    pub seq: u64,
}

impl InvalAck {
    /// Payload size.
    pub const SIZE: usize = 8;

    /// Decodes a payload.
    ///
    /// # Errors
    /// `BadSize` for a wrong length.
    pub fn parse(payload: &[u8]) -> Result<Self, ProtocolError> {
        let w = WireInvalAck::read_from_bytes(payload).map_err(|_| ProtocolError::BadSize {
            msg_type: MessageType::InvalAck.code(),
            size: u32::try_from(payload.len()).unwrap_or(u32::MAX),
        })?;
        Ok(InvalAck { seq: w.seq.get() })
    }

    /// The wire layout.
    #[must_use]
    pub fn to_wire(&self) -> WireInvalAck {
        WireInvalAck {
            seq: self.seq.into(),
        }
    }
}
