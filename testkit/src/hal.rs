//! `virtio_drivers::Hal` over the process-wide guest RAM.
//!
//! `Hal` methods have no `self`, so the memory must be reachable globally. The choice here is
//! one process-wide guest RAM ([`GuestMemory::global`]) shared by every VM of the test process:
//! unlike a thread-local "current VM", it keeps working when a driver runs in another thread
//! (e.g. under a watchdog thread), and parallel tests stay apart because
//! each allocates its own pages. Every backend is given the whole memfd.
//!
//! The driver's own buffers live on the test's heap, outside guest RAM, so `share` bounces them
//! through freshly allocated guest pages: copied in for device-readable buffers, copied back on
//! `unshare` for device-writable ones.

use std::ptr::NonNull;

use virtio_drivers::{BufferDirection, Hal, PhysAddr};

use crate::memory::{GuestMemory, PAGE_BYTES};

/// The harness HAL: DMA and bounce buffers in [`GuestMemory::global`], paddr = GPA.
#[derive(Debug, Clone, Copy)]
pub struct GuestHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned, exclusively allocated pages of the global
// mapping, which lives for the rest of the process; `share` hands the device a private bounce
// copy, so the driver's buffer is never aliased.
unsafe impl Hal for GuestHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let mem = GuestMemory::global();
        let alloc = mem.alloc_pages(pages).and_then(|gpa| {
            let ptr = mem.host_ptr(gpa, pages.saturating_mul(PAGE_BYTES))?;
            Ok((gpa, ptr))
        });
        match alloc {
            Ok(v) => v,
            Err(e) => {
                log::error!("dma_alloc({pages}): {e}");
                // virtio-drivers reports a paddr of 0 as DmaError.
                (0, NonNull::dangling())
            }
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        match GuestMemory::global().free_pages(paddr, pages) {
            Ok(()) => 0,
            Err(e) => {
                log::error!("dma_dealloc({paddr:#x}, {pages}): {e}");
                -1
            }
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        // Only the PCI transport calls this; the vhost-user transport has no MMIO.
        match GuestMemory::global().host_ptr(paddr, size) {
            Ok(p) => p,
            Err(e) => panic!("mmio_phys_to_virt({paddr:#x}, {size}): {e}"),
        }
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let mem = GuestMemory::global();
        let len = buffer.len();
        let gpa = match mem.alloc_bytes(len) {
            Ok(gpa) => gpa,
            // `share` cannot fail in the trait; running out of test RAM is a harness bug.
            Err(e) => panic!("share of {len} bytes: {e}"),
        };
        // Copied in for every direction (as Linux's swiotlb does), so the bytes a device does
        // not write come back unchanged on `unshare`, as with real DMA.
        let _ = direction;
        // SAFETY: the caller guarantees `buffer` is valid and unaliased for this call.
        let src = unsafe { buffer.as_ref() };
        if let Err(e) = mem.write(gpa, src) {
            panic!("share: copy into {gpa:#x}: {e}");
        }
        gpa
    }

    unsafe fn unshare(paddr: PhysAddr, mut buffer: NonNull<[u8]>, direction: BufferDirection) {
        let mem = GuestMemory::global();
        if direction != BufferDirection::DriverToDevice {
            // SAFETY: the caller guarantees `buffer` is valid and unaliased for this call.
            let dst = unsafe { buffer.as_mut() };
            if let Err(e) = mem.read(paddr, dst) {
                panic!("unshare: copy from {paddr:#x}: {e}");
            }
        }
        let pages = buffer.len().div_ceil(PAGE_BYTES).max(1);
        if let Err(e) = mem.free_pages(paddr, pages) {
            panic!("unshare: free {paddr:#x}: {e}");
        }
    }
}
