//! Nested HWPTs: guest tables hung off a NEST_PARENT HWPT shared per IOAS, optionally armed
//! with the fault queue so page requests reach the guest.

use iommufd_bindings as b;
use log::{info, warn};

use super::error::host_err;
use super::fault::FaultQueue;
use super::{sys, IommufdHost};
use crate::host::{HostError, SpaceId, TableId};

/// A nested table: its HWPT, the parent it hangs off and how to invalidate it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Nested {
    pub(super) parent_ioas: u32,
    pub(super) data_type: u32,
}

/// A NEST_PARENT HWPT over an IOAS, shared by the nested tables on that IOAS.
#[derive(Debug, Clone, Copy)]
pub(super) struct Parent {
    pub(super) hwpt: u32,
    pub(super) users: usize,
}

impl IommufdHost {
    /// The fault queue nested tables are armed with, allocated on first use.
    fn fault_queue_id(&mut self) -> Result<u32, HostError> {
        self.fault_queue()
            .map_err(|e| host_err("IOMMU_FAULT_QUEUE_ALLOC", &e))
    }

    /// The fault queue's ID, allocating it (and watching its fd) on first use.
    pub(super) fn fault_queue(&mut self) -> std::io::Result<u32> {
        if let Some(q) = &self.faults {
            return Ok(q.id());
        }
        let (id, file) = sys::fault_queue_alloc(&self.fd)?;
        info!("fault queue {id} allocated: page requests go to the guest");
        self.watch_events(&file, "fault queue");
        self.faults = Some(FaultQueue::new(id, file));
        Ok(id)
    }

    /// The IOAS nested tables of `parent` hang off: the domain's, or the master for `None`.
    pub(super) fn parent_ioas(&self, parent: Option<SpaceId>) -> Result<u32, HostError> {
        match parent {
            None => Ok(self.master),
            Some(s) if self.spaces.contains_key(&s.0) => Ok(s.0),
            Some(_) => Err(HostError::Invalid),
        }
    }

    /// The NEST_PARENT HWPT over `ioas` (allocated with `dev_id` on first use).
    pub(super) fn parent_for(&mut self, dev_id: u32, ioas: u32) -> Result<u32, HostError> {
        if let Some(p) = self.parents.get_mut(&ioas) {
            p.users += 1;
            return Ok(p.hwpt);
        }
        let flags = b::iommufd_hwpt_alloc_flags_IOMMU_HWPT_ALLOC_NEST_PARENT;
        let hwpt = sys::hwpt_alloc(&self.fd, flags, dev_id, ioas, 0, &[], None).map_err(|e| {
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                warn!("host IOMMU cannot nest (NEST_PARENT: EOPNOTSUPP); guest tables stay unavailable, the flat model is used");
            }
            host_err("IOMMU_HWPT_ALLOC(NEST_PARENT)", &e)
        })?;
        self.parents.insert(ioas, Parent { hwpt, users: 1 });
        Ok(hwpt)
    }

    pub(super) fn put_parent(&mut self, ioas: u32) {
        let Some(p) = self.parents.get_mut(&ioas) else {
            return;
        };
        p.users = p.users.saturating_sub(1);
        if p.users == 0 {
            let hwpt = p.hwpt;
            self.parents.remove(&ioas);
            if let Err(e) = sys::destroy(&self.fd, hwpt) {
                warn!("destroying parent HWPT {hwpt}: {e}");
            }
        }
    }

    /// Allocates a nested HWPT for `endpoint` with driver data `data` of `data_type` (e.g.
    /// `IOMMU_HWPT_DATA_VTD_S1`, or the selftest's `0xdead`) over the parent of `parent`'s IOAS
    /// (the master when `None`), armed with the fault queue if `faults`.
    ///
    /// # Errors
    /// `Unsupported` when the host cannot nest, `Invalid` for unknown handles or bad data.
    pub fn alloc_nested(
        &mut self,
        endpoint: u32,
        parent: Option<SpaceId>,
        data_type: u32,
        data: &[u8],
        flags: u32,
        faults: bool,
    ) -> Result<TableId, HostError> {
        let dev_id = self
            .devices
            .get(&endpoint)
            .ok_or(HostError::Invalid)?
            .dev_id;
        let ioas = self.parent_ioas(parent)?;
        let fault_id = if faults {
            Some(self.fault_queue_id()?)
        } else {
            None
        };
        let parent_hwpt = self.parent_for(dev_id, ioas)?;
        match sys::hwpt_alloc(
            &self.fd,
            flags,
            dev_id,
            parent_hwpt,
            data_type,
            data,
            fault_id,
        ) {
            Ok(hwpt) => {
                self.tables.insert(
                    hwpt,
                    Nested {
                        parent_ioas: ioas,
                        data_type,
                    },
                );
                Ok(TableId(hwpt))
            }
            Err(e) => {
                self.put_parent(ioas);
                Err(host_err("IOMMU_HWPT_ALLOC(nested)", &e))
            }
        }
    }

    /// `IOMMU_HWPT_INVALIDATE` on a nested table with raw entries of `entry_len` bytes.
    /// Returns how many entries the kernel handled.
    ///
    /// # Errors
    /// The error and the number of entries handled before it.
    pub fn invalidate_raw(
        &mut self,
        table: TableId,
        data_type: u32,
        entry_len: u32,
        entries: &[u8],
    ) -> Result<u32, (HostError, u32)> {
        if !self.tables.contains_key(&table.0) {
            return Err((HostError::Invalid, 0));
        }
        sys::hwpt_invalidate(&self.fd, table.0, data_type, entry_len, entries)
            .map_err(|(e, n)| (host_err("IOMMU_HWPT_INVALIDATE", &e), n))
    }
}
