//! The engine's view of the backend: `HostIommu` on iommufd objects (IOASes for spaces,
//! nested HWPTs for guest tables, VFIO attach for endpoints).

use iommufd_bindings as b;
use log::debug;
use virtio_iommu_spec::ext::PageRespCode;
use virtio_iommu_spec::request::{Invalidate, TableDesc};
use virtio_iommu_spec::Event;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use super::error::host_err;
use super::vtd::{vtd_entries, vtd_s1_data};
use super::{sys, IommufdHost};
use crate::host::{AttachTarget, HostError, HostIommu, Perm, SpaceId, TableId};

/// `last - first + 1`, or `None` for an empty or 2^64-byte range.
fn range_len(first: u64, last: u64) -> Option<u64> {
    last.checked_sub(first)?.checked_add(1)
}

/// The IOAS map flags for `perm`'s R/W bits.
fn map_flags(perm: Perm) -> u32 {
    let mut f = 0;
    if perm.contains(Perm::READ) {
        f |= b::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE;
    }
    if perm.contains(Perm::WRITE) {
        f |= b::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE;
    }
    f
}

impl IommufdHost {
    /// Installs `endpoint` if it is a VMM-bound device whose bind has happened since.
    ///
    /// # Errors
    /// `Failed` while the VMM has not bound it: the guest asked before the VMM was ready.
    fn ready(&mut self, endpoint: u32) -> Result<(), HostError> {
        if self.install_vmm_bound(Some(endpoint)) {
            Ok(())
        } else {
            log::error!("endpoint {endpoint}: the VMM has not bound its VFIO device to the shared iommufd; request refused");
            Err(HostError::Failed)
        }
    }
}

impl HostIommu for IommufdHost {
    fn alloc_space(&mut self) -> Result<SpaceId, HostError> {
        let id = sys::ioas_alloc(&self.fd).map_err(|e| host_err("IOMMU_IOAS_ALLOC", &e))?;
        self.spaces.insert(id, ());
        Ok(SpaceId(id))
    }

    fn destroy_space(&mut self, space: SpaceId) -> Result<(), HostError> {
        if !self.spaces.contains_key(&space.0) {
            return Err(HostError::Invalid);
        }
        if self.tables.values().any(|t| t.parent_ioas == space.0) {
            return Err(HostError::Invalid);
        }
        sys::destroy(&self.fd, space.0).map_err(|e| host_err("IOMMU_DESTROY(IOAS)", &e))?;
        self.spaces.remove(&space.0);
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
        if !self.spaces.contains_key(&space.0) {
            return Err(HostError::Invalid);
        }
        if perm.contains(Perm::MMIO) {
            // Peer-to-peer MMIO needs dma-buf mappings; not implemented.
            return Err(HostError::Unsupported);
        }
        let len = range_len(iova, last).ok_or(HostError::Invalid)?;
        let flags = map_flags(perm);
        if flags == 0 {
            // iommufd needs R or W; a mapping without either faults every access, as nothing.
            debug!("map {iova:#x}-{last:#x} without permissions: nothing to program");
            return Ok(());
        }
        sys::ioas_copy(&self.fd, space.0, iova, self.master, phys, len, flags)
            .map_err(|e| host_err("IOMMU_IOAS_COPY", &e))
    }

    fn unmap(&mut self, space: SpaceId, iova: u64, last: u64) -> Result<u64, HostError> {
        if !self.spaces.contains_key(&space.0) {
            return Err(HostError::Invalid);
        }
        // 0..=u64::MAX is iommufd's "everything" (length U64_MAX).
        let len = range_len(iova, last).unwrap_or(u64::MAX);
        match sys::ioas_unmap(&self.fd, space.0, iova, len) {
            Ok(n) => Ok(n),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(0),
            Err(e) => Err(host_err("IOMMU_IOAS_UNMAP", &e)),
        }
    }

    fn attach(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        target: AttachTarget,
    ) -> Result<(), HostError> {
        self.ready(endpoint)?;
        let Some(mut dev) = self.devices.remove(&endpoint) else {
            debug!("attach: endpoint {endpoint} has no host device; nothing to program");
            return Ok(());
        };
        let pt = match target {
            AttachTarget::Space(s) if self.spaces.contains_key(&s.0) => Some(s.0),
            AttachTarget::Table(t) if self.tables.contains_key(&t.0) => Some(t.0),
            AttachTarget::Bypass => Some(self.master),
            AttachTarget::Blocked => None,
            AttachTarget::Space(_) | AttachTarget::Table(_) => {
                self.devices.insert(endpoint, dev);
                return Err(HostError::Invalid);
            }
        };
        let r = match pt {
            Some(pt) => dev.attach(&self.fd, pt, pasid).map(|_| ()),
            None => dev.block(&self.fd, pasid, self.empty),
        };
        let r = r.map_err(|e| host_err("VFIO attach", &e));
        if r.is_ok() {
            if pasid.is_none() {
                dev.target = Some(target);
            }
            // iommufd answered the endpoint's pending page requests itself.
            if let Some(q) = &mut self.faults {
                q.forget_endpoint(endpoint);
            }
        }
        self.devices.insert(endpoint, dev);
        r
    }

