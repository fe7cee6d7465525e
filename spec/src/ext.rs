//! The PASID / nested-translation (vSVA) extensions: every number and layout in one place.
//!
//! None of this is in a released virtio specification. The numbering follows the newest public
//! drafts that stay compatible with upstream bits 0–6 (see `PROTOCOL.md`, "Extensions"). If an
//! upstream allocation appears, renumber here; nothing else in the workspace spells a value.

use bitflags::bitflags;
use zerocopy::little_endian::{U16, U32, U64};

use crate::frame::ReqHead;
use crate::wire::wire;

// ---- Numbers ------------------------------------------------------------------------------

/// Feature bit: ATTACH_TABLE + INVALIDATE.
pub const F_ATTACH_TABLE: u32 = 8;
/// Feature bit: page requests, extended events, PAGE_RESP.
pub const F_PAGE_REQUEST: u32 = 10;

/// Request type: bind a guest table to an endpoint.
pub const T_ATTACH_TABLE: u8 = 0x06;
/// Request type: invalidate cached translations or table entries.
pub const T_INVALIDATE: u8 = 0x07;
/// Request type: answer a page request.
pub const T_PAGE_RESP: u8 = 0x08;

/// Probe property: per-endpoint page-size mask.
pub const PROBE_T_PAGE_SIZE_MASK: u16 = 2;
/// Probe property: per-endpoint input range.
pub const PROBE_T_INPUT_RANGE: u16 = 3;
/// Probe property: output address size in bits.
pub const PROBE_T_OUTPUT_SIZE: u16 = 4;
/// Probe property: number of PASID bits the endpoint supports.
pub const PROBE_T_PASID_SIZE: u16 = 5;
/// Probe property: a supported page-table format (one property per format).
pub const PROBE_T_PAGE_TABLE_FMT: u16 = 6;
/// Probe property: a supported PASID-table format (one property per format).
pub const PROBE_T_PASID_TABLE_FMT: u16 = 7;
/// Probe property (this project): the endpoint can issue page requests.
pub const PROBE_T_PAGE_REQUEST: u16 = 8;

/// Table format: Arm LPAE page table (defined by the drafts; not implemented here).
pub const FORMAT_PGTF_ARM_LPAE: u16 = 1;
/// Table format: Arm SMMUv3 context-descriptor (PASID) table with AArch64 stage-1 tables.
pub const FORMAT_PSTF_ARM_SMMU_V3: u16 = 2;
/// Table format: experimental "virt" page table (defined by a draft; not implemented here).
pub const FORMAT_PGTF_VIRT: u16 = 3;
/// Table format: one x86-64 (VT-d first-stage) 4- or 5-level page table per PASID.
pub const FORMAT_PGTF_VTD: u16 = 4;

// ---- Table formats ------------------------------------------------------------------------

/// The table formats this protocol crate can encode and decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableFormat {
    /// `FORMAT_PSTF_ARM_SMMU_V3`: a PASID table (advertised with `PROBE_T_PASID_TABLE_FMT`).
    ArmSmmuV3,
    /// `FORMAT_PGTF_VTD`: a page table per PASID (advertised with `PROBE_T_PAGE_TABLE_FMT`).
    Vtd,
}

impl TableFormat {
    /// The `format` code on the wire.
    #[must_use]
    pub const fn code(self) -> u16 {
        match self {
            TableFormat::ArmSmmuV3 => FORMAT_PSTF_ARM_SMMU_V3,
            TableFormat::Vtd => FORMAT_PGTF_VTD,
        }
    }

    /// The probe property type that advertises this format.
    #[must_use]
    pub const fn probe_type(self) -> u16 {
        match self {
            TableFormat::ArmSmmuV3 => PROBE_T_PASID_TABLE_FMT,
            TableFormat::Vtd => PROBE_T_PAGE_TABLE_FMT,
        }
    }
}

/// A format code this crate does not implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownFormat(pub u16);

impl TryFrom<u16> for TableFormat {
    type Error = UnknownFormat;

    fn try_from(v: u16) -> Result<Self, UnknownFormat> {
        match v {
            FORMAT_PSTF_ARM_SMMU_V3 => Ok(TableFormat::ArmSmmuV3),
            FORMAT_PGTF_VTD => Ok(TableFormat::Vtd),
            other => Err(UnknownFormat(other)),
        }
    }
}

// ---- ATTACH_TABLE (80 bytes, RO 76) ---------------------------------------------------------

wire! {
    /// The generic ATTACH_TABLE frame: every format shares head, domain, endpoint and `format`.
    pub struct ReqAttachTable: 76 {
        /// `type` = `T_ATTACH_TABLE`.
        pub head: ReqHead,
        /// The domain whose stage-2 translation backs the table's output addresses.
        pub domain: U32,
        /// The endpoint the table is bound to.
        pub endpoint: U32,
        /// Table format code.
        pub format: U16,
        /// Format-specific body.
        pub body: [u8; 62],
    }
}

