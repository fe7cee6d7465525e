//! Request layouts, with typed decode (device side) and encode (driver side).
//!
//! A request is one device-readable part followed by one device-writable part. The readable
//! part is the request structure without its tail; the writable part ends with the 4-byte
//! [`ReqTail`] (for PROBE the properties area comes first). The head and tail live in
//! [`crate::frame`] and are re-exported here. [`Request::parse`] takes the
//! readable bytes, gathered from however many descriptors carried them, and checks the exact
//! length and the reserved fields of the request type.

use bitflags::bitflags;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::ext::{
    self, InvalCaches, InvalFlags, InvalScope, PageRespCode, PageRespFlags, ReqAttachPgtVtd,
    ReqAttachPstArm, ReqAttachTable, ReqInvalidate, ReqPageResp, TableFormat, VtdFlags,
};
pub use crate::frame::{ReqHead, ReqTail, TAIL_SIZE};
use crate::status::Status;
use crate::wire::wire;

wire! {
    /// ATTACH without tail (20 bytes).
    pub struct ReqAttach: 20 {
        /// `type` = 1.
        pub head: ReqHead,
        /// Domain ID.
        pub domain: U32,
        /// Endpoint ID.
        pub endpoint: U32,
        /// [`AttachFlags`].
        pub flags: U32,
        /// Reserved: must be zero.
        pub reserved: [u8; 4],
    }
}

wire! {
    /// DETACH without tail (20 bytes).
    pub struct ReqDetach: 20 {
        /// `type` = 2.
        pub head: ReqHead,
        /// Domain ID.
        pub domain: U32,
        /// Endpoint ID.
        pub endpoint: U32,
        /// Reserved: ignored by the device.
        pub reserved: [u8; 8],
    }
}

wire! {
    /// MAP without tail (36 bytes).
    pub struct ReqMap: 36 {
        /// `type` = 3.
        pub head: ReqHead,
        /// Domain ID.
        pub domain: U32,
        /// First input address.
        pub virt_start: U64,
        /// Last input address, inclusive.
        pub virt_end: U64,
        /// Output address of `virt_start`.
        pub phys_start: U64,
        /// [`MapFlags`].
        pub flags: U32,
    }
}

wire! {
    /// UNMAP without tail (28 bytes).
    pub struct ReqUnmap: 28 {
        /// `type` = 4.
        pub head: ReqHead,
        /// Domain ID.
        pub domain: U32,
        /// First input address.
        pub virt_start: U64,
        /// Last input address, inclusive.
        pub virt_end: U64,
        /// Reserved: must be zero (this device rejects non-zero with S_INVAL).
        pub reserved: [u8; 4],
    }
}

wire! {
    /// PROBE, readable part (72 bytes); the writable part is `probe_size` bytes of properties
    /// followed by the tail.
    pub struct ReqProbe: 72 {
        /// `type` = 5.
        pub head: ReqHead,
        /// Endpoint ID.
        pub endpoint: U32,
        /// Reserved: ignored by the device.
        pub reserved: [u8; 64],
    }
}

bitflags! {
    /// ATTACH flags.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct AttachFlags: u32 {
        /// The domain is a bypass (identity) domain. Needs `Features::BYPASS_CONFIG`.
        const BYPASS = 1 << 0;
    }
}

bitflags! {
    /// MAP flags.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct MapFlags: u32 {
        /// Reads allowed.
        const READ = 1 << 0;
        /// Writes allowed.
        const WRITE = 1 << 1;
        /// Device memory (needs `Features::MMIO`).
        const MMIO = 1 << 2;
    }
}

/// Request types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RequestType {
    /// ATTACH.
    Attach = 1,
    /// DETACH.
    Detach = 2,
    /// MAP.
    Map = 3,
    /// UNMAP.
    Unmap = 4,
    /// PROBE.
    Probe = 5,
    /// ATTACH_TABLE (extension).
    AttachTable = ext::T_ATTACH_TABLE,
    /// INVALIDATE (extension).
    Invalidate = ext::T_INVALIDATE,
    /// PAGE_RESP (extension).
    PageResp = ext::T_PAGE_RESP,
}

