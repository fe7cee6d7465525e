//! Guest memory for tables: whole pages from [`Hal::dma_alloc`], read and written as
//! little-endian 64-bit words, freed on drop.

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{fence, Ordering};

use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE};

use super::error::SvaError;

/// 64-bit words per page.
pub(crate) const WORDS_PER_PAGE: usize = PAGE_SIZE / 8;

/// Physically contiguous pages the device reads tables from.
///
/// Every access is a volatile, bounds-checked 64-bit access: the device reads these words
/// concurrently, so the compiler must neither elide nor tear them.
pub(crate) struct DmaPages<H: Hal> {
    paddr: u64,
    vaddr: NonNull<u8>,
    pages: usize,
    _hal: PhantomData<H>,
}

// SAFETY: the pages are exclusively owned by this value (the `Hal` contract), so moving it to
// another thread moves the only handle to them.
unsafe impl<H: Hal> Send for DmaPages<H> {}

impl<H: Hal> DmaPages<H> {
    /// Allocates `pages` zeroed, contiguous pages.
    pub(crate) fn new(pages: usize) -> Result<Self, SvaError> {
        if pages == 0 {
            return Err(SvaError::NoMem);
        }
        let (paddr, vaddr) = H::dma_alloc(pages, BufferDirection::DriverToDevice);
        // `virtio-drivers` reads physical address 0 as an allocation failure too.
        if paddr == 0 {
            return Err(SvaError::NoMem);
        }
        let mut dma = DmaPages {
            paddr,
            vaddr,
            pages,
            _hal: PhantomData,
        };
        // Table addresses must be page-aligned; the `Hal` promises it for `vaddr` only.
        if paddr % PAGE_SIZE as u64 != 0 || vaddr.as_ptr().align_offset(PAGE_SIZE) != 0 {
            log::warn!("Hal returned unaligned DMA pages at {paddr:#x}");
            return Err(SvaError::NoMem); // dropping `dma` frees them
        }
        // The `Hal` promises zeroed pages; a table page with stale bytes would be a security
        // hole, so make sure of it (a few KiB per table page).
        for i in 0..dma.words() {
            dma.write(i, 0);
        }
        Ok(dma)
    }

    /// The address the device sees.
    pub(crate) fn paddr(&self) -> u64 {
        self.paddr
    }

    /// Number of 64-bit words.
    pub(crate) fn words(&self) -> usize {
        self.pages.saturating_mul(WORDS_PER_PAGE)
    }

    /// Word `index`, or 0 past the end.
    pub(crate) fn read(&self, index: usize) -> u64 {
        if index >= self.words() {
            return 0;
        }
        // SAFETY: `index` is inside the allocation, which is page-aligned (so 8-byte aligned)
        // and live until `drop`.
        u64::from_le(unsafe { self.vaddr.cast::<u64>().as_ptr().add(index).read_volatile() })
    }

    /// Writes word `index`; ignored past the end (callers index within their own layout).
    pub(crate) fn write(&mut self, index: usize, value: u64) {
        if index >= self.words() {
            log::error!(
                "table word {index} outside its {}-page allocation",
                self.pages
            );
            return;
        }
        // SAFETY: as in `read`; the memory is ours alone apart from the device reading it.
        unsafe {
            self.vaddr
                .cast::<u64>()
                .as_ptr()
                .add(index)
                .write_volatile(value.to_le());
        }
    }
}

impl<H: Hal> Drop for DmaPages<H> {
    fn drop(&mut self) {
        // SAFETY: `paddr`, `vaddr` and `pages` are what `dma_alloc` returned, freed only here.
        let err = unsafe { H::dma_dealloc(self.paddr, self.vaddr, self.pages) };
        if err != 0 {
            log::warn!(
                "dma_dealloc of table pages at {:#x} failed: {err}",
                self.paddr
            );
        }
    }
}

/// Orders table writes before the writes that publish them to the device.
pub(crate) fn publish() {
    fence(Ordering::SeqCst);
}
