//! Nested HWPTs: guest tables hung off a NEST_PARENT HWPT shared per IOAS, optionally armed
//! with the fault queue so page requests reach the guest.

use std::collections::BTreeMap;
use std::fs::File;

use iommufd_bindings as b;
use log::{info, warn};

use super::error::host_err;
use super::fault::FaultQueue;
use super::{sys, watch_events};
use crate::host::{HostError, TableId};

/// A nested table: the IOAS its parent HWPT is over and how to invalidate it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Nested {
    pub(super) parent_ioas: u32,
    pub(super) data_type: u32,
}

/// A NEST_PARENT HWPT over an IOAS, shared by the nested tables on that IOAS.
#[derive(Debug, Clone, Copy)]
struct Parent {
    hwpt: u32,
    users: usize,
}

/// The parent HWPTs, the nested tables (of both paths: plain nested HWPTs and those on a
/// vIOMMU) and the fault queue they may be armed with.
#[derive(Debug, Default)]
pub(super) struct Nesting {
    parents: BTreeMap<u32, Parent>,
    tables: BTreeMap<u32, Nested>,
    faults: Option<FaultQueue>,
}

impl Nesting {
    /// The fault queue, if allocated.
    pub(super) fn faults(&self) -> Option<&FaultQueue> {
        self.faults.as_ref()
    }

    /// The fault queue, if allocated, to read or answer it.
    pub(super) fn faults_mut(&mut self) -> Option<&mut FaultQueue> {
        self.faults.as_mut()
    }

    /// The fault queue's ID, allocating it (and adding its fd to `epoll`) on first use.
    pub(super) fn fault_queue(&mut self, fd: &File, epoll: &File) -> std::io::Result<u32> {
        if let Some(q) = &self.faults {
            return Ok(q.id());
        }
        let (id, file) = sys::fault_queue_alloc(fd)?;
        info!("fault queue {id} allocated: page requests go to the guest");
        watch_events(epoll, &file, "fault queue");
        self.faults = Some(FaultQueue::new(id, file));
        Ok(id)
    }