impl RequestType {
    /// All request types, in numeric order.
    pub const ALL: [RequestType; 8] = [
        RequestType::Attach,
        RequestType::Detach,
        RequestType::Map,
        RequestType::Unmap,
        RequestType::Probe,
        RequestType::AttachTable,
        RequestType::Invalidate,
        RequestType::PageResp,
    ];

    /// Size of the device-readable part of this request type.
    #[must_use]
    pub const fn readable_len(self) -> usize {
        match self {
            RequestType::Attach | RequestType::Detach => 20,
            RequestType::Map => 36,
            RequestType::Unmap | RequestType::PageResp => 28,
            RequestType::Probe => 72,
            RequestType::AttachTable => 76,
            RequestType::Invalidate => 60,
        }
    }

    /// Upstream name without the `VIRTIO_IOMMU_T_` prefix.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            RequestType::Attach => "ATTACH",
            RequestType::Detach => "DETACH",
            RequestType::Map => "MAP",
            RequestType::Unmap => "UNMAP",
            RequestType::Probe => "PROBE",
            RequestType::AttachTable => "ATTACH_TABLE",
            RequestType::Invalidate => "INVALIDATE",
            RequestType::PageResp => "PAGE_RESP",
        }
    }
}

impl TryFrom<u8> for RequestType {
    type Error = DecodeError;

    fn try_from(v: u8) -> Result<Self, DecodeError> {
        RequestType::ALL
            .iter()
            .copied()
            .find(|t| *t as u8 == v)
            .ok_or(DecodeError::UnknownType(v))
    }
}

impl core::fmt::Display for RequestType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a request (or event, or property) could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the layout needs.
    TooShort {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        got: usize,
    },
    /// More bytes than the layout has.
    TooLong {
        /// Exact size of the layout.
        want: usize,
        /// Bytes given.
        got: usize,
    },
    /// Unknown request type.
    UnknownType(u8),
    /// A flags field has bits this protocol does not define.
    UnknownFlags,
    /// A reserved field that must be zero is not.
    ReservedNotZero,
    /// ATTACH_TABLE names a table format this protocol does not implement.
    UnknownFormat(u16),
    /// A field holds a value outside its defined set (e.g. a response code, a granularity).
    BadValue,
}

impl DecodeError {
    /// The status a device answers for this error, or `None` when the request must be returned
    /// without writing anything (used length 0): an unknown request type.
    #[must_use]
    pub const fn status(self) -> Option<Status> {
        match self {
            DecodeError::UnknownType(_) => None,
            DecodeError::UnknownFormat(_) => Some(Status::Unsupp),
            _ => Some(Status::Inval),
        }
    }
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::TooShort { need, got } => write!(f, "too short: {got} < {need} bytes"),
            DecodeError::TooLong { want, got } => write!(f, "too long: {got} > {want} bytes"),
            DecodeError::UnknownType(t) => write!(f, "unknown request type {t:#x}"),
            DecodeError::UnknownFlags => f.write_str("undefined flag bits set"),
            DecodeError::ReservedNotZero => f.write_str("reserved field not zero"),
            DecodeError::UnknownFormat(v) => write!(f, "unknown table format {v}"),
            DecodeError::BadValue => f.write_str("field value out of its defined set"),
        }
    }
}

/// ATTACH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attach {
    /// Domain ID.
    pub domain: u32,
    /// Endpoint ID.
    pub endpoint: u32,
    /// Flags.
    pub flags: AttachFlags,
}

/// DETACH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detach {
    /// Domain ID.
    pub domain: u32,
    /// Endpoint ID.
    pub endpoint: u32,
}

/// MAP: `[virt_start, virt_end]` → `[phys_start, phys_start + (virt_end - virt_start)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Map {
    /// Domain ID.
    pub domain: u32,
    /// First input address.
    pub virt_start: u64,
    /// Last input address, inclusive.
    pub virt_end: u64,
    /// Output address of `virt_start`.
    pub phys_start: u64,
    /// Flags.
    pub flags: MapFlags,
}

/// UNMAP of `[virt_start, virt_end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unmap {
    /// Domain ID.
    pub domain: u32,
    /// First input address.
    pub virt_start: u64,
    /// Last input address, inclusive.
    pub virt_end: u64,
}

/// PROBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Endpoint ID.
    pub endpoint: u32,
}

/// A guest table, as bound by ATTACH_TABLE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableDesc {
    /// An SMMUv3 context-descriptor table.
    ArmSmmuV3 {
        /// `S1FMT_*`.
        s1fmt: u8,
        /// `S1DSS_*`.
        s1dss: u8,
        /// Guest-physical address of the (L1) table.
        s1contextptr: u64,
        /// log2 of the number of context descriptors.
        s1cdmax: u32,
    },
    /// An x86-64 first-stage table for one PASID.
    Vtd {
        /// PASID.
        pasid: u32,
        /// 48 or 57.
        addr_width: u32,
        /// Guest-physical address of the top-level table.
        pgd: u64,
        /// Flags.
        flags: VtdFlags,
    },
}

impl TableDesc {
    /// The format of this table.
    #[must_use]
    pub const fn format(&self) -> TableFormat {
        match self {
            TableDesc::ArmSmmuV3 { .. } => TableFormat::ArmSmmuV3,
            TableDesc::Vtd { .. } => TableFormat::Vtd,
        }
    }
}

/// ATTACH_TABLE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachTable {
    /// Domain ID.
    pub domain: u32,
    /// Endpoint ID.
    pub endpoint: u32,
    /// The table.
    pub table: TableDesc,
}

/// INVALIDATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalidate {
    /// Domain ID.
    pub domain: u32,
    /// Which caches.
    pub caches: InvalCaches,
    /// What part of the domain.
    pub scope: InvalScope,
    /// Architecture ID (e.g. Arm ASID), if given.
    pub archid: Option<u64>,
    /// Only leaf entries changed.
    pub leaf: bool,
}

/// PAGE_RESP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageResp {
    /// Endpoint of the page request.
    pub endpoint: u32,
    /// PASID of the page request, if the response carries one.
    pub pasid: Option<u32>,
    /// Group ID of the page request.
    pub group_id: u16,
    /// Response code.
    pub code: PageRespCode,
}

/// A decoded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// ATTACH.
    Attach(Attach),
    /// DETACH.
    Detach(Detach),
    /// MAP.
    Map(Map),
    /// UNMAP.
    Unmap(Unmap),
    /// PROBE.
    Probe(Probe),
    /// ATTACH_TABLE.
    AttachTable(AttachTable),
    /// INVALIDATE.
    Invalidate(Invalidate),
    /// PAGE_RESP.
    PageResp(PageResp),
}

/// The largest device-readable part of any request (ATTACH_TABLE).
pub const MAX_READABLE_LEN: usize = 76;

/// An encoded device-readable part, without allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Encoded {
    buf: [u8; MAX_READABLE_LEN],
    len: usize,
}

impl Encoded {
    /// The encoded bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl core::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("Encoded").field(&self.as_bytes()).finish()
    }
}

/// Reads an exact-size layout from `bytes`.
fn exact<T: FromBytes + KnownLayout + Immutable>(bytes: &[u8]) -> Result<T, DecodeError> {
    let want = core::mem::size_of::<T>();
    if bytes.len() < want {
        return Err(DecodeError::TooShort {
            need: want,
            got: bytes.len(),
        });
    }
    if bytes.len() > want {
        return Err(DecodeError::TooLong {
            want,
            got: bytes.len(),
        });
    }
    T::read_from_bytes(bytes).map_err(|_| DecodeError::TooShort {
        need: want,
        got: bytes.len(),
    })
}

fn zero(bytes: &[u8]) -> Result<(), DecodeError> {
    if bytes.iter().all(|b| *b == 0) {
        Ok(())
    } else {
        Err(DecodeError::ReservedNotZero)
    }
}

fn head(t: RequestType) -> ReqHead {
    ReqHead {
        req_type: t as u8,
        reserved: [0; 3],
    }
}

