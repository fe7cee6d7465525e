//! A read buffer in one 2 MiB huge page: physically contiguous, so an O_DIRECT read of up to
//! 2 MiB is one DMA segment and one IOMMU mapping in every boot. With ordinary pages the
//! count follows how scattered the kernel happened to place them.

use std::io;

/// One huge page on x86-64.
const HUGE: usize = 2 << 20;
const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// A private anonymous huge-page mapping of [`HUGE`] bytes, unmapped on drop.
pub struct HugeBuffer {
    base: *mut u8,
}

impl HugeBuffer {
    /// Reserves a huge page if none is (the guest boots with none), then maps one.
    pub fn new() -> io::Result<Self> {
        let reserved = std::fs::read_to_string(NR_HUGEPAGES)?;
        if reserved.trim().parse::<u64>().unwrap_or(0) == 0 {
            std::fs::write(NR_HUGEPAGES, "1")?;
        }
        // SAFETY: a fresh private anonymous mapping at an address the kernel picks.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                HUGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(HugeBuffer { base: p.cast() })
    }

    /// The first `len` bytes (at most the page).
    pub fn slice(&mut self, len: usize) -> &mut [u8] {
        // SAFETY: the mapping is `HUGE` bytes, readable and writable, owned by `self` for the
        // borrow's life; nothing else refers to it (the device writes it only during a read
        // that holds this borrow).
        unsafe { std::slice::from_raw_parts_mut(self.base, len.min(HUGE)) }
    }
}

impl Drop for HugeBuffer {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping of `new`; no borrow of it outlives `self`.
        unsafe { libc::munmap(self.base.cast(), HUGE) };
    }
}
