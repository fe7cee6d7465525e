//! virtio-drivers' `Hal` for a device confined by the virtio-iommu (the blk checks). Rings
//! (`dma_alloc`) are mapped at their identity IOVA (IOVA = physical address): QEMU's generic
//! vhost-user device knows of no IOMMU and hands the backend the rings' guest-physical
//! addresses, which the confined backend then translates like any other IOVA. Every shared
//! buffer (`share`) gets fresh IOVAs that the IOMMU driver MAPs with the buffer's direction
//! and UNMAPs on `unshare`. Nothing is bounced: the pages holding the buffer are mapped.
//!
//! `Hal` has no `self`, so the driver and the knobs of the checks live in one kernel-wide slot
//! ([`ConfinedHal::install`], [`ConfinedHal::with`]).

use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};
use virtio_iommu_driver::{MapFlags, Mapping};

use crate::checks::Iommu;
use crate::hal::{self, KernelHal};

/// First IOVA handed out for buffers: far above the VM's RAM, so an access that skips the
/// translation misses.
pub const BUFFER_IOVAS: u64 = 0x40_0000_0000;
/// Last IOVA handed out (the daemon's input range is 39 bits).
const BUFFER_IOVAS_LAST: u64 = 0x7f_ffff_ffff;
const PAGE: u64 = PAGE_SIZE as u64;

/// One buffer the device holds.
#[derive(Debug, Clone, Copy)]
struct Shared {
    /// The address handed to the device.
    addr: u64,
    /// The mapped IOVA range (page-aligned start, bytes); 0 bytes: handed out unmapped.
    iova: u64,
    size: u64,
}

/// The state behind the HAL.
#[derive(Debug)]
pub struct Slot {
    /// The IOMMU driver that MAPs and UNMAPs.
    pub iommu: Iommu,
    /// The domain the device's endpoint is attached to.
    pub domain: u32,
    next_iova: u64,
    shared: Vec<Shared>,
    /// Map device-writable data buffers (longer than the 1-byte status) READ only: the
    /// device's write must fault.
    pub writable_read_only: bool,
    /// Hand the next device-writable data buffer this address without mapping it (a driver
    /// reusing an IOVA it unmapped).
    pub stale_iova: Option<u64>,
    /// The device address and physical address of the last device-writable data buffer.
    pub last_writable: Option<(u64, u64)>,
}

impl Slot {
    /// Buffers the device holds (shared and not yet unshared).
    pub fn shared_count(&self) -> usize {
        self.shared.len()
    }
}

struct SlotCell {
    held: AtomicBool,
    slot: UnsafeCell<Option<Slot>>,
}

// SAFETY: the slot is only touched while `held` is set by the toucher.
unsafe impl Sync for SlotCell {}

static SLOT: SlotCell = SlotCell {
    held: AtomicBool::new(false),
    slot: UnsafeCell::new(None),
};

/// Runs `f` with the slot's content. The kernel has one CPU, so a held slot means a nested
/// use: that is a bug, not contention, and ends the run.
fn with_slot<R>(f: impl FnOnce(&mut Option<Slot>) -> R) -> R {
    if SLOT.held.swap(true, Ordering::Acquire) {
        crate::fatal(format_args!("the confined HAL's slot used re-entrantly"));
    }
    // SAFETY: `held` was clear and is set now, so this is the only reference.
    let r = f(unsafe { &mut *SLOT.slot.get() });
    SLOT.held.store(false, Ordering::Release);
    r
}

/// The confined HAL.
#[derive(Debug, Clone, Copy)]
pub struct ConfinedHal;

impl ConfinedHal {
    /// Puts `iommu` (the device's endpoint attached to `domain`) behind the HAL.
    pub fn install(iommu: Iommu, domain: u32) {
        with_slot(|s| {
            *s = Some(Slot {
                iommu,
                domain,
                next_iova: BUFFER_IOVAS,
                shared: Vec::new(),
                writable_read_only: false,
                stale_iova: None,
                last_writable: None,
            });
        });
    }

    /// Takes the slot back out (after the device driver is gone).
    pub fn uninstall() -> Option<Slot> {
        with_slot(Option::take)
    }

