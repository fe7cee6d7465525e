//! The engine's view of the software IOMMU: `HostIommu` over address spaces, attachments and
//! nested tables, with translation and DMA delegated to `translate.rs` and `dma.rs`.

use std::ops::RangeInclusive;

use log::debug;
use virtio_iommu_spec::event::FaultReason;
use virtio_iommu_spec::ext::PageRespCode;
use virtio_iommu_spec::request::{Invalidate, TableDesc};
use virtio_iommu_spec::Event;
use vm_memory::{Bytes, GuestMemoryAtomic, GuestMemoryMmap};

use super::translate::cut;
use super::{AddressSpace, EmulatedHost};
use crate::host::{
    Access, AttachTarget, DmaAttrs, Fault, GuestRange, HostError, HostIommu, Perm, ReservedRegion,
    SpaceId, TableId, TranslateFault,
};

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
