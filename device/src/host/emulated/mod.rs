//! `EmulatedHost`, the default backend: the IOMMU is emulated in software, so a simulated
//! device can do real DMA into guest memory through the guest's mappings.
//!
//! Translation order follows QEMU's `virtio_iommu_translate`: identity for bypass, then the
//! endpoint's reserved regions (MSI window: 1:1; RESERVED: MAPPING fault), then the IOTLB and
//! the address space. A translated address outside guest RAM faults with reason UNKNOWN: the
//! IOMMU translated it fine, there is just nothing behind it (a bus error, not an IOMMU fault).
//!
//! Guest tables bound with ATTACH_TABLE (vSVA) are walked in software ([`nested`]): stage 1
//! from the guest's SMMUv3 CD table + AArch64 tables ([`smmuv3_cd`], [`aarch64`]) or x86-64
//! first-stage table ([`x86`]), stage 2 the identity over guest RAM.

pub mod aarch64;
mod attachments;
mod iotlb;
pub mod nested;
pub mod s1tlb;
pub mod smmuv3_cd;
mod space;
#[cfg(test)]
mod tests;
pub mod walk;
pub mod x86;

use std::ops::RangeInclusive;

use log::{debug, warn};
use virtio_iommu_spec::event::FaultReason;
use virtio_iommu_spec::probe::ResvMemSubtype;
use virtio_iommu_spec::request::{Invalidate, TableDesc};
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend,
    GuestMemoryRegion,
};

pub use iotlb::{IotlbStats, IOTLB_ENTRIES};
pub use nested::{NestedTable, DEFAULT_MAX_TABLES};
pub use s1tlb::S1Stats;
pub use space::{AddressSpace, AddressSpaces, HostMapping};

use super::{
    Access, AttachTarget, DmaAttrs, Fault, GuestRange, HostError, HostIommu, MappingStore, Perm,
    ReservedRegion, SpaceId, TableId, TranslateFault,
};
use crate::GuestRam;
use attachments::Attachments;
use iotlb::Iotlb;
use nested::{Nested, Route};
use s1tlb::Tag;
use walk::{AccessReq, WalkError};

/// Default cap on address spaces (one per mapped domain).
pub const DEFAULT_MAX_SPACES: usize = 1 << 16;

/// The software IOMMU.
#[derive(Debug)]
pub struct EmulatedHost {
    spaces: AddressSpaces,
    attachments: Attachments,
    iotlb: Iotlb,
    nested: Nested,
    mem: Option<GuestMemoryAtomic<GuestRam>>,
}

impl Default for EmulatedHost {
    fn default() -> Self {
        Self::new()
    }
}

impl EmulatedHost {
    /// A host with no guest memory yet, allowing [`DEFAULT_MAX_SPACES`] address spaces.
    #[must_use]
    pub fn new() -> Self {
        Self::with_max_spaces(DEFAULT_MAX_SPACES)
    }

    /// A host with no guest memory yet, allowing up to `max_spaces` address spaces.
    #[must_use]
    pub fn with_max_spaces(max_spaces: usize) -> Self {
        EmulatedHost {
            spaces: AddressSpaces::new(max_spaces),
            attachments: Attachments::default(),
            iotlb: Iotlb::default(),
            nested: Nested::default(),
            mem: None,
        }
    }

    /// IOTLB counters.
    #[must_use]
    pub fn iotlb_stats(&self) -> IotlbStats {
        self.iotlb.stats()
    }

    /// Counters of the stage-1 caches (guest tables).
    #[must_use]
    pub fn s1_stats(&self) -> S1Stats {
        self.nested.stats()
    }

    /// The nested (guest-owned) table behind a handle.
    #[must_use]
    pub fn table(&self, id: TableId) -> Option<&NestedTable> {
        self.nested.get(id)
    }

    /// Number of live nested tables.
    #[must_use]
    pub fn table_count(&self) -> usize {
        self.nested.len()
    }

    /// The address space behind a handle.
    #[must_use]
    pub fn space(&self, id: SpaceId) -> Option<&AddressSpace> {
        self.spaces.get(id)
    }

    /// Number of live address spaces.
    #[must_use]
    pub fn space_count(&self) -> usize {
        self.spaces.len()
    }

    /// The explicit attachment of `(endpoint, pasid)`, if any.
    #[must_use]
    pub fn attachment(&self, endpoint: u32, pasid: Option<u32>) -> Option<AttachTarget> {
        self.attachments.get(endpoint, pasid)
    }

    /// Drops one user of a replaced or removed attachment's space or table.
    fn release(&mut self, target: AttachTarget) {
        match target {
            AttachTarget::Space(id) => self.spaces.release(id),
            AttachTarget::Table(id) => self.nested.release(id),
            AttachTarget::Bypass | AttachTarget::Blocked => {}
        }
    }

