//! The translation path: an endpoint's attachment, then its reserved regions and the IOTLB
//! over an address space, or a software walk of a guest table.

use log::warn;
use virtio_iommu_spec::event::FaultReason;
use virtio_iommu_spec::probe::ResvMemSubtype;
use virtio_iommu_spec::request::TableDesc;
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryBackend, GuestMemoryRegion};

use super::nested::Route;
use super::s1tlb::Tag;
use super::walk::{AccessReq, WalkError};
use super::EmulatedHost;
use crate::host::{
    Access, AttachTarget, DmaAttrs, Fault, GuestRange, ReservedRegion, SpaceId, TableId,
    TranslateFault,
};

impl EmulatedHost {
    /// The reserved regions of `endpoint` (the ranges are sorted and disjoint).
    fn regions_of(&self, endpoint: u32) -> &[ReservedRegion] {
        let i = self.reserved.partition_point(|(r, _)| *r.end() < endpoint);
        match self.reserved.get(i) {
            Some((r, regions)) if r.contains(&endpoint) => regions,
            _ => &[],
        }
    }

    /// Where DMA of `(endpoint, pasid)` goes, with the defaults for no explicit attachment.
    pub(super) fn target_of(&self, endpoint: u32, pasid: Option<u32>) -> AttachTarget {
        match self.attachments.get(&(endpoint, pasid)) {
            Some(t) => *t,
            // An SMMUv3 CD table bound to the endpoint's requests without PASID translates
            // every PASID, as an STE does.
            None if pasid.is_some() => match self.attachments.get(&(endpoint, None)) {
                Some(AttachTarget::Table(id))
                    if self
                        .nested
                        .get(*id)
                        .is_some_and(|t| matches!(t.desc, TableDesc::ArmSmmuV3 { .. })) =>
                {
                    AttachTarget::Table(*id)
                }
                _ => AttachTarget::Blocked,
            },
            // PASID-tagged DMA needs an explicit PASID attachment: bypass is for RID traffic.
            None if pasid.is_some() => AttachTarget::Blocked,
            None if self.unattached_bypass => AttachTarget::Bypass,
            None => AttachTarget::Blocked,
        }
    }

    /// Translation through an address space: reserved regions, then the IOTLB and the space.
    pub(super) fn translate_space(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        space: SpaceId,
        iova: u64,
        len: u64,
        access: Access,
    ) -> Result<GuestRange, Fault> {
        let fault = |reason| Fault {
            reason,
            address: iova,
        };
        if let Some(r) = self
            .regions_of(endpoint)
            .iter()
            .find(|r| r.start <= iova && iova <= r.end)
        {
            return match r.kind {
                ResvMemSubtype::Msi => Ok(GuestRange {
                    gpa: iova,
                    len: cut(iova, r.end, len),
                }),
                ResvMemSubtype::Reserved => Err(fault(FaultReason::Mapping)),
            };
        }
        let m = match self.iotlb.lookup(endpoint, pasid, space, iova) {
            Some(m) => m,
            None => {
                let Some(s) = self.spaces.get(&space) else {
                    warn!("endpoint {endpoint} attached to missing space {space:?}");
                    return Err(fault(FaultReason::Unknown));
                };
                let m = s.lookup(iova).ok_or(fault(FaultReason::Mapping))?;
                self.iotlb.insert(endpoint, pasid, space, iova, m);
                m
            }
        };
        if !m.perm.contains(access.perm()) {
            return Err(fault(FaultReason::Mapping));
        }
        Ok(GuestRange {
            // Cannot overflow: `map` refused mappings whose output end passes 2^64.
            gpa: m.phys + (iova - m.iova),
            len: cut(iova, m.last, len),
        })
    }

    /// Nested translation through a guest table: stage 1 by walking it, stage 2 the identity
    /// over guest RAM (the range is cut at the end of the leaf page and of the RAM region).
    #[allow(clippy::too_many_arguments)] // the DMA's full description
    pub(super) fn translate_table(
        &mut self,
        id: TableId,
        endpoint: u32,
        pasid: Option<u32>,
        iova: u64,
        len: u64,
        access: Access,
        attrs: DmaAttrs,
    ) -> Result<GuestRange, TranslateFault> {
        let walk_fault = |e: WalkError| TranslateFault {
            fault: Fault {
                reason: e.reason(),
                address: iova,
            },
            recoverable: e.recoverable(),
        };
        let ssid = match self.nested.route(id, pasid).map_err(walk_fault)? {
            Route::Stage1(ssid) => ssid,
            Route::Parent(Some(space)) => {
                return self
                    .translate_space(endpoint, pasid, space, iova, len, access)
                    .map_err(|fault| TranslateFault {
                        fault,
                        recoverable: false,
                    })
            }
            Route::Parent(None) => return Err(walk_fault(WalkError::NoContext)),
        };
        let Some(mem) = self.mem.clone() else {
            return Err(walk_fault(WalkError::Malformed));
        };
        let guard = mem.memory();
        let req = AccessReq::new(access, attrs);
        let tag = Tag {
            table: id,
            endpoint,
            pasid,
            ssid,
            asid: None,
        };
        let leaf = self
            .nested
            .translate(&guard, tag, iova, req)
            .map_err(walk_fault)?;
        let gpa = leaf.gpa | (iova - leaf.va);
        let outside = TranslateFault {
            fault: Fault {
                reason: FaultReason::Unknown,
                address: iova,
            },
            recoverable: false,
        };
        let region = guard.find_region(GuestAddress(gpa)).ok_or(outside)?;
        let region_last = region
            .start_addr()
            .0
            .saturating_add(region.len().saturating_sub(1));
        Ok(GuestRange {
            gpa,
            len: cut(iova, leaf.last(), len).min(cut(gpa, region_last, len)),
        })
    }
}