impl Request {
    /// The request's type.
    #[must_use]
    pub const fn request_type(&self) -> RequestType {
        match self {
            Request::Attach(_) => RequestType::Attach,
            Request::Detach(_) => RequestType::Detach,
            Request::Map(_) => RequestType::Map,
            Request::Unmap(_) => RequestType::Unmap,
            Request::Probe(_) => RequestType::Probe,
            Request::AttachTable(_) => RequestType::AttachTable,
            Request::Invalidate(_) => RequestType::Invalidate,
            Request::PageResp(_) => RequestType::PageResp,
        }
    }

    /// Reads the request type from the first byte of a readable part.
    ///
    /// # Errors
    /// `TooShort` for an empty part, `UnknownType` for an undefined type.
    pub fn peek_type(readable: &[u8]) -> Result<RequestType, DecodeError> {
        let t = *readable
            .first()
            .ok_or(DecodeError::TooShort { need: 4, got: 0 })?;
        RequestType::try_from(t)
    }

    /// Decodes a device-readable part: exact length for its type, defined flags only, and the
    /// reserved fields the protocol requires to be zero (ATTACH, UNMAP and the extensions; the
    /// head's reserved bytes and DETACH/PROBE padding are ignored as the spec demands).
    ///
    /// # Errors
    /// A [`DecodeError`]; [`DecodeError::status`] gives the status to answer.
    pub fn parse(readable: &[u8]) -> Result<Request, DecodeError> {
        let ty = Self::peek_type(readable)?;
        Ok(match ty {
            RequestType::Attach => {
                let r: ReqAttach = exact(readable)?;
                zero(&r.reserved)?;
                let flags =
                    AttachFlags::from_bits(r.flags.get()).ok_or(DecodeError::UnknownFlags)?;
                Request::Attach(Attach {
                    domain: r.domain.get(),
                    endpoint: r.endpoint.get(),
                    flags,
                })
            }
            RequestType::Detach => {
                let r: ReqDetach = exact(readable)?;
                Request::Detach(Detach {
                    domain: r.domain.get(),
                    endpoint: r.endpoint.get(),
                })
            }
            RequestType::Map => {
                let r: ReqMap = exact(readable)?;
                let flags = MapFlags::from_bits(r.flags.get()).ok_or(DecodeError::UnknownFlags)?;
                Request::Map(Map {
                    domain: r.domain.get(),
                    virt_start: r.virt_start.get(),
                    virt_end: r.virt_end.get(),
                    phys_start: r.phys_start.get(),
                    flags,
                })
            }
            RequestType::Unmap => {
                let r: ReqUnmap = exact(readable)?;
                zero(&r.reserved)?;
                Request::Unmap(Unmap {
                    domain: r.domain.get(),
                    virt_start: r.virt_start.get(),
                    virt_end: r.virt_end.get(),
                })
            }
            RequestType::Probe => {
                let r: ReqProbe = exact(readable)?;
                Request::Probe(Probe {
                    endpoint: r.endpoint.get(),
                })
            }
            RequestType::AttachTable => Request::AttachTable(parse_attach_table(readable)?),
            RequestType::Invalidate => Request::Invalidate(parse_invalidate(readable)?),
            RequestType::PageResp => {
                let r: ReqPageResp = exact(readable)?;
                zero(&r.reserved)?;
                let flags =
                    PageRespFlags::from_bits(r.flags.get()).ok_or(DecodeError::UnknownFlags)?;
                let code =
                    PageRespCode::try_from(r.resp_code.get()).map_err(|_| DecodeError::BadValue)?;
                let pasid = flags
                    .contains(PageRespFlags::PASID_VALID)
                    .then(|| r.pasid.get());
                Request::PageResp(PageResp {
                    endpoint: r.endpoint.get(),
                    pasid,
                    group_id: r.group_id.get(),
                    code,
                })
            }
        })
    }

