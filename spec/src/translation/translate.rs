//! `TRANSLATE` and `TRANSLATE_REPLY` (§2.3, §2.4).

use bitflags::bitflags;
use zerocopy::{FromBytes, IntoBytes};

use super::error::ProtocolError;
use super::layout::{WireRange, WireTranslate, WireTranslateReply};
use super::{MessageType, MAX_REPLY_RANGES};
use crate::event::{FaultFlags, FaultReason};
use crate::request::MapFlags;

bitflags! {
    /// `TRANSLATE.flags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct TranslateFlags: u32 {
        /// Read access.
        const READ = 1 << 0;
        /// Write access.
        const WRITE = 1 << 1;
        /// Instruction fetch.
        const EXEC = 1 << 2;
        /// Privileged access.
        const PRIV = 1 << 3;
        /// `pasid` is valid.
        const PASID = 1 << 4;
        /// A probe or prefetch: a failure is not reported to the guest.
        const NO_FAULT = 1 << 5;
    }
}

/// A decoded `TRANSLATE`. Decoding accepts any field values (the reply echoes the tag);
/// [`Translate::is_valid`] says whether the daemon answers it or answers `INVAL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translate {
    /// Client's tag.
    pub tag: u64,
    /// First address of the access.
    pub iova: u64,
    /// Bytes of the access.
    pub len: u64,
    /// Endpoint ID.
    pub endpoint: u32,
    /// PASID field (meaningful with [`TranslateFlags::PASID`]).
    pub pasid: u32,
    /// Flags, undefined bits kept so that they can be refused.
    pub flags: TranslateFlags,
}

impl Translate {
    /// Payload size.
    pub const SIZE: usize = 40;

    /// Decodes a payload.
    ///
    /// # Errors
    /// `BadSize` for a wrong length.
    pub fn parse(payload: &[u8]) -> Result<Self, ProtocolError> {
        let w = WireTranslate::read_from_bytes(payload)
            .map_err(|_| bad_size(MessageType::Translate, payload))?;
        Ok(Translate {
            tag: w.tag.get(),
            iova: w.iova.get(),
            len: w.len.get(),
            endpoint: w.endpoint.get(),
            pasid: w.pasid.get(),
            flags: TranslateFlags::from_bits_retain(w.flags.get()),
        })
    }

    /// The wire layout.
    #[must_use]
    pub fn to_wire(&self) -> WireTranslate {
        WireTranslate {
            tag: self.tag.into(),
            iova: self.iova.into(),
            len: self.len.into(),
            endpoint: self.endpoint.into(),
            pasid: self.pasid.into(),
            flags: self.flags.bits().into(),
            reserved: 0.into(),
        }
    }

    /// The PASID, when the request carries one.
    #[must_use]
    pub fn pasid(&self) -> Option<u32> {
        self.flags
            .contains(TranslateFlags::PASID)
            .then_some(self.pasid)
    }

    /// The last byte of the access, when `len` is at least 1 and does not overflow.
    #[must_use]
    pub fn last(&self) -> Option<u64> {
        self.iova.checked_add(self.len.checked_sub(1)?)
    }

    /// Whether the request is well formed apart from its endpoint (which the daemon checks
    /// against the client's ranges): a length, only defined flags, READ or WRITE.
    #[must_use]
    pub fn is_valid(&self) -> bool {
        self.last().is_some()
            && TranslateFlags::from_bits(self.flags.bits()).is_some()
            && self
                .flags
                .intersects(TranslateFlags::READ.union(TranslateFlags::WRITE))
    }

    /// The access as fault-record flags (READ, WRITE, EXEC, PRIV).
    #[must_use]
    pub fn access(&self) -> FaultFlags {
        let mut f = FaultFlags::empty();
        f.set(FaultFlags::READ, self.flags.contains(TranslateFlags::READ));
        f.set(
            FaultFlags::WRITE,
            self.flags.contains(TranslateFlags::WRITE),
        );
        f.set(FaultFlags::EXEC, self.flags.contains(TranslateFlags::EXEC));
        f.set(FaultFlags::PRIV, self.flags.contains(TranslateFlags::PRIV));
        f
    }
}

