//! A `virtio_drivers::Hal` for a device behind the virtio-iommu: rings (`dma_alloc`) are
//! mapped at [`RING_IOVAS`] plus their guest-physical address (the transport negotiates
//! ACCESS_PLATFORM, so the frontend hands their IOVAs to the backend, as QEMU does behind its
//! vIOMMU), every shared buffer gets a fresh IOVA
//! that our guest driver MAPs for its direction and UNMAPs on `unshare`. Bounce pages come from
//! the test kit's `GuestHal`.
//!
//! `Hal` has no `self`: the driver and the knobs live in one process-wide slot, which one
//! confined test at a time owns ([`ConfinedHal::install`]).

use std::collections::HashMap;
use std::ptr::NonNull;

use parking_lot::{Mutex, MutexGuard};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};
use virtio_iommu_driver::{MapFlags, Mapping, VirtIOIommu};
use virtio_iommu_e2e::VhostUserTransport;
use virtio_iommu_testkit::memory::PAGE_BYTES;
use virtio_iommu_testkit::GuestHal;

/// The guest's IOMMU driver as the confined tests run it.
pub type IommuDriver = VirtIOIommu<GuestHal, VhostUserTransport>;

/// Where rings live in IOVA space: this plus their guest-physical address (far from guest RAM,
/// so an identity access misses).
pub const RING_IOVAS: u64 = 0x20_0000_0000;

/// First IOVA handed out for buffers (far from guest RAM, so an identity access misses).
pub const BUFFER_IOVAS: u64 = 0x40_0000_0000;

/// The state behind the HAL.
pub struct Slot {
    /// The IOMMU driver that MAPs and UNMAPs.
    pub iommu: IommuDriver,
    /// The domain the device's endpoint is attached to.
    pub domain: u32,
    next_iova: u64,
    /// IOVA → (bounce GPA, mapped bytes) of the shared buffers.
    shared: HashMap<u64, (u64, u64)>,
    /// Map device-writable data buffers (longer than the 1-byte status) READ only: a device
    /// write must fault.
    pub writable_read_only: bool,
    /// Hand the next device-writable data buffer this IOVA without mapping it (a driver
    /// reusing an IOVA it unmapped).
    pub stale_iova: Option<u64>,
    /// The IOVA and bounce GPA of the last device-writable data buffer shared.
    pub last_writable: Option<(u64, u64)>,
}

static SLOT: Mutex<Option<Slot>> = Mutex::new(None);
/// Serialises the tests that use the slot.
static OWNER: Mutex<()> = Mutex::new(());

/// The confined HAL.
#[derive(Debug, Clone, Copy)]
pub struct ConfinedHal;

/// Ownership of the slot for one test; the slot is emptied when dropped.
pub struct Installed {
    _owner: MutexGuard<'static, ()>,
}

impl Drop for Installed {
    fn drop(&mut self) {
        *SLOT.lock() = None;
    }
}

impl ConfinedHal {
    /// Puts `iommu` (its endpoint attached to `domain`) behind the HAL for this test.
    pub fn install(iommu: IommuDriver, domain: u32) -> Installed {
        let owner = OWNER.lock();
        *SLOT.lock() = Some(Slot {
            iommu,
            domain,
            next_iova: BUFFER_IOVAS,
            shared: HashMap::new(),
            writable_read_only: false,
            stale_iova: None,
            last_writable: None,
        });
        Installed { _owner: owner }
    }

    /// Runs `f` with the slot.
    pub fn with<R>(f: impl FnOnce(&mut Slot) -> R) -> R {
        f(SLOT.lock().as_mut().expect("ConfinedHal::install first"))
    }
}

fn pages_of(len: usize) -> u64 {
    (len.div_ceil(PAGE_BYTES).max(1) * PAGE_BYTES) as u64
}

// SAFETY: memory comes from `GuestHal`, whose guarantees this HAL passes on unchanged; the
// IOMMU mappings only change which addresses the device uses for it.
unsafe impl Hal for ConfinedHal {
    fn dma_alloc(pages: usize, direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let (gpa, ptr) = GuestHal::dma_alloc(pages, direction);
        if gpa == 0 {
            return (gpa, ptr);
        }
        let iova = RING_IOVAS + gpa;
        Self::with(|s| {
            let m = Mapping {
                domain: s.domain,
                iova,
                paddr: gpa,
                size: (pages * PAGE_BYTES) as u64,
                flags: MapFlags::READ | MapFlags::WRITE,
            };
            s.iommu.map(&m).expect("MAP of a ring");
        });
        (iova, ptr)
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        Self::with(|s| {
            let domain = s.domain;
            let _ = s.iommu.unmap(domain, paddr, (pages * PAGE_BYTES) as u64);
        });
        let paddr = paddr - RING_IOVAS;
        // SAFETY: the caller's guarantees, passed on.
        unsafe { GuestHal::dma_dealloc(paddr, vaddr, pages) }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        // SAFETY: the caller's guarantees, passed on.
        unsafe { GuestHal::mmio_phys_to_virt(paddr, size) }
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        // SAFETY: the caller's guarantees, passed on.
        let gpa = unsafe { GuestHal::share(buffer, direction) };
        let size = pages_of(buffer.len());
        Self::with(|s| {
            let device_writes = direction != BufferDirection::DriverToDevice;
            let data = device_writes && buffer.len() > 1;
            if data {
                if let Some(iova) = s.stale_iova.take() {
                    s.shared.insert(iova, (gpa, 0));
                    s.last_writable = Some((iova, gpa));
                    return iova;
                }
            }
            let iova = s.next_iova;
            s.next_iova += size;
            let flags = if device_writes && !(s.writable_read_only && data) {
                MapFlags::READ | MapFlags::WRITE
            } else {
                MapFlags::READ
            };
            let m = Mapping {
                domain: s.domain,
                iova,
                paddr: gpa,
                size,
                flags,
            };
            s.iommu.map(&m).expect("MAP of a shared buffer");
            s.shared.insert(iova, (gpa, size));
            if data {
                s.last_writable = Some((iova, gpa));
            }
            iova
        })
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let gpa = Self::with(|s| {
            let (gpa, size) = s.shared.remove(&paddr).expect("unshare of a shared IOVA");
            if size > 0 {
                let domain = s.domain;
                s.iommu.unmap(domain, paddr, size).expect("UNMAP");
            }
            gpa
        });
        // SAFETY: the caller's guarantees, passed on.
        unsafe { GuestHal::unshare(gpa, buffer, direction) };
    }
}
