//! virtio-drivers' `Hal` for an identity-mapped kernel: DMA pages come from a bump allocator
//! over a RAM region (with exact-size free lists for reuse), a buffer's device address is its
//! own address (the heap is identity-mapped RAM too, so nothing is bounced), and MMIO is reached
//! at its physical address.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

use crate::boot::IDENTITY_MAPPED_END;

/// Runs of up to this many pages are kept on free lists when freed; longer ones are dropped.
const FREE_LISTS: usize = 16;

struct Pool {
    next: u64,
    end: u64,
    /// `free[n - 1]`: the first of a list of freed `n`-page runs, linked through their first
    /// word (0 ends the list).
    free: [u64; FREE_LISTS],
    pages_in_use: usize,
}

struct PoolCell {
    lock: AtomicBool,
    pool: core::cell::UnsafeCell<Pool>,
}

// SAFETY: the pool is only touched under `lock`.
unsafe impl Sync for PoolCell {}

static POOL: PoolCell = PoolCell {
    lock: AtomicBool::new(false),
    pool: core::cell::UnsafeCell::new(Pool {
        next: 0,
        end: 0,
        free: [0; FREE_LISTS],
        pages_in_use: 0,
    }),
};

fn with_pool<R>(f: impl FnOnce(&mut Pool) -> R) -> R {
    while POOL
        .lock
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    // SAFETY: the lock is held, so this is the only reference.
    let r = f(unsafe { &mut *POOL.pool.get() });
    POOL.lock.store(false, Ordering::Release);
    r
}

/// Makes `[start, end)` (page-aligned RAM, used for nothing else) the DMA pool.
pub fn init_pool(start: u64, end: u64) {
    with_pool(|p| {
        p.next = start;
        p.end = end.min(IDENTITY_MAPPED_END);
    });
}

/// `count` zeroed, physically contiguous pages: `(paddr, pointer)`, identical addresses.
pub fn alloc_pages(count: usize) -> Option<(u64, NonNull<u8>)> {
    let bytes = u64::try_from(count).ok()?.checked_mul(PAGE_SIZE as u64)?;
    let paddr = with_pool(|p| {
        let reused = match p.free.get_mut(count.wrapping_sub(1)) {
            Some(head) if *head != 0 => {
                let run = *head;
                // SAFETY: `run` is a freed run of `count` pages; its first word is the link.
                *head = unsafe { (run as *const u64).read() };
                Some(run)
            }
            _ => None,
        };
        let paddr = match reused {
            Some(run) => run,
            None => {
                let end = p.next.checked_add(bytes)?;
                if bytes == 0 || end > p.end {
                    return None;
                }
                core::mem::replace(&mut p.next, end)
            }
        };
        p.pages_in_use += count;
        Some(paddr)
    })?;
    let ptr = NonNull::new(paddr as *mut u8)?;
    // SAFETY: the run is `bytes` bytes of identity-mapped pool RAM owned by the caller now.
    unsafe { ptr.as_ptr().write_bytes(0, count * PAGE_SIZE) };
    Some((paddr, ptr))
}

/// Returns pages from [`alloc_pages`].
///
/// # Safety
/// `paddr` and `count` must be an allocation from [`alloc_pages`] that nobody (the device
/// included) uses any more.
pub unsafe fn free_pages(paddr: u64, count: usize) {
    with_pool(|p| {
        p.pages_in_use = p.pages_in_use.saturating_sub(count);
        if let Some(head) = p.free.get_mut(count.wrapping_sub(1)) {
            // SAFETY: the run is ours again (caller's contract); its first word is the link.
            unsafe { (paddr as *mut u64).write(*head) };
            *head = paddr;
        }
    });
}

/// Pages handed out and not yet freed.
pub fn pages_in_use() -> usize {
    with_pool(|p| p.pages_in_use)
}

/// The kernel's `Hal`.
#[derive(Debug)]
pub struct KernelHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned pages of the pool, owned exclusively until
// `dma_dealloc`, at addresses that are both virtual and physical (identity map); `share`
// returns the buffer's own address, valid for the device because every kernel address below
// 4 GiB is identity-mapped RAM or MMIO; `mmio_phys_to_virt` returns the identity address,
// which the boot page tables map (uncached above 2 GiB).
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        // virtio-drivers reads a zero physical address as allocation failure.
        alloc_pages(pages).unwrap_or((0, NonNull::dangling()))
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: virtio-drivers frees what `dma_alloc` gave it, once, when done with it.
        unsafe { free_pages(paddr, pages) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        let end = paddr.saturating_add(size as u64);
        if end > IDENTITY_MAPPED_END {
            crate::fatal(format_args!(
                "MMIO {paddr:#x}+{size:#x} is above the identity map"
            ));
        }
        NonNull::new(paddr as *mut u8)
            .unwrap_or_else(|| crate::fatal(format_args!("MMIO at physical address 0")))
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        // Identity map: the buffer's address is what the device uses.
        buffer.cast::<u8>().as_ptr() as u64
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {
        // Nothing was bounced; x86 DMA is cache coherent.
    }
}