    fn detach(&mut self, endpoint: u32, pasid: Option<u32>) -> Result<(), HostError> {
        self.ready(endpoint)?;
        let Some(mut dev) = self.devices.remove(&endpoint) else {
            return Ok(());
        };
        let r = match pasid {
            Some(_) => dev.block(&self.fd, pasid, self.empty),
            None => self.apply_default(&mut dev),
        };
        let r = r.map_err(|e| host_err("VFIO detach", &e));
        if r.is_ok() {
            if pasid.is_none() {
                dev.target = None;
            }
            if let Some(q) = &mut self.faults {
                q.forget_endpoint(endpoint);
            }
        }
        self.devices.insert(endpoint, dev);
        r
    }

    fn set_unattached_bypass(&mut self, bypass: bool) {
        self.unattached_bypass = bypass;
        self.set_default_all();
    }

    fn alloc_table(
        &mut self,
        endpoint: u32,
        parent: Option<SpaceId>,
        desc: &TableDesc,
    ) -> Result<TableId, HostError> {
        self.ready(endpoint)?;
        match *desc {
            TableDesc::Vtd {
                pasid,
                addr_width,
                pgd,
                flags,
            } => {
                let pasid_capable = self.hw_info(endpoint).is_some_and(|h| h.max_pasid_log2 > 0);
                let alloc_flags = if pasid_capable && pasid != 0 {
                    b::iommufd_hwpt_alloc_flags_IOMMU_HWPT_ALLOC_PASID
                } else {
                    0
                };
                let data = vtd_s1_data(pgd, addr_width, flags);
                let faults = self.page_requests;
                self.alloc_nested(
                    endpoint,
                    parent,
                    b::iommu_hwpt_data_type_IOMMU_HWPT_DATA_VTD_S1,
                    &data,
                    alloc_flags,
                    faults,
                )
            }
            TableDesc::ArmSmmuV3 { .. } => self.alloc_smmu_table(endpoint, parent, desc),
        }
    }

    fn destroy_table(&mut self, table: TableId) -> Result<(), HostError> {
        if self.smmu.owns(table.0) {
            return self.destroy_smmu_table(table);
        }
        let Some(t) = self.tables.get(&table.0).copied() else {
            return Err(HostError::Invalid);
        };
        sys::destroy(&self.fd, table.0).map_err(|e| host_err("IOMMU_DESTROY(nested HWPT)", &e))?;
        self.tables.remove(&table.0);
        self.put_parent(t.parent_ioas);
        Ok(())
    }

    fn invalidate(&mut self, table: TableId, inval: &Invalidate) -> Result<(), HostError> {
        if self.smmu.owns(table.0) {
            return self.invalidate_smmu(table, inval);
        }
        let t = self
            .tables
            .get(&table.0)
            .copied()
            .ok_or(HostError::Invalid)?;
        if t.data_type != b::iommu_hwpt_data_type_IOMMU_HWPT_DATA_VTD_S1 {
            return Err(HostError::Unsupported);
        }
        let entries = vtd_entries(inval)?;
        if entries.is_empty() {
            return Ok(());
        }
        let ty = b::iommu_hwpt_invalidate_data_type_IOMMU_HWPT_INVALIDATE_DATA_VTD_S1;
        self.invalidate_raw(table, ty, 24, &entries)
            .map(|_| ())
            .map_err(|(e, _)| e)
    }

    fn page_response(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        group_id: u16,
        code: PageRespCode,
    ) -> Result<(), HostError> {
        self.faults
            .as_mut()
            .ok_or(HostError::Invalid)?
            .respond(endpoint, pasid, group_id, code)
    }

    fn poll_event(&mut self) -> Option<Event> {
        let devices = &self.devices;
        let fault = self.faults.as_mut().and_then(|q| {
            q.next_event(|dev_id| {
                devices
                    .iter()
                    .find(|(_, d)| d.dev_id == dev_id)
                    .map(|(e, _)| *e)
            })
        });
        fault.or_else(|| self.poll_vevent())
    }

    fn set_guest_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) {
        self.map_guest_memory(mem);
        // The VMM binds its devices before it hands over guest memory.
        self.install_vmm_bound(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_flags() {
        assert_eq!(range_len(0x1000, 0x1fff), Some(0x1000));
        assert_eq!(range_len(0, u64::MAX), None);
        assert_eq!(range_len(2, 1), None);
        assert_eq!(map_flags(Perm::READ | Perm::WRITE), 6);
        assert_eq!(map_flags(Perm::WRITE), 2);
        assert_eq!(map_flags(Perm::empty()), 0);
    }
}
