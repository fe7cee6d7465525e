//! `EmulatedHost`, the default backend: the IOMMU is emulated in software, so a simulated
//! device can do real DMA into guest memory through the guest's mappings.
//!
//! Translation order follows QEMU's `virtio_iommu_translate`: identity for bypass, then the
//! endpoint's reserved regions (MSI window: 1:1; RESERVED: MAPPING fault), then the IOTLB and
//! the address space. A translated address outside guest RAM faults with reason UNKNOWN: the
//! IOMMU translated it fine, there is just nothing behind it (a bus error, not an IOMMU fault).
//!
//! Guest tables bound with ATTACH_TABLE (vSVA) are walked in software ([`nested`]): stage 1
//! from the guest's SMMUv3 CD table + AArch64 tables ([`smmuv3`], [`aarch64`]) or x86-64
//! first-stage table ([`x86`]), stage 2 the identity over guest RAM.

pub mod aarch64;
mod iotlb;
pub mod nested;
pub mod s1tlb;
pub mod smmuv3;
mod space;
pub mod walk;
pub mod x86;

use std::collections::{HashMap, VecDeque};
use std::ops::RangeInclusive;

use log::{debug, warn};
use virtio_iommu_spec::event::FaultReason;
use virtio_iommu_spec::ext::PageRespCode;
use virtio_iommu_spec::probe::ResvMemSubtype;
use virtio_iommu_spec::request::{Invalidate, TableDesc};
use virtio_iommu_spec::Event;
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap,
    GuestMemoryRegion,
};

pub use iotlb::{IotlbStats, IOTLB_ENTRIES};
pub use space::{AddressSpace, HostMapping};

pub use nested::{NestedTable, DEFAULT_MAX_TABLES};
pub use s1tlb::S1Stats;

use super::{
    Access, AttachTarget, DmaAttrs, Fault, GuestRange, HostError, HostIommu, Perm, ReservedRegion,
    SpaceId, TableId, TranslateFault,
};
use iotlb::Iotlb;
use nested::{Nested, Route};
use s1tlb::Tag;
use walk::{AccessReq, WalkError};

/// Default cap on address spaces (one per mapped domain).
pub const DEFAULT_MAX_SPACES: usize = 1 << 16;