    /// Encodes the device-readable part (the driver appends a writable part of
    /// [`Request::writable_len`] bytes).
    #[must_use]
    pub fn encode(&self) -> Encoded {
        let mut out = Encoded {
            buf: [0; MAX_READABLE_LEN],
            len: 0,
        };
        match self {
            Request::Attach(a) => put(
                &mut out,
                &ReqAttach {
                    head: head(RequestType::Attach),
                    domain: a.domain.into(),
                    endpoint: a.endpoint.into(),
                    flags: a.flags.bits().into(),
                    reserved: [0; 4],
                },
            ),
            Request::Detach(d) => put(
                &mut out,
                &ReqDetach {
                    head: head(RequestType::Detach),
                    domain: d.domain.into(),
                    endpoint: d.endpoint.into(),
                    reserved: [0; 8],
                },
            ),
            Request::Map(m) => put(
                &mut out,
                &ReqMap {
                    head: head(RequestType::Map),
                    domain: m.domain.into(),
                    virt_start: m.virt_start.into(),
                    virt_end: m.virt_end.into(),
                    phys_start: m.phys_start.into(),
                    flags: m.flags.bits().into(),
                },
            ),
            Request::Unmap(u) => put(
                &mut out,
                &ReqUnmap {
                    head: head(RequestType::Unmap),
                    domain: u.domain.into(),
                    virt_start: u.virt_start.into(),
                    virt_end: u.virt_end.into(),
                    reserved: [0; 4],
                },
            ),
            Request::Probe(p) => put(
                &mut out,
                &ReqProbe {
                    head: head(RequestType::Probe),
                    endpoint: p.endpoint.into(),
                    reserved: [0; 64],
                },
            ),
            Request::AttachTable(a) => encode_attach_table(&mut out, a),
            Request::Invalidate(i) => encode_invalidate(&mut out, i),
            Request::PageResp(p) => put(
                &mut out,
                &ReqPageResp {
                    head: head(RequestType::PageResp),
                    endpoint: p.endpoint.into(),
                    flags: if p.pasid.is_some() {
                        PageRespFlags::PASID_VALID.bits()
                    } else {
                        0
                    }
                    .into(),
                    pasid: p.pasid.unwrap_or(0).into(),
                    group_id: p.group_id.into(),
                    resp_code: (p.code as u16).into(),
                    reserved: [0; 8],
                },
            ),
        }
        out
    }

    /// Size of the device-writable part the driver supplies: the tail, plus the properties
    /// area for PROBE. Saturates at `usize::MAX` where the area does not fit (a `probe_size`
    /// near 4 GiB on a 32-bit target).
    #[must_use]
    pub fn writable_len(&self, probe_size: u32) -> usize {
        match self {
            Request::Probe(_) => usize::try_from(probe_size)
                .ok()
                .and_then(|n| n.checked_add(TAIL_SIZE))
                .unwrap_or(usize::MAX),
            _ => TAIL_SIZE,
        }
    }
}

fn put<T: IntoBytes + Immutable>(out: &mut Encoded, v: &T) {
    let b = v.as_bytes();
    out.buf[..b.len()].copy_from_slice(b);
    out.len = b.len();
}

fn parse_attach_table(readable: &[u8]) -> Result<AttachTable, DecodeError> {
    let frame: ReqAttachTable = exact(readable)?;
    let format =
        TableFormat::try_from(frame.format.get()).map_err(|e| DecodeError::UnknownFormat(e.0))?;
    let table = match format {
        TableFormat::ArmSmmuV3 => {
            let r: ReqAttachPstArm = exact(readable)?;
            zero(&r.reserved)?;
            if r.s1fmt > ext::S1FMT_64KL2 || r.s1dss > ext::S1DSS_SSID0 {
                return Err(DecodeError::BadValue);
            }
            TableDesc::ArmSmmuV3 {
                s1fmt: r.s1fmt,
                s1dss: r.s1dss,
                s1contextptr: r.s1contextptr.get(),
                s1cdmax: r.s1cdmax.get(),
            }
        }
        TableFormat::Vtd => {
            let r: ReqAttachPgtVtd = exact(readable)?;
            zero(r.reserved0.as_bytes())?;
            zero(&r.reserved1)?;
            let flags = VtdFlags::from_bits(r.flags.get()).ok_or(DecodeError::UnknownFlags)?;
            TableDesc::Vtd {
                pasid: r.pasid.get(),
                addr_width: r.addr_width.get(),
                pgd: r.pgd.get(),
                flags,
            }
        }
    };
    Ok(AttachTable {
        domain: frame.domain.get(),
        endpoint: frame.endpoint.get(),
        table,
    })
}

