//! Builders for every request the tests send, as typed [`Request`]s (encode them with
//! [`Request::encode`], or take their bytes with [`bytes`]).

use virtio_iommu_spec::ext::{InvalCaches, InvalScope, PageRespCode, VtdFlags};
use virtio_iommu_spec::request::{
    Attach, AttachFlags, AttachTable, Detach, Invalidate, Map, MapFlags, PageResp, Probe,
    TableDesc, Unmap,
};
use virtio_iommu_spec::Request;

/// READ | WRITE.
pub const RW: MapFlags = MapFlags::READ.union(MapFlags::WRITE);

/// ATTACH `endpoint` to `domain`.
#[must_use]
pub fn attach(domain: u32, endpoint: u32) -> Request {
    Request::Attach(Attach {
        domain,
        endpoint,
        flags: AttachFlags::empty(),
    })
}

/// ATTACH `endpoint` to the bypass domain `domain`.
#[must_use]
pub fn attach_bypass(domain: u32, endpoint: u32) -> Request {
    Request::Attach(Attach {
        domain,
        endpoint,
        flags: AttachFlags::BYPASS,
    })
}

/// DETACH `endpoint` from `domain`.
#[must_use]
pub fn detach(domain: u32, endpoint: u32) -> Request {
    Request::Detach(Detach { domain, endpoint })
}

/// MAP `[virt_start, virt_end]` → `phys_start`, READ | WRITE.
#[must_use]
pub fn map(domain: u32, virt_start: u64, virt_end: u64, phys_start: u64) -> Request {
    map_flags(domain, virt_start, virt_end, phys_start, RW)
}

/// MAP `[virt_start, virt_end]` → `phys_start` with `flags`.
#[must_use]
pub fn map_flags(
    domain: u32,
    virt_start: u64,
    virt_end: u64,
    phys_start: u64,
    flags: MapFlags,
) -> Request {
    Request::Map(Map {
        domain,
        virt_start,
        virt_end,
        phys_start,
        flags,
    })
}

/// UNMAP `[virt_start, virt_end]`.
#[must_use]
pub fn unmap(domain: u32, virt_start: u64, virt_end: u64) -> Request {
    Request::Unmap(Unmap {
        domain,
        virt_start,
        virt_end,
    })
}

/// PROBE `endpoint`.
#[must_use]
pub fn probe(endpoint: u32) -> Request {
    Request::Probe(Probe { endpoint })
}

/// ATTACH_TABLE of `table` for `endpoint` in `domain`.
#[must_use]
pub fn attach_table(domain: u32, endpoint: u32, table: TableDesc) -> Request {
    Request::AttachTable(AttachTable {
        domain,
        endpoint,
        table,
    })
}

/// An SMMUv3 CD table (`FORMAT_PSTF_ARM_SMMU_V3`).
#[must_use]
pub fn arm_table(s1fmt: u8, s1dss: u8, s1contextptr: u64, s1cdmax: u32) -> TableDesc {
    TableDesc::ArmSmmuV3 {
        s1fmt,
        s1dss,
        s1contextptr,
        s1cdmax,
    }
}

/// An x86-64 first-stage table for `pasid` (`FORMAT_PGTF_VTD`).
#[must_use]
pub fn vtd_table(pasid: u32, addr_width: u32, pgd: u64, flags: VtdFlags) -> TableDesc {
    TableDesc::Vtd {
        pasid,
        addr_width,
        pgd,
        flags,
    }
}

/// INVALIDATE of `caches` in `scope` of `domain` (no ARCHID, not leaf-only).
#[must_use]
pub fn invalidate(domain: u32, caches: InvalCaches, scope: InvalScope) -> Request {
    Request::Invalidate(Invalidate {
        domain,
        caches,
        scope,
        archid: None,
        leaf: false,
    })
}

/// PAGE_RESP of page-request group `group_id` of `endpoint`.
#[must_use]
pub fn page_resp(endpoint: u32, pasid: Option<u32>, group_id: u16, code: PageRespCode) -> Request {
    Request::PageResp(PageResp {
        endpoint,
        pasid,
        group_id,
        code,
    })
}

/// The readable bytes of a request.
#[must_use]
pub fn bytes(req: &Request) -> Vec<u8> {
    req.encode().as_bytes().to_vec()
}