/// `TRANSLATE_REPLY.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum TranslateStatus {
    /// Translated: one or more ranges.
    Ok = 0,
    /// Not permitted: the fault fields describe it.
    Fault = 1,
    /// Malformed request.
    Inval = 2,
    /// The daemon does not translate this endpoint or this kind of access.
    Unsupp = 3,
}

impl TranslateStatus {
    /// The name used in `spec/TRANSLATION.md`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            TranslateStatus::Ok => "OK",
            TranslateStatus::Fault => "FAULT",
            TranslateStatus::Inval => "INVAL",
            TranslateStatus::Unsupp => "UNSUPP",
        }
    }
}

/// The fault of a `FAULT` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TranslateFault {
    /// `DOMAIN` or `MAPPING`.
    pub reason: FaultReason,
    /// Fault-record flags (READ, WRITE, EXEC, ADDRESS).
    pub flags: FaultFlags,
    /// The faulting IOVA.
    pub address: u64,
}

/// One translated range: `[iova, last]` → `[paddr, paddr + (last - iova)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TranslatedRange {
    /// First IOVA.
    pub iova: u64,
    /// Last IOVA, inclusive.
    pub last: u64,
    /// Guest-physical address of `iova`.
    pub paddr: u64,
    /// Permissions (READ, WRITE, MMIO).
    pub perm: MapFlags,
}

impl TranslatedRange {
    /// Whether `addr` is in the range.
    #[must_use]
    pub const fn contains(&self, addr: u64) -> bool {
        self.iova <= addr && addr <= self.last
    }

    /// The guest-physical address of `addr`, when it is in the range.
    #[must_use]
    pub const fn translate(&self, addr: u64) -> Option<u64> {
        if self.contains(addr) {
            // paddr + (last - iova) does not overflow: checked when decoded or built.
            Some(self.paddr.wrapping_add(addr - self.iova))
        } else {
            None
        }
    }

    /// Whether the range is well formed: `iova <= last` and the output end does not overflow.
    #[must_use]
    pub const fn is_valid(&self) -> bool {
        self.iova <= self.last && self.paddr.checked_add(self.last - self.iova).is_some()
    }

    fn to_wire(self) -> WireRange {
        WireRange {
            iova: self.iova.into(),
            last: self.last.into(),
            paddr: self.paddr.into(),
            perm: self.perm.bits().into(),
            reserved: 0.into(),
        }
    }
}

/// Up to [`MAX_REPLY_RANGES`] ranges, without allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TranslatedRanges {
    items: [TranslatedRange; MAX_REPLY_RANGES],
    len: usize,
}

impl TranslatedRanges {
    /// No ranges.
    #[must_use]
    pub const fn new() -> Self {
        TranslatedRanges {
            items: [TranslatedRange {
                iova: 0,
                last: 0,
                paddr: 0,
                perm: MapFlags::empty(),
            }; MAX_REPLY_RANGES],
            len: 0,
        }
    }

    /// Appends a range; `false` (and nothing appended) when full.
    pub fn push(&mut self, r: TranslatedRange) -> bool {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = r;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// Whether no more ranges fit.
    #[must_use]
    pub const fn is_full(&self) -> bool {
        self.len == MAX_REPLY_RANGES
    }

    /// The ranges.
    #[must_use]
    pub fn as_slice(&self) -> &[TranslatedRange] {
        &self.items[..self.len]
    }
}

/// A decoded `TRANSLATE_REPLY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TranslateReply {
    /// The request's tag.
    pub tag: u64,
    /// Status.
    pub status: TranslateStatus,
    /// With `FAULT`: the fault.
    pub fault: Option<TranslateFault>,
    /// With `OK`: the ranges (at least one).
    pub ranges: TranslatedRanges,
}

impl TranslateReply {
    /// Fixed part's size.
    pub const FIXED_SIZE: usize = 32;

    /// An `OK` reply.
    #[must_use]
    pub fn ok(tag: u64, ranges: TranslatedRanges) -> Self {
        TranslateReply {
            tag,
            status: TranslateStatus::Ok,
            fault: None,
            ranges,
        }
    }

    /// A `FAULT` reply.
    #[must_use]
    pub fn fault(tag: u64, fault: TranslateFault) -> Self {
        TranslateReply {
            tag,
            status: TranslateStatus::Fault,
            fault: Some(fault),
            ranges: TranslatedRanges::new(),
        }
    }