fn encode_attach_table(out: &mut Encoded, a: &AttachTable) {
    let h = head(RequestType::AttachTable);
    match a.table {
        TableDesc::ArmSmmuV3 {
            s1fmt,
            s1dss,
            s1contextptr,
            s1cdmax,
        } => put(
            out,
            &ReqAttachPstArm {
                head: h,
                domain: a.domain.into(),
                endpoint: a.endpoint.into(),
                format: ext::FORMAT_PSTF_ARM_SMMU_V3.into(),
                s1fmt,
                s1dss,
                s1contextptr: s1contextptr.into(),
                s1cdmax: s1cdmax.into(),
                reserved: [0; 48],
            },
        ),
        TableDesc::Vtd {
            pasid,
            addr_width,
            pgd,
            flags,
        } => put(
            out,
            &ReqAttachPgtVtd {
                head: h,
                domain: a.domain.into(),
                endpoint: a.endpoint.into(),
                format: ext::FORMAT_PGTF_VTD.into(),
                reserved0: 0.into(),
                pasid: pasid.into(),
                addr_width: addr_width.into(),
                pgd: pgd.into(),
                flags: flags.bits().into(),
                reserved1: [0; 36],
            },
        ),
    }
}

fn parse_invalidate(readable: &[u8]) -> Result<Invalidate, DecodeError> {
    let r: ReqInvalidate = exact(readable)?;
    zero(r.reserved1.as_bytes())?;
    zero(r.reserved2.as_bytes())?;
    zero(&r.reserved3)?;
    let caches = InvalCaches::from_bits(r.inv_type.get()).ok_or(DecodeError::UnknownFlags)?;
    let flags = InvalFlags::from_bits(r.flags.get()).ok_or(DecodeError::UnknownFlags)?;
    let pasid = flags.contains(InvalFlags::PASID).then(|| r.pasid.get());
    let scope = match r.inv_gran.get() {
        ext::INVAL_G_DOMAIN => InvalScope::Domain,
        ext::INVAL_G_PASID => InvalScope::Pasid(pasid.ok_or(DecodeError::BadValue)?),
        ext::INVAL_G_VA => {
            if r.granule < 12 || r.granule > 63 {
                return Err(DecodeError::BadValue);
            }
            InvalScope::Range {
                pasid,
                start: r.virt_start.get(),
                nr_pages: r.nr_pages.get(),
                granule: r.granule,
            }
        }
        _ => return Err(DecodeError::BadValue),
    };
    let archid = flags.contains(InvalFlags::ARCHID).then(|| r.archid.get());
    Ok(Invalidate {
        domain: r.domain.get(),
        caches,
        scope,
        archid,
        leaf: flags.contains(InvalFlags::LEAF),
    })
}

fn encode_invalidate(out: &mut Encoded, i: &Invalidate) {
    let mut flags = InvalFlags::empty();
    flags.set(InvalFlags::LEAF, i.leaf);
    flags.set(InvalFlags::ARCHID, i.archid.is_some());
    let (gran, pasid, start, nr_pages, granule) = match i.scope {
        InvalScope::Domain => (ext::INVAL_G_DOMAIN, None, 0, 0, 0),
        InvalScope::Pasid(p) => (ext::INVAL_G_PASID, Some(p), 0, 0, 0),
        InvalScope::Range {
            pasid,
            start,
            nr_pages,
            granule,
        } => (ext::INVAL_G_VA, pasid, start, nr_pages, granule),
    };
    flags.set(InvalFlags::PASID, pasid.is_some());
    put(
        out,
        &ReqInvalidate {
            head: head(RequestType::Invalidate),
            inv_gran: gran.into(),
            inv_type: i.caches.bits().into(),
            flags: flags.bits().into(),
            reserved1: 0.into(),
            domain: i.domain.into(),
            pasid: pasid.unwrap_or(0).into(),
            reserved2: 0.into(),
            archid: i.archid.unwrap_or(0).into(),
            virt_start: start.into(),
            nr_pages: nr_pages.into(),
            granule,
            reserved3: [0; 11],
        },
    );
}