/// Bytes from `iova` to the end of `[.., last]`, capped at `len`.
pub(super) fn cut(iova: u64, last: u64, len: u64) -> u64 {
    len.min((last - iova).saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::emulated::test_support::{host, RW};
    use crate::host::{HostIommu, Perm};

    #[test]
    fn translate_rules() {
        let (mut h, s) = host();
        h.map(s, 0x1000, 0x2fff, 0x1_0000, RW).unwrap();
        h.map(s, 0x3000, 0x3fff, 0x3_0000, Perm::READ).unwrap();
        assert_eq!(
            h.translate(7, None, 0x1800, 0x10_0000, Access::Write),
            Ok(GuestRange {
                gpa: 0x1_0800,
                len: 0x1800
            })
        );
        assert_eq!(
            h.translate(7, None, 0x3000, 4, Access::Write),
            Err(Fault {
                reason: FaultReason::Mapping,
                address: 0x3000
            })
        );
        assert_eq!(
            h.translate(7, None, 0x4000, 4, Access::Read)
                .unwrap_err()
                .reason,
            FaultReason::Mapping
        );
        // Unattached endpoint: DOMAIN unless unattached bypass is on.
        assert_eq!(
            h.translate(8, None, 0x1000, 4, Access::Read)
                .unwrap_err()
                .reason,
            FaultReason::Domain
        );
        h.set_unattached_bypass(true);
        assert_eq!(
            h.translate(8, None, u64::MAX, 4, Access::Read),
            Ok(GuestRange {
                gpa: u64::MAX,
                len: 1
            })
        );
        // PASID traffic without a PASID attachment faults even in bypass.
        assert_eq!(
            h.translate(8, Some(1), 0, 4, Access::Read)
                .unwrap_err()
                .reason,
            FaultReason::Domain
        );
        h.attach(8, None, AttachTarget::Blocked).unwrap();
        assert_eq!(
            h.translate(8, None, 0, 4, Access::Read).unwrap_err().reason,
            FaultReason::Domain
        );
    }

    #[test]
    fn reserved_regions_on_translated_endpoints() {
        let (mut h, _) = host();
        let resv = ReservedRegion {
            start: 0x8000,
            end: 0x8fff,
            kind: ResvMemSubtype::Reserved,
        };
        h.set_reserved_regions(0..=10, &[resv, ReservedRegion::x86_msi()]);
        assert_eq!(
            h.translate(7, None, 0xfee0_0ff0, 0x100_0000, Access::Write),
            Ok(GuestRange {
                gpa: 0xfee0_0ff0,
                len: 0xf_f010
            })
        );
        assert_eq!(
            h.translate(7, None, 0x8000, 4, Access::Read)
                .unwrap_err()
                .reason,
            FaultReason::Mapping
        );
        // Endpoints outside the range have no regions.
        let s2 = h.alloc_space().unwrap();
        h.attach(11, None, AttachTarget::Space(s2)).unwrap();
        assert_eq!(
            h.translate(11, None, 0xfee0_0000, 4, Access::Write)
                .unwrap_err()
                .reason,
            FaultReason::Mapping
        );
    }

    #[test]
    fn iotlb_is_used_and_invalidated() {
        let (mut h, s) = host();
        h.map(s, 0x1000, 0x1fff, 0x1_0000, RW).unwrap();
        h.translate(7, None, 0x1000, 1, Access::Read).unwrap();
        h.translate(7, None, 0x1008, 1, Access::Read).unwrap();
        assert_eq!(h.iotlb_stats().hits, 1);
        assert_eq!(h.iotlb_stats().misses, 1);
        assert_eq!(h.unmap(s, 0x1000, 0x1fff), Ok(0x1000));
        assert_eq!(
            h.translate(7, None, 0x1008, 1, Access::Read)
                .unwrap_err()
                .reason,
            FaultReason::Mapping
        );
        // Remapping the same IOVA elsewhere must not hit a stale entry.
        h.map(s, 0x1000, 0x1fff, 0x3_0000, RW).unwrap();
        assert_eq!(
            h.translate(7, None, 0x1008, 1, Access::Read).unwrap().gpa,
            0x3_0008
        );
        // Detach: back to the (blocked) default, no stale translation.
        h.detach(7, None).unwrap();
        assert_eq!(
            h.translate(7, None, 0x1008, 1, Access::Read)
                .unwrap_err()
                .reason,
            FaultReason::Domain
        );
    }
}