    /// The NEST_PARENT HWPT over `ioas` (allocated with `dev_id` on first use), one more user
    /// counted.
    pub(super) fn parent_for(
        &mut self,
        fd: &File,
        dev_id: u32,
        ioas: u32,
    ) -> Result<u32, HostError> {
        if let Some(p) = self.parents.get_mut(&ioas) {
            p.users += 1;
            return Ok(p.hwpt);
        }
        let flags = b::iommufd_hwpt_alloc_flags_IOMMU_HWPT_ALLOC_NEST_PARENT;
        let hwpt = sys::hwpt_alloc(fd, flags, dev_id, ioas, 0, &[], None).map_err(|e| {
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                warn!("host IOMMU cannot nest (NEST_PARENT: EOPNOTSUPP); guest tables stay unavailable, the flat model is used");
            }
            host_err("IOMMU_HWPT_ALLOC(NEST_PARENT)", &e)
        })?;
        self.parents.insert(ioas, Parent { hwpt, users: 1 });
        Ok(hwpt)
    }

    /// Ends one use of the parent over `ioas`; the last one destroys it.
    pub(super) fn put_parent(&mut self, fd: &File, ioas: u32) {
        let Some(p) = self.parents.get_mut(&ioas) else {
            return;
        };
        p.users = p.users.saturating_sub(1);
        if p.users == 0 {
            let hwpt = p.hwpt;
            self.parents.remove(&ioas);
            if let Err(e) = sys::destroy(fd, hwpt) {
                warn!("destroying parent HWPT {hwpt}: {e}");
            }
        }
    }

    /// Allocates a nested HWPT for device `dev_id` with driver data `data` of `data_type`
    /// over the parent of `ioas`, armed with the fault queue if `faults`.
    ///
    /// # Errors
    /// `Unsupported` when the host cannot nest, `Invalid` for bad data.
    #[allow(clippy::too_many_arguments)] // the ioctl's arguments
    pub(super) fn alloc(
        &mut self,
        fd: &File,
        epoll: &File,
        dev_id: u32,
        ioas: u32,
        data_type: u32,
        data: &[u8],
        flags: u32,
        faults: bool,
    ) -> Result<TableId, HostError> {
        let fault_id = if faults {
            Some(
                self.fault_queue(fd, epoll)
                    .map_err(|e| host_err("IOMMU_FAULT_QUEUE_ALLOC", &e))?,
            )
        } else {
            None
        };
        let parent_hwpt = self.parent_for(fd, dev_id, ioas)?;
        match sys::hwpt_alloc(fd, flags, dev_id, parent_hwpt, data_type, data, fault_id) {
            Ok(hwpt) => {
                self.insert(hwpt, ioas, data_type);
                Ok(TableId(hwpt))
            }
            Err(e) => {
                self.put_parent(fd, ioas);
                Err(host_err("IOMMU_HWPT_ALLOC(nested)", &e))
            }
        }
    }

    /// Records a nested HWPT allocated elsewhere (on a vIOMMU) over `ioas`.
    pub(super) fn insert(&mut self, hwpt: u32, parent_ioas: u32, data_type: u32) {
        self.tables.insert(
            hwpt,
            Nested {
                parent_ioas,
                data_type,
            },
        );
    }

    /// Forgets a nested HWPT destroyed elsewhere.
    pub(super) fn remove(&mut self, hwpt: u32) {
        self.tables.remove(&hwpt);
    }

    /// The nested table `hwpt`.
    pub(super) fn get(&self, hwpt: u32) -> Option<Nested> {
        self.tables.get(&hwpt).copied()
    }

    /// Whether a nested table hangs off `ioas`.
    pub(super) fn uses_ioas(&self, ioas: u32) -> bool {
        self.tables.values().any(|t| t.parent_ioas == ioas)
    }

    /// Destroys nested table `hwpt` and its reference on the parent.
    ///
    /// # Errors
    /// `Invalid` for an unknown table; the destroy ioctl's error.
    pub(super) fn destroy(&mut self, fd: &File, hwpt: u32) -> Result<(), HostError> {
        let t = self.get(hwpt).ok_or(HostError::Invalid)?;
        sys::destroy(fd, hwpt).map_err(|e| host_err("IOMMU_DESTROY(nested HWPT)", &e))?;
        self.tables.remove(&hwpt);
        self.put_parent(fd, t.parent_ioas);
        Ok(())
    }

    /// `IOMMU_HWPT_INVALIDATE` on a nested table with raw entries of `entry_len` bytes.
    /// Returns how many entries the kernel handled.
    ///
    /// # Errors
    /// The error and the number of entries handled before it.
    pub(super) fn invalidate_raw(
        &self,
        fd: &File,
        hwpt: u32,
        data_type: u32,
        entry_len: u32,
        entries: &[u8],
    ) -> Result<u32, (HostError, u32)> {
        if !self.tables.contains_key(&hwpt) {
            return Err((HostError::Invalid, 0));
        }
        sys::hwpt_invalidate(fd, hwpt, data_type, entry_len, entries)
            .map_err(|(e, n)| (host_err("IOMMU_HWPT_INVALIDATE", &e), n))
    }

    /// At drop, first step: every nested table (their devices are detached already).
    pub(super) fn destroy_tables(&mut self, fd: &File) {
        for hwpt in std::mem::take(&mut self.tables).into_keys() {
            if let Err(e) = sys::destroy(fd, hwpt) {
                warn!("destroying nested HWPT {hwpt}: {e}");
            }
        }
    }

    /// At drop, last step: the parents left and the fault queue.
    pub(super) fn destroy_rest(&mut self, fd: &File) {
        for p in std::mem::take(&mut self.parents).into_values() {
            if let Err(e) = sys::destroy(fd, p.hwpt) {
                warn!("destroying parent HWPT {}: {e}", p.hwpt);
            }
        }
        if let Some(q) = self.faults.take() {
            // The fault fd holds a reference on the object: close it first.
            let id = q.id();
            drop(q);
            if let Err(e) = sys::destroy(fd, id) {
                warn!("destroying fault queue {id}: {e}");
            }
        }
    }
}
