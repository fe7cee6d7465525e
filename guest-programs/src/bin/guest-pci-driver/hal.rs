//! virtio-drivers' `Hal` for a user-space driver: DMA from the hugetlb [`DmaPool`], buffers
//! shared through bounce buffers in it, and BARs reached through their sysfs mappings.
//!
//! `Hal` has associated functions only, so the pool and the BAR mappings are process globals,
//! set up once by [`install_pool`] and [`register_bar`] before any transport exists.

use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard};

use log::error;
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

use super::dma::{DmaPool, Region};

static POOL: Mutex<Option<DmaPool>> = Mutex::new(None);
static BARS: Mutex<Vec<BarMapping>> = Mutex::new(Vec::new());

/// A BAR mapped into this process.
#[derive(Debug, Clone, Copy)]
struct BarMapping {
    paddr: u64,
    len: u64,
    vaddr: NonNull<u8>,
}

// SAFETY: the mapping lives for the rest of the process; the pointer is only an address here.
unsafe impl Send for BarMapping {}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Ends the program: the `Hal` has no way to return an error for these.
fn fatal(what: &str) -> ! {
    error!("{what}");
    println!("GUEST-PCI: FAIL hal: {what}");
    println!("GUEST-PCI-RESULT: aborted");
    std::process::exit(2)
}

/// Makes `region` the DMA memory of [`UserHal`]; returns its guest-physical address.
pub fn install_pool(region: Region) -> u64 {
    let pool = DmaPool::new(region);
    let paddr = pool.region_paddr();
    *lock(&POOL) = Some(pool);
    paddr
}

/// Runs `f` on the pool (which must be installed).
fn with_pool<R>(f: impl FnOnce(&mut DmaPool) -> R) -> R {
    let mut g = lock(&POOL);
    match g.as_mut() {
        Some(p) => f(p),
        None => fatal("DMA pool used before install_pool"),
    }
}

/// Allocates `count` zeroed pages for the caller's own use (not through virtio-drivers):
/// `(paddr, vaddr)`.
pub fn alloc_pages(count: usize) -> Option<(u64, NonNull<u8>)> {
    with_pool(|p| p.alloc_pages(count))
}

/// Records that the BAR at physical `paddr` (`len` bytes) is mapped at `vaddr`.
pub fn register_bar(paddr: u64, len: u64, vaddr: NonNull<u8>) {
    lock(&BARS).push(BarMapping { paddr, len, vaddr });
}

/// The `Hal` of the user-space driver.
#[derive(Debug)]
pub struct UserHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned, exclusively owned pages of the locked
// hugetlb region, with the physical address pagemap gave; `mmio_phys_to_virt` returns
// pointers into live MAP_SHARED mappings of the BAR; `share` returns the physical address of
// an exclusive bounce buffer holding a copy of the buffer, which `unshare` copies back.
unsafe impl Hal for UserHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        // virtio-drivers reads a zero physical address as allocation failure.
        with_pool(|p| p.alloc_pages(pages)).unwrap_or((0, NonNull::dangling()))
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        if with_pool(|p| p.free_pages(paddr, pages)) {
            0
        } else {
            -1
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        let bars = lock(&BARS);
        let Ok(size) = u64::try_from(size) else {
            fatal("MMIO size does not fit u64");
        };
        for b in bars.iter() {
            let inside = paddr >= b.paddr
                && paddr
                    .checked_add(size)
                    .is_some_and(|end| end <= b.paddr.saturating_add(b.len));
            if inside {
                let Ok(off) = usize::try_from(paddr - b.paddr) else {
                    break;
                };
                // SAFETY: `off + size` lies inside the mapping of this BAR.
                return unsafe { b.vaddr.add(off) };
            }
        }
        fatal(&format!("no mapped BAR holds {paddr:#x}+{size:#x}"))
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        let len = buffer.len();
        let Some(b) = with_pool(|p| p.bounce(len)) else {
            fatal(&format!("no bounce buffer for {len} bytes"));
        };
        // Copy in every direction: a device-writable buffer then starts as the driver's bytes,
        // so a short device write leaves the rest as the driver left it.
        // SAFETY: the caller guarantees `buffer` is valid for `len` bytes; the bounce buffer is
        // `len` bytes of the region reserved for this share and does not overlap the heap.
        unsafe {
            std::ptr::copy_nonoverlapping(buffer.cast::<u8>().as_ptr(), b.vaddr.as_ptr(), len);
        }
        b.paddr
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let len = buffer.len();
        let Some(src) = with_pool(|p| p.bounce_vaddr(paddr, len)) else {
            fatal(&format!("unshare of {paddr:#x}, which is no bounce buffer"));
        };
        if direction != BufferDirection::DriverToDevice {
            // SAFETY: `src` is the `len`-byte bounce buffer `share` returned for this buffer;
            // the caller guarantees `buffer` is valid for `len` bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr(), buffer.cast::<u8>().as_ptr(), len);
            }
        }
        if !with_pool(|p| p.release(paddr, len)) {
            fatal(&format!("bounce buffer {paddr:#x} released twice"));
        }
    }
}
