//! DMA memory for a driver in user space: one 2 MiB hugetlb page, locked, whose guest-physical
//! address comes from `/proc/self/pagemap`. Its first half holds the virtqueues (page units),
//! its second half the bounce buffers that `Hal::share` copies requests into (64-byte units).
//! A hugetlb page is physically contiguous and never swapped or migrated under us.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;

use super::alloc::UnitAllocator;

/// Size of the hugetlb page backing all DMA memory.
pub const REGION_SIZE: usize = 2 << 20;
/// Bytes of the region given to virtqueue pages; the rest is for bounce buffers.
const PAGE_AREA: usize = 1 << 20;
/// Page size of the page area (virtio-drivers' `PAGE_SIZE`).
pub const PAGE: usize = 0x1000;
/// Allocation unit of the bounce area.
const BOUNCE_UNIT: usize = 64;

/// The mapped region: where the driver sees it and where the device sees it.
#[derive(Debug)]
pub struct Region {
    vaddr: NonNull<u8>,
    paddr: u64,
}

// SAFETY: the region is plain memory owned by the process for its whole life; all access
// goes through the pool's mutex or through buffers handed to exactly one user.
unsafe impl Send for Region {}

impl Region {
    /// Maps and locks one hugetlb page and looks up its physical address.
    ///
    /// # Errors
    /// No hugepage reserved (`/proc/sys/vm/nr_hugepages`), pagemap unreadable or hiding PFNs
    /// (not root), or a page that is not physically contiguous.
    pub fn map() -> io::Result<Region> {
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                REGION_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE
                    | libc::MAP_ANONYMOUS
                    | libc::MAP_HUGETLB
                    | libc::MAP_POPULATE
                    | libc::MAP_LOCKED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let vaddr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave 0"))?;
        // SAFETY: the mapping is REGION_SIZE bytes, readable and writable; touching it makes
        // sure the page is present before pagemap is read.
        unsafe { vaddr.as_ptr().write_bytes(0, REGION_SIZE) };
        let base = vaddr.as_ptr() as usize;
        let paddr = phys_addr(base)?;
        let last = phys_addr(base + REGION_SIZE - PAGE)?;
        let size = u64::try_from(REGION_SIZE - PAGE).map_err(io::Error::other)?;
        if paddr % (REGION_SIZE as u64) != 0 || paddr.checked_add(size) != Some(last) {
            return Err(io::Error::other(format!(
                "not one contiguous huge page: first {paddr:#x}, last {last:#x}"
            )));
        }
        Ok(Region { vaddr, paddr })
    }

    /// Guest-physical address of the region's first byte.
    pub fn paddr(&self) -> u64 {
        self.paddr
    }

    /// Pointer to byte `offset` of the region (`offset < REGION_SIZE`).
    fn ptr(&self, offset: usize) -> NonNull<u8> {
        debug_assert!(offset < REGION_SIZE);
        // SAFETY: callers pass offsets inside the mapping, so the result stays in bounds.
        unsafe { self.vaddr.add(offset) }
    }
}

/// Physical address of the byte at virtual address `vaddr`, from `/proc/self/pagemap`.
fn phys_addr(vaddr: usize) -> io::Result<u64> {
    let f = File::open("/proc/self/pagemap")?;
    let index = u64::try_from(vaddr / PAGE).map_err(io::Error::other)?;
    let mut entry = [0u8; 8];
    f.read_exact_at(&mut entry, index * 8)?;
    let entry = u64::from_le_bytes(entry);
    let pfn = entry & ((1 << 55) - 1);
    if entry >> 63 == 0 || pfn == 0 {
        return Err(io::Error::other(format!(
            "pagemap entry {entry:#x} for {vaddr:#x}: page absent or PFN hidden (not root?)"
        )));
    }
    let offset = u64::try_from(vaddr % PAGE).map_err(io::Error::other)?;
    Ok(pfn * PAGE as u64 + offset)
}

/// A bounce buffer handed out by [`DmaPool::bounce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounce {
    /// Device-visible address.
    pub paddr: u64,
    /// Driver-visible address.
    pub vaddr: NonNull<u8>,
}

/// The allocators over one [`Region`].
#[derive(Debug)]
pub struct DmaPool {
    region: Region,
    pages: UnitAllocator,
    bounces: UnitAllocator,
}

impl DmaPool {
    /// A pool over `region`, everything free.
    pub fn new(region: Region) -> Self {
        DmaPool {
            region,
            pages: UnitAllocator::new(PAGE_AREA / PAGE),
            bounces: UnitAllocator::new((REGION_SIZE - PAGE_AREA) / BOUNCE_UNIT),
        }
    }

    /// Guest-physical address of the region.
    pub fn region_paddr(&self) -> u64 {
        self.region.paddr()
    }

