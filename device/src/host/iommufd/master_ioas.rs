//! The master IOAS: guest memory at IOVA = GPA, the pinned pages every flat-model MAP copies
//! from and every nested parent translates through.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use iommufd_bindings as b;
use log::{debug, error, info, warn};
use vm_memory::{
    GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryRegion,
    MemoryRegionAddress,
};

use super::sys;
use crate::GuestRam;

/// A guest memory region mapped into the master IOAS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestMapping {
    /// Guest-physical (= master IOVA) start.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// Mapped from the region's memfd with `IOMMU_IOAS_MAP_FILE` (else from the daemon's VA).
    pub by_file: bool,
}

/// The master IOAS and the guest memory mapped into it.
#[derive(Debug)]
pub(super) struct MasterIoas {
    id: u32,
    guest: Vec<GuestMapping>,
    /// The memory the mappings come from, kept mapped in this process while they exist.
    mem: Option<GuestMemoryAtomic<GuestRam>>,
}

impl MasterIoas {
    /// The IOAS `id` (allocated by the caller), with no guest memory yet.
    pub(super) fn new(id: u32) -> Self {
        MasterIoas {
            id,
            guest: Vec::new(),
            mem: None,
        }
    }

    /// The IOAS ID.
    pub(super) fn id(&self) -> u32 {
        self.id
    }

    /// The guest memory regions mapped.
    pub(super) fn mappings(&self) -> &[GuestMapping] {
        &self.guest
    }

    /// Replaces the IOAS's guest memory with `mem`'s regions.
    pub(super) fn map_guest_memory(&mut self, fd: &File, mem: GuestMemoryAtomic<GuestRam>) {
        if !self.guest.is_empty() {
            // New memory table: the old pinned pages stay mapped only in domain IOASes that
            // copied them, until the guest unmaps those.
            if let Err(e) = sys::ioas_unmap(fd, self.id, 0, u64::MAX) {
                warn!("unmapping old guest memory from the master IOAS: {e}");
            }
            self.guest.clear();
        }
        let snapshot = mem.memory();
        for region in snapshot.iter() {
            let gpa = region.start_addr().0;
            let len = region.len();
            match self.map_region(fd, gpa, len, region) {
                Ok(by_file) => self.guest.push(GuestMapping { gpa, len, by_file }),
                Err(e) => error!("mapping guest memory GPA {gpa:#x}+{len:#x} into the master IOAS: {e}; DMA there will fault"),
            }
        }
        info!("guest memory mapped at IOVA = GPA: {:x?}", self.guest);
        self.mem = Some(mem);
    }

    /// Maps one region at IOVA = GPA; returns whether the memfd path was used.
    fn map_region(
        &self,
        fd: &File,
        gpa: u64,
        len: u64,
        region: &impl GuestMemoryRegion,
    ) -> io::Result<bool> {
        let rw = b::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE
            | b::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE;
        if let Some(fo) = region.file_offset() {
            match sys::ioas_map_file(fd, self.id, fo.file().as_raw_fd(), fo.start(), len, gpa, rw) {
                Ok(()) => return Ok(true),
                // Not a memfd, or a kernel before 6.13: map the daemon's mapping instead.
                Err(e) => {
                    debug!("IOMMU_IOAS_MAP_FILE of GPA {gpa:#x}: {e}; falling back to IOAS_MAP");
                }
            }
        }
        let va = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|_| io::Error::from_raw_os_error(libc::EFAULT))?;
        sys::ioas_map_va(fd, self.id, va as usize as u64, len, gpa, rw).map(|()| false)
    }
}