wire! {
    /// `FORMAT_PSTF_ARM_SMMU_V3` body of ATTACH_TABLE.
    pub struct ReqAttachPstArm: 76 {
        /// `type` = `T_ATTACH_TABLE`.
        pub head: ReqHead,
        /// Domain.
        pub domain: U32,
        /// Endpoint.
        pub endpoint: U32,
        /// `FORMAT_PSTF_ARM_SMMU_V3`.
        pub format: U16,
        /// `S1FMT_*`: linear or 2-level table.
        pub s1fmt: u8,
        /// `S1DSS_*`: what DMA without a PASID does.
        pub s1dss: u8,
        /// Guest-physical address of the CD table (linear) or of the L1 descriptor table.
        pub s1contextptr: U64,
        /// log2 of the number of context descriptors (STE.S1CDMax semantics).
        pub s1cdmax: U32,
        /// Reserved, zero.
        pub reserved: [u8; 48],
    }
}

wire! {
    /// `FORMAT_PGTF_VTD` body of ATTACH_TABLE (this project's layout, inside the 80-byte frame).
    pub struct ReqAttachPgtVtd: 76 {
        /// `type` = `T_ATTACH_TABLE`.
        pub head: ReqHead,
        /// Domain.
        pub domain: U32,
        /// Endpoint.
        pub endpoint: U32,
        /// `FORMAT_PGTF_VTD`.
        pub format: U16,
        /// Reserved, zero.
        pub reserved0: U16,
        /// The PASID this table translates.
        pub pasid: U32,
        /// Input address width: 48 (4-level) or 57 (5-level).
        pub addr_width: U32,
        /// Guest-physical address of the top-level table (4 KiB aligned).
        pub pgd: U64,
        /// `VtdFlags`.
        pub flags: U64,
        /// Reserved, zero.
        pub reserved1: [u8; 36],
    }
}

/// SMMUv3 `s1fmt`: one linear array of context descriptors.
pub const S1FMT_LINEAR: u8 = 0;
/// SMMUv3 `s1fmt`: two levels, 4 KiB leaf tables (L1 index = PASID >> 6).
pub const S1FMT_4KL2: u8 = 1;
/// SMMUv3 `s1fmt`: two levels, 64 KiB leaf tables (not implemented here).
pub const S1FMT_64KL2: u8 = 2;
/// SMMUv3 `s1dss`: DMA without a PASID is aborted.
pub const S1DSS_TERM: u8 = 0;
/// SMMUv3 `s1dss`: DMA without a PASID bypasses stage 1.
pub const S1DSS_BYPASS: u8 = 1;
/// SMMUv3 `s1dss`: DMA without a PASID uses PASID 0's context descriptor.
pub const S1DSS_SSID0: u8 = 2;

bitflags! {
    /// Flags of the `FORMAT_PGTF_VTD` ATTACH_TABLE body.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct VtdFlags: u64 {
        /// Supervisor (privileged) requests are allowed (VT-d SRE).
        const SRE = 1 << 0;
        /// Write protect: privileged writes honour the R/W bit (VT-d WPE / CR0.WP).
        const WPE = 1 << 1;
    }
}

// ---- INVALIDATE (64 bytes, RO 60) ---------------------------------------------------------

wire! {
    /// `struct virtio_iommu_req_invalidate` (V21A/TZ layout).
    pub struct ReqInvalidate: 60 {
        /// `type` = `T_INVALIDATE`.
        pub head: ReqHead,
        /// `INVAL_G_*`: exactly one granularity bit.
        pub inv_gran: U16,
        /// `InvalCaches`: which caches.
        pub inv_type: U16,
        /// `InvalFlags`.
        pub flags: U16,
        /// Reserved, zero.
        pub reserved1: U16,
        /// Domain.
        pub domain: U32,
        /// PASID (valid with `InvalFlags::PASID`).
        pub pasid: U32,
        /// Reserved, zero.
        pub reserved2: U32,
        /// Architecture ID, e.g. an Arm ASID (valid with `InvalFlags::ARCHID`).
        pub archid: U64,
        /// First address (with `INVAL_G_VA`).
        pub virt_start: U64,
        /// Number of pages of size 2^granule (with `INVAL_G_VA`).
        pub nr_pages: U64,
        /// log2 of the page size (12 = 4 KiB, 21 = 2 MiB, 30 = 1 GiB).
        pub granule: u8,
        /// Reserved, zero.
        pub reserved3: [u8; 11],
    }
}

/// Granularity: everything in the domain.
pub const INVAL_G_DOMAIN: u16 = 1 << 0;
/// Granularity: everything of one PASID.
pub const INVAL_G_PASID: u16 = 1 << 1;
/// Granularity: an address range (of one PASID if `InvalFlags::PASID`).
pub const INVAL_G_VA: u16 = 1 << 2;