/// The software IOMMU.
#[derive(Debug)]
pub struct EmulatedHost {
    spaces: HashMap<SpaceId, AddressSpace>,
    next_space: u32,
    max_spaces: usize,
    attachments: HashMap<(u32, Option<u32>), AttachTarget>,
    unattached_bypass: bool,
    /// Sorted, disjoint endpoint ranges with their regions.
    reserved: Vec<(RangeInclusive<u32>, Vec<ReservedRegion>)>,
    iotlb: Iotlb,
    nested: Nested,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    events: VecDeque<Event>,
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
            spaces: HashMap::new(),
            next_space: 1,
            max_spaces,
            attachments: HashMap::new(),
            unattached_bypass: false,
            reserved: Vec::new(),
            iotlb: Iotlb::default(),
            nested: Nested::default(),
            mem: None,
            events: VecDeque::new(),
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
        self.spaces.get(&id)
    }

    /// Number of live address spaces.
    #[must_use]
    pub fn space_count(&self) -> usize {
        self.spaces.len()
    }

    /// The explicit attachment of `(endpoint, pasid)`, if any.
    #[must_use]
    pub fn attachment(&self, endpoint: u32, pasid: Option<u32>) -> Option<AttachTarget> {
        self.attachments.get(&(endpoint, pasid)).copied()
    }

    /// Queues an event as if the hardware had raised it (tests, fault injection).
    pub fn inject_event(&mut self, event: Event) {
        self.events.push_back(event);
    }

    fn regions_of(&self, endpoint: u32) -> &[ReservedRegion] {
        let i = self.reserved.partition_point(|(r, _)| *r.end() < endpoint);
        match self.reserved.get(i) {
            Some((r, regions)) if r.contains(&endpoint) => regions,
            _ => &[],
        }
    }

    fn target_of(&self, endpoint: u32, pasid: Option<u32>) -> AttachTarget {
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

    fn release(&mut self, target: AttachTarget) {
        match target {
            AttachTarget::Space(id) => {
                if let Some(s) = self.spaces.get_mut(&id) {
                    s.users = s.users.saturating_sub(1);
                }
            }
            AttachTarget::Table(id) => self.nested.release(id),
            AttachTarget::Bypass | AttachTarget::Blocked => {}
        }
    }

    /// Translation through an address space: reserved regions, then the IOTLB and the space.
    fn translate_space(
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

    /// Copies between a DMA buffer and guest memory, one translated piece at a time.
    fn dma(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        iova: u64,
        len: usize,
        access: Access,
        mut copy: impl FnMut(&GuestMemoryMmap, usize, usize, GuestAddress) -> usize,
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

/// Bytes from `iova` to the end of `[.., last]`, capped at `len`.
fn cut(iova: u64, last: u64, len: u64) -> u64 {
    len.min((last - iova).saturating_add(1))
}

impl HostIommu for EmulatedHost {
    fn alloc_space(&mut self) -> Result<SpaceId, HostError> {
        if self.spaces.len() >= self.max_spaces {
            return Err(HostError::NoMem);
        }
        // Terminates: fewer than 2^32 spaces can be live, so some ID is free.
        loop {
            let id = SpaceId(self.next_space);
            self.next_space = self.next_space.wrapping_add(1);
            if let std::collections::hash_map::Entry::Vacant(v) = self.spaces.entry(id) {
                v.insert(AddressSpace::default());
                return Ok(id);
            }
        }
    }

    fn destroy_space(&mut self, space: SpaceId) -> Result<(), HostError> {
        match self.spaces.get(&space) {
            None => Err(HostError::Invalid),
            Some(s) if s.users > 0 => Err(HostError::Invalid),
            Some(_) => {
                self.spaces.remove(&space);
                self.iotlb.invalidate_space(space);
                Ok(())
            }
        }
    }

    fn map(
        &mut self,
        space: SpaceId,
        iova: u64,
        last: u64,
        phys: u64,
        perm: Perm,
    ) -> Result<(), HostError> {
        self.spaces
            .get_mut(&space)
            .ok_or(HostError::Invalid)?
            .map(iova, last, phys, perm)
    }

    fn unmap(&mut self, space: SpaceId, iova: u64, last: u64) -> Result<u64, HostError> {
        let bytes = self
            .spaces
            .get_mut(&space)
            .ok_or(HostError::Invalid)?
            .unmap(iova, last);
        self.iotlb.invalidate_range(space, iova, last);
        Ok(bytes)
    }

    fn attach(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        target: AttachTarget,
    ) -> Result<(), HostError> {
        match target {
            AttachTarget::Space(id) => {
                self.spaces.get_mut(&id).ok_or(HostError::Invalid)?.users += 1;
            }
            AttachTarget::Table(id) => self.nested.hold(id)?,
            AttachTarget::Bypass | AttachTarget::Blocked => {}
        }
        if let Some(old) = self.attachments.insert((endpoint, pasid), target) {
            self.release(old);
        }
        self.iotlb.invalidate_endpoint(endpoint, pasid);
        Ok(())
    }

    fn detach(&mut self, endpoint: u32, pasid: Option<u32>) -> Result<(), HostError> {
        if let Some(old) = self.attachments.remove(&(endpoint, pasid)) {
            self.release(old);
        }
        self.iotlb.invalidate_endpoint(endpoint, pasid);
        Ok(())
    }

    fn set_unattached_bypass(&mut self, bypass: bool) {
        self.unattached_bypass = bypass;
    }

    fn set_reserved_regions(&mut self, endpoints: RangeInclusive<u32>, regions: &[ReservedRegion]) {
        // Replace whatever overlapped this range before (the engine sets disjoint ranges once).
        self.reserved
            .retain(|(r, _)| *r.end() < *endpoints.start() || *endpoints.end() < *r.start());
        let i = self
            .reserved
            .partition_point(|(r, _)| *r.start() < *endpoints.start());
        self.reserved.insert(i, (endpoints, regions.to_vec()));
    }

    fn page_response(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        group_id: u16,
        code: PageRespCode,
    ) -> Result<(), HostError> {
        // Emulated DMA waits in the engine, which answers its own groups; a response here is
        // for an injected event, which nothing waits for.
        debug!("page response {code:?} to injected group {group_id} of {endpoint}/{pasid:?}");
        Ok(())
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn set_guest_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) {
        self.mem = Some(mem);
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
                .translate_space(endpoint, pasid, space, iova, len, access)
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
            self.spaces.get_mut(&p).ok_or(HostError::Invalid)?.users += 1;
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

#[cfg(test)]
mod tests {
    use super::*;

    const RW: Perm = Perm::READ.union(Perm::WRITE);

    fn mem() -> GuestMemoryAtomic<GuestMemoryMmap> {
        // 64 KiB of RAM at 0x10000 and 64 KiB at 0x30000, with a hole in between.
        GuestMemoryAtomic::new(
            GuestMemoryMmap::<()>::from_ranges(&[
                (GuestAddress(0x1_0000), 0x1_0000),
                (GuestAddress(0x3_0000), 0x1_0000),
            ])
            .unwrap(),
        )
    }

    fn host() -> (EmulatedHost, SpaceId) {
        let mut h = EmulatedHost::default();
        h.set_guest_memory(mem());
        let s = h.alloc_space().unwrap();
        h.attach(7, None, AttachTarget::Space(s)).unwrap();
        (h, s)
    }

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
    fn dma_splits_across_mappings_and_faults_outside_ram() {
        let (mut h, s) = host();
        // IOVA 0x1000..0x2fff → two discontiguous guest pages.
        h.map(s, 0x1000, 0x1fff, 0x3_0000, RW).unwrap();
        h.map(s, 0x2000, 0x2fff, 0x1_0000, RW).unwrap();
        let data: Vec<u8> = (0..0x20u8).collect();
        h.dma_write(7, None, 0x1ff0, &data).unwrap();
        let g = h.mem.as_ref().unwrap().memory();
        let mut a = [0u8; 0x10];
        g.read_slice(&mut a, GuestAddress(0x3_0ff0)).unwrap();
        assert_eq!(&a[..], &data[..0x10]);
        g.read_slice(&mut a, GuestAddress(0x1_0000)).unwrap();
        assert_eq!(&a[..], &data[0x10..]);
        drop(g);
        let mut back = [0u8; 0x20];
        h.dma_read(7, None, 0x1ff0, &mut back).unwrap();
        assert_eq!(&back[..], &data[..]);
        // Running off the end of the second mapping faults at the first unmapped byte.
        let mut big = [0u8; 0x20];
        assert_eq!(
            h.dma_read(7, None, 0x2ff0, &mut big),
            Err(Fault {
                reason: FaultReason::Mapping,
                address: 0x3000
            })
        );
        // Mapped, but to a hole in guest RAM.
        h.map(s, 0x5000, 0x5fff, 0x2_0000, RW).unwrap();
        assert_eq!(
            h.dma_write(7, None, 0x5008, &data),
            Err(Fault {
                reason: FaultReason::Unknown,
                address: 0x5008
            })
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

    #[test]
    fn spaces_are_refcounted_and_capped() {
        let mut h = EmulatedHost::with_max_spaces(2);
        let a = h.alloc_space().unwrap();
        let b = h.alloc_space().unwrap();
        assert_eq!(h.alloc_space(), Err(HostError::NoMem));
        h.attach(1, None, AttachTarget::Space(a)).unwrap();
        assert_eq!(h.destroy_space(a), Err(HostError::Invalid));
        // Replace: a loses its user.
        h.attach(1, None, AttachTarget::Space(b)).unwrap();
        h.destroy_space(a).unwrap();
        assert_eq!(h.destroy_space(a), Err(HostError::Invalid));
        assert_eq!(
            h.attach(1, None, AttachTarget::Space(a)),
            Err(HostError::Invalid)
        );
        assert_eq!(h.attachment(1, None), Some(AttachTarget::Space(b)));
        h.detach(1, None).unwrap();
        h.destroy_space(b).unwrap();
        assert_eq!(h.space_count(), 0);
    }
}
