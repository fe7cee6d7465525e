//! Event-queue records: the upstream 24-byte fault and the 48-byte extended fault / page
//! request whose first 24 bytes are laid out like the upstream fault.

use bitflags::bitflags;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use crate::request::DecodeError;
use crate::wire::wire;

/// Size of the upstream fault record.
pub const FAULT_SIZE: usize = 24;
/// Size of the extended fault / page-request record.
pub const EXT_EVENT_SIZE: usize = 48;

wire! {
    /// `struct virtio_iommu_fault` (24 bytes).
    #[derive(Default)]
    pub struct WireFault: FAULT_SIZE {
        /// [`FaultReason`] code.
        pub reason: u8,
        /// Reserved: must be zero (drivers drop the event otherwise).
        pub reserved: [u8; 3],
        /// [`FaultFlags`].
        pub flags: U32,
        /// Endpoint ID.
        pub endpoint: U32,
        /// Reserved in the upstream record; the PASID in the extended record.
        pub reserved1: U32,
        /// Faulting address (valid with `FaultFlags::ADDRESS`).
        pub address: U64,
    }
}

wire! {
    /// The extended event (48 bytes): fault with PASID, or page request.
    #[derive(Default)]
    pub struct WireExtEvent: EXT_EVENT_SIZE {
        /// [`FaultReason`] code.
        pub reason: u8,
        /// Reserved, zero.
        pub reserved: [u8; 3],
        /// [`FaultFlags`].
        pub flags: U32,
        /// Endpoint ID.
        pub endpoint: U32,
        /// PASID (valid with `FaultFlags::PASID`).
        pub pasid: U32,
        /// Address (valid with `FaultFlags::ADDRESS`).
        pub address: U64,
        /// Page request group ID (valid with `FaultFlags::GROUP_ID`).
        pub group_id: U16,
        /// Reserved, zero.
        pub reserved1: [u8; 6],
        /// Implementation-defined data to echo (valid with `FaultFlags::PRIV_DATA`).
        pub private_data: [U64; 2],
    }
}

/// Fault reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FaultReason {
    /// Unknown reason (also what drivers read for undefined codes).
    Unknown = 0,
    /// The endpoint is not attached to a domain and not in bypass.
    Domain = 1,
    /// No mapping, or the mapping forbids the access.
    Mapping = 2,
}

impl FaultReason {
    /// Decodes a reason byte; unknown codes read as `Unknown`, as the spec tells drivers.
    #[must_use]
    pub const fn from_code(v: u8) -> Self {
        match v {
            1 => FaultReason::Domain,
            2 => FaultReason::Mapping,
            _ => FaultReason::Unknown,
        }
    }
}

bitflags! {
    /// Event flags. Bits 0–2 and 8 are upstream; the rest belong to the extended record.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct FaultFlags: u32 {
        /// Read access.
        const READ = 1 << 0;
        /// Write access.
        const WRITE = 1 << 1;
        /// Instruction fetch.
        const EXEC = 1 << 2;
        /// Privileged access (extension).
        const PRIV = 1 << 3;
        /// Last request of its page-request group (extension).
        const LAST = 1 << 4;
        /// This is a page request: the driver must answer with PAGE_RESP (extension).
        const PAGE_REQ = 1 << 5;
        /// `address` is valid.
        const ADDRESS = 1 << 8;
        /// `pasid` is valid (extension).
        const PASID = 1 << 9;
        /// `group_id` is valid (extension).
        const GROUP_ID = 1 << 10;
        /// `private_data` is valid (extension).
        const PRIV_DATA = 1 << 11;
    }
}

/// Access permissions of a faulting access or page request.
pub const ACCESS_FLAGS: FaultFlags = FaultFlags::READ
    .union(FaultFlags::WRITE)
    .union(FaultFlags::EXEC)
    .union(FaultFlags::PRIV);

/// An unrecoverable translation fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultEvent {
    /// Reason.
    pub reason: FaultReason,
    /// Access flags (READ/WRITE/EXEC/PRIV).
    pub access: FaultFlags,
    /// Endpoint ID.
    pub endpoint: u32,
    /// Faulting address, if known.
    pub address: Option<u64>,
    /// PASID, if the access carried one.
    pub pasid: Option<u32>,
}

/// A recoverable fault: the endpoint waits for a PAGE_RESP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Endpoint ID.
    pub endpoint: u32,
    /// PASID, if the request carried one.
    pub pasid: Option<u32>,
    /// Page address.
    pub address: u64,
    /// Requested access (READ/WRITE/EXEC/PRIV).
    pub access: FaultFlags,
    /// Group ID (scope: the endpoint).
    pub group_id: u16,
    /// Last request of its group: the group is answered once, after this one.
    pub last: bool,
    /// Private data to echo, if any.
    pub private_data: Option<[u64; 2]>,
}

/// A decoded event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// An unrecoverable fault.
    Fault(FaultEvent),
    /// A page request.
    PageRequest(PageRequest),
}

impl FaultEvent {
    fn flags(&self) -> FaultFlags {
        let mut f = self.access & ACCESS_FLAGS;
        f.set(FaultFlags::ADDRESS, self.address.is_some());
        f
    }