bitflags! {
    /// Which caches INVALIDATE targets (`inv_type`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct InvalCaches: u16 {
        /// The IOTLB (cached walks).
        const IOTLB = 1 << 0;
        /// Device IOTLBs (ATS).
        const DEV_IOTLB = 1 << 1;
        /// PASID-table / context-descriptor caches.
        const PASID = 1 << 2;
    }
}

bitflags! {
    /// INVALIDATE flags.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct InvalFlags: u16 {
        /// `pasid` is valid.
        const PASID = 1 << 0;
        /// `archid` is valid.
        const ARCHID = 1 << 1;
        /// Only leaf entries changed.
        const LEAF = 1 << 2;
    }
}

/// Decoded INVALIDATE granularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalScope {
    /// The whole domain.
    Domain,
    /// One PASID.
    Pasid(u32),
    /// An address range: `[start, start + nr_pages << granule)`, optionally of one PASID.
    Range {
        /// PASID, if given.
        pasid: Option<u32>,
        /// First address.
        start: u64,
        /// Number of pages.
        nr_pages: u64,
        /// log2 page size.
        granule: u8,
    },
}

/// The last address of an INVALIDATE range of `nr_pages` pages of `2^granule` bytes from
/// `start`; `None` for no pages, a granule of 64 or more, or a range past 2^64 − 1 (a range
/// ending exactly at 2^64 − 1 is fine).
#[must_use]
pub const fn range_last(start: u64, nr_pages: u64, granule: u8) -> Option<u64> {
    // (nr_pages − 1) · size + (size − 1), each step checked.
    let Some(size) = 1u64.checked_shl(granule as u32) else {
        return None;
    };
    let Some(pages_before) = nr_pages.checked_sub(1) else {
        return None;
    };
    let Some(offset) = pages_before.checked_mul(size) else {
        return None;
    };
    let Some(offset) = offset.checked_add(size - 1) else {
        return None;
    };
    start.checked_add(offset)
}

// ---- PAGE_RESP (32 bytes, RO 28) ----------------------------------------------------------

wire! {
    /// `struct virtio_iommu_req_page_resp` (this project's layout, see `PROTOCOL.md`).
    pub struct ReqPageResp: 28 {
        /// `type` = `T_PAGE_RESP`.
        pub head: ReqHead,
        /// The endpoint that issued the page request.
        pub endpoint: U32,
        /// `PageRespFlags`.
        pub flags: U32,
        /// PASID (valid with `PageRespFlags::PASID_VALID`).
        pub pasid: U32,
        /// Page request group ID.
        pub group_id: U16,
        /// `PageRespCode`.
        pub resp_code: U16,
        /// Reserved, zero.
        pub reserved: [u8; 8],
    }
}

bitflags! {
    /// PAGE_RESP flags.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct PageRespFlags: u32 {
        /// `pasid` is valid.
        const PASID_VALID = 1 << 0;
    }
}

/// PAGE_RESP response codes (Linux `enum iommu_page_response_code`, not PCIe PRG codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum PageRespCode {
    /// The fault was resolved; retry the access.
    Success = 0,
    /// This request is invalid; the device fails it and may issue others of the group.
    Invalid = 1,
    /// Failure: the device must stop issuing page requests.
    Failure = 2,
}

/// A response code that names no known code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownRespCode(pub u16);

impl TryFrom<u16> for PageRespCode {
    type Error = UnknownRespCode;

    fn try_from(v: u16) -> Result<Self, UnknownRespCode> {
        match v {
            0 => Ok(PageRespCode::Success),
            1 => Ok(PageRespCode::Invalid),
            2 => Ok(PageRespCode::Failure),
            other => Err(UnknownRespCode(other)),
        }
    }
}

// ---- PAGE_REQUEST probe property (this project) -------------------------------------------

bitflags! {
    /// Flags of the `PROBE_T_PAGE_REQUEST` property.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct PageRequestCaps: u32 {
        /// Responses must carry the PASID of the request (PCIe "PRG Response PASID Required").
        const RESP_PASID_REQUIRED = 1 << 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_ends() {
        assert_eq!(range_last(0x1000, 1, 12), Some(0x1fff));
        assert_eq!(range_last(0x1000, 2, 12), Some(0x2fff));
        assert_eq!(range_last(0, 1 << 52, 12), Some(u64::MAX));
        assert_eq!(range_last(1, 1 << 52, 12), None);
        assert_eq!(range_last(0, 1, 63), Some((1 << 63) - 1));
        assert_eq!(range_last(0, 2, 63), Some(u64::MAX));
        assert_eq!(range_last(1, 2, 63), None);
        assert_eq!(range_last(1 << 63, 1, 63), Some(u64::MAX));
        assert_eq!(range_last(1, 1, 63), Some(1 << 63));
        assert_eq!(range_last(0x1000, 0, 12), None);
        assert_eq!(range_last(u64::MAX, 1, 12), None);
        assert_eq!(range_last(0, 1, 64), None);
        assert_eq!(range_last(0, 1, 255), None);
    }
}