    /// An `INVAL` or `UNSUPP` reply (no ranges, no fault).
    #[must_use]
    pub fn refused(tag: u64, status: TranslateStatus) -> Self {
        TranslateReply {
            tag,
            status,
            fault: None,
            ranges: TranslatedRanges::new(),
        }
    }

    /// Decodes a payload whose size passed the header check.
    ///
    /// # Errors
    /// `BadSize` when `nr_ranges` does not match the size; `BadValue` for an undefined status,
    /// ranges that contradict the status, a malformed range, or ranges not contiguous.
    pub fn parse(payload: &[u8]) -> Result<Self, ProtocolError> {
        let bad = bad_size(MessageType::TranslateReply, payload);
        let (w, rest) = WireTranslateReply::read_from_prefix(payload).map_err(|_| bad)?;
        let n = usize::try_from(w.nr_ranges.get()).map_err(|_| bad)?;
        if n > MAX_REPLY_RANGES {
            return Err(bad);
        }
        let wire = <[WireRange]>::ref_from_bytes_with_elems(rest, n).map_err(|_| bad)?;
        let status = match w.status.get() {
            0 => TranslateStatus::Ok,
            1 => TranslateStatus::Fault,
            2 => TranslateStatus::Inval,
            3 => TranslateStatus::Unsupp,
            _ => return Err(ProtocolError::BadValue),
        };
        if (status == TranslateStatus::Ok) != (n > 0) {
            return Err(ProtocolError::BadValue);
        }
        let mut ranges = TranslatedRanges::new();
        let mut next: Option<u64> = None;
        for r in wire {
            let t = TranslatedRange {
                iova: r.iova.get(),
                last: r.last.get(),
                paddr: r.paddr.get(),
                perm: MapFlags::from_bits_truncate(r.perm.get()),
            };
            if !t.is_valid() || next.is_some_and(|a| a != t.iova) {
                return Err(ProtocolError::BadValue);
            }
            next = t.last.checked_add(1);
            // n <= MAX_REPLY_RANGES, so the push fits.
            ranges.push(t);
        }
        let fault = (status == TranslateStatus::Fault).then(|| TranslateFault {
            reason: u8::try_from(w.fault_reason.get())
                .map_or(FaultReason::Unknown, FaultReason::from_code),
            flags: FaultFlags::from_bits_retain(w.fault_flags.get()),
            address: w.fault_address.get(),
        });
        Ok(TranslateReply {
            tag: w.tag.get(),
            status,
            fault,
            ranges,
        })
    }

    /// Payload bytes of this message.
    #[must_use]
    pub fn payload_len(&self) -> usize {
        Self::FIXED_SIZE + self.ranges.as_slice().len() * core::mem::size_of::<WireRange>()
    }

    /// Writes the payload into `out`; returns its length, or `None` when `out` is too small.
    pub fn write_payload(&self, out: &mut [u8]) -> Option<usize> {
        let len = self.payload_len();
        let out = out.get_mut(..len)?;
        let f = self.fault.unwrap_or(TranslateFault {
            reason: FaultReason::Unknown,
            flags: FaultFlags::empty(),
            address: 0,
        });
        let fixed = WireTranslateReply {
            tag: self.tag.into(),
            status: (self.status as u32).into(),
            nr_ranges: u32::try_from(self.ranges.as_slice().len()).ok()?.into(),
            fault_reason: u32::from(f.reason as u8).into(),
            fault_flags: f.flags.bits().into(),
            fault_address: f.address.into(),
        };
        let (head, mut tail) = out.split_at_mut(Self::FIXED_SIZE);
        head.copy_from_slice(fixed.as_bytes());
        for r in self.ranges.as_slice() {
            let (one, more) = tail.split_at_mut(core::mem::size_of::<WireRange>());
            one.copy_from_slice(r.to_wire().as_bytes());
            tail = more;
        }
        Some(len)
    }
}

fn bad_size(t: MessageType, payload: &[u8]) -> ProtocolError {
    ProtocolError::BadSize {
        msg_type: t.code(),
        size: u32::try_from(payload.len()).unwrap_or(u32::MAX),
    }
}