    /// `count` zeroed contiguous pages: `(paddr, vaddr)`.
    pub fn alloc_pages(&mut self, count: usize) -> Option<(u64, NonNull<u8>)> {
        let first = self.pages.alloc(count, 1)?;
        let offset = first * PAGE;
        let ptr = self.region.ptr(offset);
        // SAFETY: the pages are inside the region and were just reserved for this caller.
        unsafe { ptr.as_ptr().write_bytes(0, count * PAGE) };
        Some((self.region.paddr() + offset as u64, ptr))
    }

    /// Frees pages from [`alloc_pages`](Self::alloc_pages); `false` if they were not allocated.
    pub fn free_pages(&mut self, paddr: u64, count: usize) -> bool {
        self.offset_of(paddr, 0, PAGE_AREA)
            .is_some_and(|off| off % PAGE == 0 && self.pages.free(off / PAGE, count))
    }

    /// A bounce buffer of at least `len` bytes (`len > 0`).
    pub fn bounce(&mut self, len: usize) -> Option<Bounce> {
        let first = self.bounces.alloc(len.div_ceil(BOUNCE_UNIT), 1)?;
        let offset = PAGE_AREA + first * BOUNCE_UNIT;
        Some(Bounce {
            paddr: self.region.paddr() + offset as u64,
            vaddr: self.region.ptr(offset),
        })
    }

    /// The driver-visible address of the bounce buffer at `paddr`, if it lies in the bounce
    /// area with `len` bytes.
    pub fn bounce_vaddr(&self, paddr: u64, len: usize) -> Option<NonNull<u8>> {
        let off = self.offset_of(paddr, PAGE_AREA, REGION_SIZE)?;
        (off.checked_add(len)? <= REGION_SIZE).then(|| self.region.ptr(off))
    }

    /// Releases the bounce buffer of `len` bytes at `paddr`; `false` if it was not handed out.
    pub fn release(&mut self, paddr: u64, len: usize) -> bool {
        self.offset_of(paddr, PAGE_AREA, REGION_SIZE)
            .is_some_and(|off| {
                (off - PAGE_AREA) % BOUNCE_UNIT == 0
                    && self
                        .bounces
                        .free((off - PAGE_AREA) / BOUNCE_UNIT, len.div_ceil(BOUNCE_UNIT))
            })
    }

    /// Offset of `paddr` in the region if it lies in `[lo, hi)`.
    fn offset_of(&self, paddr: u64, lo: usize, hi: usize) -> Option<usize> {
        let off = usize::try_from(paddr.checked_sub(self.region.paddr())?).ok()?;
        (lo..hi).contains(&off).then_some(off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool over ordinary heap memory posing as physical address 0x4000_0000.
    fn pool(backing: &mut Vec<u8>) -> DmaPool {
        backing.resize(REGION_SIZE, 0xaa);
        let vaddr = NonNull::new(backing.as_mut_ptr()).unwrap();
        DmaPool::new(Region {
            vaddr,
            paddr: 0x4000_0000,
        })
    }

    #[test]
    fn pages_are_zeroed_and_addressed() {
        let mut mem = Vec::new();
        let mut p = pool(&mut mem);
        let (pa, va) = p.alloc_pages(2).unwrap();
        assert_eq!(pa, 0x4000_0000);
        assert_eq!(va.as_ptr(), mem.as_mut_ptr());
        assert!(mem[..2 * PAGE].iter().all(|b| *b == 0));
        assert_eq!(mem[2 * PAGE], 0xaa, "only the allocated pages are zeroed");
        let mut p = pool(&mut mem);
        assert_eq!(p.alloc_pages(1).unwrap().0, 0x4000_0000);
        assert_eq!(p.alloc_pages(1).unwrap().0, 0x4000_1000);
        assert!(p.free_pages(0x4000_0000, 1));
        assert!(!p.free_pages(0x4000_0000, 1), "double free refused");
        assert!(!p.free_pages(0x4000_0800, 1), "unaligned refused");
        assert!(!p.free_pages(0x3fff_f000, 1), "below the region refused");
        assert_eq!(p.alloc_pages(PAGE_AREA / PAGE), None);
    }

    #[test]
    fn bounces_live_in_the_upper_half() {
        let mut mem = Vec::new();
        let mut p = pool(&mut mem);
        let a = p.bounce(40).unwrap();
        let b = p.bounce(65).unwrap();
        assert_eq!(a.paddr, 0x4010_0000);
        assert_eq!(b.paddr, 0x4010_0040);
        assert_eq!(p.bounce_vaddr(b.paddr, 65), Some(b.vaddr));
        assert_eq!(
            p.bounce_vaddr(0x4000_0000, 4),
            None,
            "page area is not a bounce"
        );
        assert_eq!(
            p.bounce_vaddr(0x401f_fff0, 32),
            None,
            "runs past the region"
        );
        assert!(p.release(a.paddr, 40));
        assert!(!p.release(a.paddr, 40));
        assert!(!p.release(b.paddr + 1, 64));
        assert_eq!(
            p.bounce(64).unwrap().paddr,
            0x4010_0000,
            "freed unit reused"
        );
        assert_eq!(p.bounce(0), None);
    }
}