    /// The upstream 24-byte record. The PASID cannot be expressed there and is dropped.
    #[must_use]
    pub fn encode_legacy(&self) -> [u8; FAULT_SIZE] {
        // Upstream drivers know READ/WRITE/EXEC/ADDRESS only.
        let flags = self.flags() - FaultFlags::PRIV;
        let w = WireFault {
            reason: self.reason as u8,
            reserved: [0; 3],
            flags: flags.bits().into(),
            endpoint: self.endpoint.into(),
            reserved1: 0.into(),
            address: self.address.unwrap_or(0).into(),
        };
        let mut out = [0; FAULT_SIZE];
        out.copy_from_slice(w.as_bytes());
        out
    }

    /// The 48-byte extended record.
    #[must_use]
    pub fn encode_ext(&self) -> [u8; EXT_EVENT_SIZE] {
        let mut flags = self.flags();
        flags.set(FaultFlags::PASID, self.pasid.is_some());
        let w = WireExtEvent {
            reason: self.reason as u8,
            flags: flags.bits().into(),
            endpoint: self.endpoint.into(),
            pasid: self.pasid.unwrap_or(0).into(),
            address: self.address.unwrap_or(0).into(),
            ..WireExtEvent::default()
        };
        let mut out = [0; EXT_EVENT_SIZE];
        out.copy_from_slice(w.as_bytes());
        out
    }
}

impl PageRequest {
    /// The 48-byte extended record (page requests have no legacy form).
    #[must_use]
    pub fn encode(&self) -> [u8; EXT_EVENT_SIZE] {
        let mut flags = (self.access & ACCESS_FLAGS)
            | FaultFlags::PAGE_REQ
            | FaultFlags::ADDRESS
            | FaultFlags::GROUP_ID;
        flags.set(FaultFlags::LAST, self.last);
        flags.set(FaultFlags::PASID, self.pasid.is_some());
        flags.set(FaultFlags::PRIV_DATA, self.private_data.is_some());
        let pd = self.private_data.unwrap_or([0; 2]);
        let w = WireExtEvent {
            reason: FaultReason::Mapping as u8,
            flags: flags.bits().into(),
            endpoint: self.endpoint.into(),
            pasid: self.pasid.unwrap_or(0).into(),
            address: self.address.into(),
            group_id: self.group_id.into(),
            private_data: [pd[0].into(), pd[1].into()],
            ..WireExtEvent::default()
        };
        let mut out = [0; EXT_EVENT_SIZE];
        out.copy_from_slice(w.as_bytes());
        out
    }
}

impl Event {
    /// Decodes an event from the bytes the device wrote (the used length of the buffer):
    /// exactly 24 bytes (upstream) or 48 bytes (extended). Undefined flag bits are ignored,
    /// unknown reasons read as `Unknown`; non-zero reserved head bytes make the record invalid.
    ///
    /// # Errors
    /// `TooShort`/`TooLong` for other lengths, `ReservedNotZero` for a bad head.
    pub fn parse(bytes: &[u8]) -> Result<Event, DecodeError> {
        match bytes.len() {
            FAULT_SIZE => {
                let w = WireFault::read_from_bytes(bytes).map_err(|_| DecodeError::TooShort {
                    need: FAULT_SIZE,
                    got: bytes.len(),
                })?;
                if w.reserved != [0; 3] {
                    return Err(DecodeError::ReservedNotZero);
                }
                let flags = FaultFlags::from_bits_truncate(w.flags.get());
                Ok(Event::Fault(FaultEvent {
                    reason: FaultReason::from_code(w.reason),
                    access: flags & (FaultFlags::READ | FaultFlags::WRITE | FaultFlags::EXEC),
                    endpoint: w.endpoint.get(),
                    address: flags.contains(FaultFlags::ADDRESS).then(|| w.address.get()),
                    pasid: None,
                }))
            }
            EXT_EVENT_SIZE => {
                let w =
                    WireExtEvent::read_from_bytes(bytes).map_err(|_| DecodeError::TooShort {
                        need: EXT_EVENT_SIZE,
                        got: bytes.len(),
                    })?;
                if w.reserved != [0; 3] {
                    return Err(DecodeError::ReservedNotZero);
                }
                let flags = FaultFlags::from_bits_truncate(w.flags.get());
                let pasid = flags.contains(FaultFlags::PASID).then(|| w.pasid.get());
                let access = flags & ACCESS_FLAGS;
                if flags.contains(FaultFlags::PAGE_REQ) {
                    if !flags.contains(FaultFlags::GROUP_ID | FaultFlags::ADDRESS) {
                        return Err(DecodeError::BadValue);
                    }
                    Ok(Event::PageRequest(PageRequest {
                        endpoint: w.endpoint.get(),
                        pasid,
                        address: w.address.get(),
                        access,
                        group_id: w.group_id.get(),
                        last: flags.contains(FaultFlags::LAST),
                        private_data: flags
                            .contains(FaultFlags::PRIV_DATA)
                            .then(|| [w.private_data[0].get(), w.private_data[1].get()]),
                    }))
                } else {
                    Ok(Event::Fault(FaultEvent {
                        reason: FaultReason::from_code(w.reason),
                        access,
                        endpoint: w.endpoint.get(),
                        address: flags.contains(FaultFlags::ADDRESS).then(|| w.address.get()),
                        pasid,
                    }))
                }
            }
            n if n < FAULT_SIZE => Err(DecodeError::TooShort {
                need: FAULT_SIZE,
                got: n,
            }),
            n if n < EXT_EVENT_SIZE => Err(DecodeError::TooShort {
                need: EXT_EVENT_SIZE,
                got: n,
            }),
            n => Err(DecodeError::TooLong {
                want: EXT_EVENT_SIZE,
                got: n,
            }),
        }
    }
}