    /// Runs `f` with the slot; ends the run if nothing is installed.
    pub fn with<R>(f: impl FnOnce(&mut Slot) -> R) -> R {
        with_slot(|s| match s {
            Some(s) => f(s),
            None => crate::fatal(format_args!("the confined HAL used before install")),
        })
    }
}

/// The page-aligned range holding `len` bytes at `paddr` (at least one page).
fn pages_around(paddr: u64, len: usize) -> (u64, u64, u64) {
    let offset = paddr % PAGE;
    let bytes = offset.saturating_add(len as u64).max(1);
    (
        paddr - offset,
        offset,
        bytes.div_ceil(PAGE).saturating_mul(PAGE),
    )
}

fn map(s: &mut Slot, iova: u64, paddr: u64, size: u64, flags: MapFlags) {
    let m = Mapping {
        domain: s.domain,
        iova,
        paddr,
        size,
        flags,
    };
    if let Err(e) = s.iommu.map(&m) {
        crate::fatal(format_args!("MAP {m:?}: {e}"));
    }
}

// SAFETY: memory comes from the kernel's identity-mapped DMA pool and buffers stay where the
// caller put them, so `KernelHal`'s guarantees hold unchanged; the IOMMU mappings only change
// which addresses the device uses for them, and each covers exactly the pages the memory
// occupies.
unsafe impl Hal for ConfinedHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let Some((paddr, ptr)) = hal::alloc_pages(pages) else {
            return (0, NonNull::dangling());
        };
        ConfinedHal::with(|s| {
            let size = (pages as u64).saturating_mul(PAGE);
            map(s, paddr, paddr, size, MapFlags::READ | MapFlags::WRITE);
        });
        (paddr, ptr)
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        ConfinedHal::with(|s| {
            let domain = s.domain;
            let size = (pages as u64).saturating_mul(PAGE);
            if let Err(e) = s.iommu.unmap(domain, paddr, size) {
                crate::fatal(format_args!("UNMAP of a ring at {paddr:#x}: {e}"));
            }
        });
        // SAFETY: virtio-drivers frees what `dma_alloc` gave it, once; the device can no
        // longer reach it (unmapped above).
        unsafe { hal::free_pages(paddr, pages) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        // SAFETY: the caller's guarantees, passed on.
        unsafe { KernelHal::mmio_phys_to_virt(paddr, size) }
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let paddr = buffer.cast::<u8>().as_ptr() as u64;
        let len = buffer.len();
        let (base, offset, size) = pages_around(paddr, len);
        ConfinedHal::with(|s| {
            let device_writes = direction != BufferDirection::DriverToDevice;
            let data = device_writes && len > 1;
            if data {
                if let Some(addr) = s.stale_iova.take() {
                    s.shared.push(Shared {
                        addr,
                        iova: addr,
                        size: 0,
                    });
                    s.last_writable = Some((addr, paddr));
                    return addr;
                }
            }
            let iova = s.next_iova;
            match iova.checked_add(size) {
                Some(end) if end - 1 <= BUFFER_IOVAS_LAST => s.next_iova = end,
                _ => crate::fatal(format_args!("buffer IOVAs used up at {iova:#x}")),
            }
            let flags = if device_writes && !(s.writable_read_only && data) {
                MapFlags::READ | MapFlags::WRITE
            } else {
                MapFlags::READ
            };
            map(s, iova, base, size, flags);
            let addr = iova + offset;
            s.shared.push(Shared { addr, iova, size });
            if data {
                s.last_writable = Some((addr, paddr));
            }
            addr
        })
    }

    unsafe fn unshare(paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {
        ConfinedHal::with(|s| {
            let Some(i) = s.shared.iter().position(|b| b.addr == paddr) else {
                crate::fatal(format_args!("unshare of {paddr:#x}, which was not shared"));
            };
            let b = s.shared.swap_remove(i);
            if b.size > 0 {
                let domain = s.domain;
                if let Err(e) = s.iommu.unmap(domain, b.iova, b.size) {
                    crate::fatal(format_args!("UNMAP {:#x}+{:#x}: {e}", b.iova, b.size));
                }
            }
        });
        // Nothing was bounced; x86 DMA is cache coherent.
    }
}