    /// Where DMA of `(endpoint, pasid)` goes.
    fn target_of(&self, endpoint: u32, pasid: Option<u32>) -> AttachTarget {
        self.attachments.target_of(endpoint, pasid, |id| {
            self.nested
                .get(id)
                .is_some_and(|t| matches!(t.desc, TableDesc::ArmSmmuV3 { .. }))
        })
    }

    /// Translation through an address space: reserved regions, then the IOTLB and the space.
    /// `attached`: `space` is the explicit attachment of `(endpoint, pasid)`.
    #[allow(clippy::too_many_arguments)] // the DMA's full description
    fn translate_space(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        space: SpaceId,
        attached: bool,
        iova: u64,
        len: u64,
        access: Access,
    ) -> Result<GuestRange, Fault> {
        let fault = |reason| Fault {
            reason,
            address: iova,
        };
        if let Some(r) = self
            .attachments
            .regions_of(endpoint)
            .iter()
            .find(|r| r.start <= iova && iova <= r.last)
        {
            return match r.kind {
                ResvMemSubtype::Msi => Ok(GuestRange {
                    gpa: iova,
                    len: cut(iova, r.last, len),
                }),
                ResvMemSubtype::Reserved => Err(fault(FaultReason::Mapping)),
            };
        }
        let m = match self.iotlb.lookup(endpoint, pasid, space, iova) {
            Some(m) => m,
            None => {
                let Some(s) = self.spaces.get(space) else {
                    warn!("endpoint {endpoint} attached to missing space {space:?}");
                    return Err(fault(FaultReason::Unknown));
                };
                let m = s.lookup(iova).ok_or(fault(FaultReason::Mapping))?;
                // The attachment-free hit skips the reserved regions: only for a page clear
                // of them.
                let page = iova & !0xfff;
                let clear = !self
                    .attachments
                    .regions_of(endpoint)
                    .iter()
                    .any(|r| r.start <= page | 0xfff && page <= r.last);
                self.iotlb
                    .insert(endpoint, pasid, space, attached && clear, iova, m);
                m
            }
        };
        through(m, iova, len, access).ok_or(fault(FaultReason::Mapping))
    }

    /// Nested translation through a guest table: stage 1 by walking it, stage 2 the identity
    /// over guest RAM (the range is cut at the end of the leaf page and of the RAM region).
    #[allow(clippy::too_many_arguments)] // the DMA's full description
    fn translate_table(
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
                    .translate_space(endpoint, pasid, space, false, iova, len, access)
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
            .translate(&*guard, tag, iova, req)
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

    /// Copies between a DMA buffer and guest memory, one translated piece at a time.
    fn dma(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        iova: u64,
        len: usize,
        access: Access,
        mut copy: impl FnMut(&GuestRam, usize, usize, GuestAddress) -> usize,
    ) -> Result<(), Fault> {
        let mem = self.mem.clone();
        let guard = mem.as_ref().map(GuestMemoryAtomic::memory);
        let mut done = 0usize;
        let mut cur = iova;
        while done < len {
            let want = u64::try_from(len - done).unwrap_or(u64::MAX);
            let piece = self.translate(endpoint, pasid, cur, want, access)?;
            // `piece.len` ≤ `want`, which came from a usize.
            let n = usize::try_from(piece.len).unwrap_or(len - done);
            let copied = match &guard {
                Some(m) => copy(m, done, n, GuestAddress(piece.gpa)),
                None => 0,
            };
            if copied < n {
                let at = cur.wrapping_add(u64::try_from(copied).unwrap_or(0));
                debug!("dma: endpoint {endpoint} iova {at:#x}: translated outside guest RAM");
                return Err(Fault {
                    reason: FaultReason::Unknown,
                    address: at,
                });
            }
            done += n;
            if done < len {
                // Past the top of the input space there is nothing to translate.
                cur = cur.checked_add(piece.len).ok_or(Fault {
                    reason: FaultReason::Mapping,
                    address: u64::MAX,
                })?;
            }
        }
        Ok(())
    }
}

impl HostIommu for EmulatedHost {
    fn alloc_space(&mut self) -> Result<SpaceId, HostError> {
        self.spaces.alloc()
    }

    fn destroy_space(&mut self, space: SpaceId) -> Result<(), HostError> {
        self.spaces.destroy(space)?;
        self.iotlb.invalidate_space(space);
        Ok(())
    }

    fn map(
        &mut self,
        space: SpaceId,
        iova: u64,
        last: u64,
        phys: u64,
        perm: Perm,
    ) -> Result<(), HostError> {
        self.spaces.get_mut(space)?.map(iova, last, phys, perm)
    }

    fn unmap(&mut self, space: SpaceId, iova: u64, last: u64) -> Result<u64, HostError> {
        let removed = self.spaces.get_mut(space)?.unmap(iova, last);
        self.iotlb.invalidate_range(space, iova, last);
        Ok(removed.bytes)
    }

    fn attach(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        target: AttachTarget,
    ) -> Result<(), HostError> {
        match target {
            AttachTarget::Space(id) => {
                self.spaces.hold(id)?;
            }
            AttachTarget::Table(id) => self.nested.hold(id)?,
            AttachTarget::Bypass | AttachTarget::Blocked => {}
        }
        if let Some(old) = self.attachments.set(endpoint, pasid, target) {
            self.release(old);
        }
        self.iotlb.invalidate_endpoint(endpoint, pasid);
        Ok(())
    }

    fn detach(&mut self, endpoint: u32, pasid: Option<u32>) -> Result<(), HostError> {
        if let Some(old) = self.attachments.remove(endpoint, pasid) {
            self.release(old);
        }
        self.iotlb.invalidate_endpoint(endpoint, pasid);
        Ok(())
    }

    fn mappings(&self, space: SpaceId) -> Option<&MappingStore> {
        self.spaces.get(space).map(AddressSpace::store)
    }

    fn set_unattached_bypass(&mut self, bypass: bool) {
        self.attachments.set_unattached_bypass(bypass);
    }

    fn set_reserved_regions(&mut self, endpoints: RangeInclusive<u32>, regions: &[ReservedRegion]) {
        self.attachments.set_reserved_regions(endpoints, regions);
        self.iotlb.invalidate_all();
    }

    fn set_guest_memory(&mut self, mem: GuestMemoryAtomic<GuestRam>) {
        self.mem = Some(mem);
    }

    fn walks_guest_tables(&self) -> bool {
        true
    }

    fn translate(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        iova: u64,
        len: u64,
        access: Access,
    ) -> Result<GuestRange, Fault> {
        self.translate_ext(endpoint, pasid, iova, len, access, DmaAttrs::default())
            .map_err(|f| f.fault)
    }

    fn translate_ext(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        iova: u64,
        len: u64,
        access: Access,
        attrs: DmaAttrs,
    ) -> Result<GuestRange, TranslateFault> {
        let fault = |reason| TranslateFault {
            fault: Fault {
                reason,
                address: iova,
            },
            recoverable: false,
        };
        // An IOTLB hit cached through this endpoint's own attachment: that attachment has not
        // changed since (attach and detach drop the entry), nor the reserved regions.
        if let Some(m) = self.iotlb.lookup_attached(endpoint, pasid, iova) {
            return through(m, iova, len, access).ok_or(fault(FaultReason::Mapping));
        }
        match self.target_of(endpoint, pasid) {
            AttachTarget::Bypass => Ok(GuestRange {
                gpa: iova,
                len: cut(iova, u64::MAX, len),
            }),
            AttachTarget::Blocked => Err(fault(FaultReason::Domain)),
            AttachTarget::Table(id) => {
                self.translate_table(id, endpoint, pasid, iova, len, access, attrs)
            }
            AttachTarget::Space(space) => self
                .translate_space(endpoint, pasid, space, true, iova, len, access)
                .map_err(|f| fault(f.reason)),
        }
    }

    fn alloc_table(
        &mut self,
        endpoint: u32,
        parent: Option<SpaceId>,
        desc: &TableDesc,
    ) -> Result<TableId, HostError> {
        if let Some(p) = parent {
            self.spaces.hold(p)?;
        }
        let r = self.nested.alloc(endpoint, parent, *desc);
        if r.is_err() {
            self.release(parent.map_or(AttachTarget::Blocked, AttachTarget::Space));
        }
        r
    }

    fn destroy_table(&mut self, table: TableId) -> Result<(), HostError> {
        let t = self.nested.destroy(table)?;
        self.release(t.parent.map_or(AttachTarget::Blocked, AttachTarget::Space));
        Ok(())
    }

    fn invalidate(&mut self, table: TableId, inval: &Invalidate) -> Result<(), HostError> {
        self.nested.invalidate(table, inval)
    }

    fn dma_read(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        iova: u64,
        buf: &mut [u8],
    ) -> Result<(), Fault> {
        let len = buf.len();
        self.dma(
            endpoint,
            pasid,
            iova,
            len,
            Access::Read,
            |m, off, n, gpa| m.read(&mut buf[off..off + n], gpa).unwrap_or(0),
        )
    }

    fn dma_write(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        iova: u64,
        data: &[u8],
    ) -> Result<(), Fault> {
        self.dma(
            endpoint,
            pasid,
            iova,
            data.len(),
            Access::Write,
            |m, off, n, gpa| m.write(&data[off..off + n], gpa).unwrap_or(0),
        )
    }
}

/// The guest range `m` gives `iova` (at most `len` bytes), if it permits `access`.
fn through(m: HostMapping, iova: u64, len: u64, access: Access) -> Option<GuestRange> {
    m.perm.contains(access.perm()).then(|| GuestRange {
        // Cannot overflow: `map` refused mappings whose output end passes 2^64.
        gpa: m.phys + (iova - m.iova),
        len: cut(iova, m.last, len),
    })
}

/// Bytes from `iova` to the end of `[.., last]`, capped at `len`.
fn cut(iova: u64, last: u64, len: u64) -> u64 {
    len.min((last - iova).saturating_add(1))
}
