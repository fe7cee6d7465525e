//! Guest RAM: one memfd mapped shared into this process, which a vhost-user frontend hands to
//! backends by SET_MEM_TABLE.
//!
//! The tests play the guest, so it owns a page allocator over guest-physical addresses (GPAs).
//! Guest RAM is shared with another process that writes it concurrently, so this module never
//! hands out Rust references into it: bytes go in and out by copy, ring indices through atomics.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::error::{Error, Result};
use crate::ring::RingMemory;

/// Size of a guest page, the allocation unit.
pub const PAGE_SIZE: u64 = 0x1000;
/// [`PAGE_SIZE`] as a byte count.
pub const PAGE_BYTES: usize = 0x1000;
/// Where the process-wide guest RAM starts. Not zero: a GPA of 0 means "no memory" to
/// virtio-drivers, and leaving low addresses unmapped lets tests use them as "outside RAM".
pub const GLOBAL_BASE: u64 = 0x4000_0000;
/// Size of the process-wide guest RAM. memfd pages are only allocated when touched, so this
/// costs address space, not memory.
pub const GLOBAL_SIZE: u64 = 512 << 20;

/// Guest RAM backed by a memfd, with a GPA page allocator.
#[derive(Debug)]
pub struct GuestMemory {
    file: File,
    base: u64,
    size: u64,
    host: NonNull<u8>,
    /// One bit per page, set when allocated.
    used: Mutex<Vec<u64>>,
}

// SAFETY: `host` points to a shared mapping that lives as long as `self`; every access goes
// through raw copies or atomics, and the allocator state is behind a mutex.
unsafe impl Send for GuestMemory {}
// SAFETY: as for `Send`; no method hands out references into the mapping.
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    /// Creates `size` bytes of zeroed guest RAM at guest-physical address `base`. Both must be
    /// page-aligned, `size` non-zero.
    pub fn new(base: u64, size: u64) -> Result<Self> {
        if base % PAGE_SIZE != 0 || size % PAGE_SIZE != 0 || size == 0 {
            return Err(Error::Usage(format!(
                "guest RAM {base:#x}+{size:#x} is not page-aligned"
            )));
        }
        if base.checked_add(size).is_none() {
            return Err(Error::OutOfBounds {
                gpa: base,
                len: size,
            });
        }
        let len = usize::try_from(size).map_err(|_| Error::OutOfBounds {
            gpa: base,
            len: size,
        })?;
        let pages = len / PAGE_BYTES;

        // SAFETY: the name is a NUL-terminated string; the flags are valid.
        let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size)?;
        // SAFETY: mapping a fresh shared file mapping at a kernel-chosen address; the result is
        // checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().into());
        }
        let host = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| Error::Protocol("mmap returned NULL".into()))?;
        Ok(Self {
            file,
            base,
            size,
            host,
            used: Mutex::new(vec![0; pages.div_ceil(64)]),
        })
    }

    /// The process-wide guest RAM ([`GLOBAL_BASE`], [`GLOBAL_SIZE`]), created on first use.
    ///
    /// [`crate::hal::GuestHal`] can only reach memory through a global, so every VM whose driver
    /// runs on virtio-drivers uses this one. VMs (and test threads) share it safely: each
    /// allocates its own pages, and each backend gets the whole memfd but only touches the GPAs
    /// its rings point to.
    ///
    /// # Panics
    ///
    /// If the memfd cannot be created or mapped (the harness cannot work at all then).
    pub fn global() -> Arc<Self> {
        static GLOBAL: OnceLock<Arc<GuestMemory>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| match Self::new(GLOBAL_BASE, GLOBAL_SIZE) {
                Ok(m) => Arc::new(m),
                Err(e) => panic!("cannot create the global guest RAM: {e}"),
            })
            .clone()
    }

    /// First guest-physical address of RAM.
    #[must_use]
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Size of RAM in bytes.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether `[gpa, gpa + len)` lies inside RAM (an empty range must still start inside or at
    /// the end).
    #[must_use]
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        self.offset_of(gpa, len).is_some()
    }

    /// The memfd behind the RAM (offset 0 is [`Self::base`]).
    #[must_use]
    pub fn file(&self) -> &File {
        &self.file
    }

    /// This process's address of the first byte of RAM.
    #[must_use]
    pub fn host_base(&self) -> u64 {
        self.host.as_ptr() as u64
    }

    /// Allocates `pages` contiguous zeroed pages and returns the GPA of the first.
    pub fn alloc_pages(&self, pages: usize) -> Result<u64> {
        if pages == 0 {
            return Err(Error::Usage("allocation of zero pages".into()));
        }
        let mut used = self.bitmap();
        let total = self.page_count();
        let mut run = 0;
        let mut page = 0;
        while page < total {
            if page % 64 == 0 && used[page / 64] == u64::MAX {
                // A full word: skip 64 pages at once.
                run = 0;
                page += 64;
                continue;
            }
            if bit(&used, page) {
                run = 0;
                page += 1;
                continue;
            }
            run += 1;
            if run == pages {
                let first = page + 1 - pages;
                set_bits(&mut used, first, pages, true);
                drop(used);
                let gpa = self.page_gpa(first);
                self.fill(gpa, pages * PAGE_BYTES, 0)?;
                return Ok(gpa);
            }
            page += 1;
        }
        Err(Error::OutOfMemory { pages })
    }

    /// Allocates zeroed pages covering at least `len` bytes (at least one page).
    pub fn alloc_bytes(&self, len: usize) -> Result<u64> {
        self.alloc_pages(len.div_ceil(PAGE_BYTES).max(1))
    }

    /// Allocates (and zeroes) the `pages` pages starting at the page-aligned `gpa`, for tests
    /// that need a buffer at a chosen address. Fails if any of them is already in use.
    pub fn alloc_at(&self, gpa: u64, pages: usize) -> Result<()> {
        let first = self.page_range(gpa, pages)?;
        let mut used = self.bitmap();
        if (first..first + pages).any(|p| bit(&used, p)) {
            return Err(Error::Usage(format!(
                "pages at {gpa:#x} are already allocated"
            )));
        }
        set_bits(&mut used, first, pages, true);
        drop(used);
        self.fill(gpa, pages * PAGE_BYTES, 0)
    }

    /// Frees `pages` pages starting at `gpa`, all of which must be allocated.
    pub fn free_pages(&self, gpa: u64, pages: usize) -> Result<()> {
        let first = self.page_range(gpa, pages)?;
        let mut used = self.bitmap();
        if !(first..first + pages).all(|p| bit(&used, p)) {
            return Err(Error::Usage(format!("double free of pages at {gpa:#x}")));
        }
        set_bits(&mut used, first, pages, false);
        Ok(())
    }

    /// Number of pages currently free.
    #[must_use]
    pub fn free_page_count(&self) -> usize {
        let used = self.bitmap();
        let allocated: usize = used.iter().map(|w| w.count_ones() as usize).sum();
        self.page_count() - allocated
    }

    /// Host pointer to `[gpa, gpa + len)`, bounds-checked.
    pub fn host_ptr(&self, gpa: u64, len: usize) -> Result<NonNull<u8>> {
        let off = self.offset_of(gpa, len as u64).ok_or(Error::OutOfBounds {
            gpa,
            len: len as u64,
        })?;
        // SAFETY: `off + len <= size`, so the result stays inside the mapping.
        Ok(unsafe { self.host.add(off) })
    }

    /// The GPA of a host pointer into this RAM, if it points into it.
    #[must_use]
    pub fn gpa_of(&self, ptr: *const u8) -> Option<u64> {
        let off = (ptr as usize).checked_sub(self.host.as_ptr() as usize)?;
        let off = u64::try_from(off).ok()?;
        (off < self.size).then(|| self.base + off)
    }

    /// Copies guest RAM at `gpa` into `buf`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        let src = self.host_ptr(gpa, buf.len())?;
        // SAFETY: `src` is valid for `buf.len()` bytes (checked above) and cannot overlap `buf`,
        // which is process memory outside the mapping.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Reads `len` bytes at `gpa` into a new vector.
    pub fn read_vec(&self, gpa: u64, len: usize) -> Result<Vec<u8>> {
        // Checked before allocating, so a bogus length cannot allocate unboundedly.
        self.host_ptr(gpa, len)?;
        let mut v = vec![0; len];
        self.read(gpa, &mut v)?;
        Ok(v)
    }

    /// Copies `data` into guest RAM at `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<()> {
        let dst = self.host_ptr(gpa, data.len())?;
        // SAFETY: `dst` is valid for `data.len()` bytes and does not overlap `data`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst.as_ptr(), data.len()) };
        Ok(())
    }

    /// Sets `len` bytes at `gpa` to `byte`.
    pub fn fill(&self, gpa: u64, len: usize, byte: u8) -> Result<()> {
        let dst = self.host_ptr(gpa, len)?;
        // SAFETY: `dst` is valid for `len` bytes.
        unsafe { std::ptr::write_bytes(dst.as_ptr(), byte, len) };
        Ok(())
    }

    /// Reads a plain-data value at `gpa` (any alignment).
    pub fn read_obj<T: FromBytes + IntoBytes>(&self, gpa: u64) -> Result<T> {
        let mut v = T::new_zeroed();
        self.read(gpa, v.as_mut_bytes())?;
        Ok(v)
    }

    /// Writes a plain-data value at `gpa` (any alignment).
    pub fn write_obj<T: IntoBytes + Immutable>(&self, gpa: u64, v: &T) -> Result<()> {
        self.write(gpa, v.as_bytes())
    }

    /// Atomically loads the little-endian `u16` at the 2-aligned `gpa` (ring indices and flags,
    /// which the backend updates concurrently), with acquire ordering.
    pub fn load_u16(&self, gpa: u64) -> Result<u16> {
        Ok(u16::from_le(self.atomic_u16(gpa)?.load(Ordering::Acquire)))
    }

    /// Atomically stores a little-endian `u16` at the 2-aligned `gpa`, with release ordering, so
    /// everything written before (descriptors, ring entries) is visible first.
    pub fn store_u16(&self, gpa: u64, v: u16) -> Result<()> {
        self.atomic_u16(gpa)?.store(v.to_le(), Ordering::Release);
        Ok(())
    }

    fn atomic_u16(&self, gpa: u64) -> Result<&AtomicU16> {
        if gpa % 2 != 0 {
            return Err(Error::Usage(format!("unaligned u16 at {gpa:#x}")));
        }
        let ptr = self.host_ptr(gpa, 2)?;
        // SAFETY: the pointer is in bounds and 2-aligned (the mapping is page-aligned and `gpa`
        // is even); the mapping outlives the returned reference, and all accesses to ring
        // indices are atomic (the backend uses atomics too).
        Ok(unsafe { AtomicU16::from_ptr(ptr.as_ptr().cast::<u16>()) })
    }

    fn bitmap(&self) -> MutexGuard<'_, Vec<u64>> {
        // A panic while holding the lock leaves the bitmap consistent (each update is one
        // `set_bits` call), so a poisoned lock is still usable.
        self.used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn page_count(&self) -> usize {
        // `size` fitted in usize when the memory was created.
        usize::try_from(self.size / PAGE_SIZE).unwrap_or(0)
    }

    fn page_gpa(&self, page: usize) -> u64 {
        self.base + page as u64 * PAGE_SIZE
    }

    /// First page index of `pages` pages at `gpa`, checked for alignment and bounds.
    fn page_range(&self, gpa: u64, pages: usize) -> Result<usize> {
        let len = (pages as u64).saturating_mul(PAGE_SIZE);
        if gpa % PAGE_SIZE != 0 || pages == 0 {
            return Err(Error::Usage(format!("bad page range {gpa:#x} x {pages}")));
        }
        let off = self
            .offset_of(gpa, len)
            .ok_or(Error::OutOfBounds { gpa, len })?;
        Ok(off / PAGE_BYTES)
    }

    fn offset_of(&self, gpa: u64, len: u64) -> Option<usize> {
        let off = gpa.checked_sub(self.base)?;
        let end = off.checked_add(len)?;
        if end > self.size {
            return None;
        }
        usize::try_from(off).ok()
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `new`; no references into it exist.
        let rc = unsafe {
            libc::munmap(
                self.host.as_ptr().cast(),
                usize::try_from(self.size).unwrap_or(0),
            )
        };
        if rc != 0 {
            log::warn!(
                "munmap of guest RAM failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

impl RingMemory for GuestMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        GuestMemory::read(self, gpa, buf)
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<()> {
        GuestMemory::write(self, gpa, data)
    }

    fn load_u16(&self, gpa: u64) -> Result<u16> {
        GuestMemory::load_u16(self, gpa)
    }

    fn store_u16(&self, gpa: u64, v: u16) -> Result<()> {
        GuestMemory::store_u16(self, gpa, v)
    }
}

fn bit(map: &[u64], i: usize) -> bool {
    map[i / 64] & (1 << (i % 64)) != 0
}

fn set_bits(map: &mut [u64], first: usize, n: usize, on: bool) {
    for i in first..first + n {
        if on {
            map[i / 64] |= 1 << (i % 64);
        } else {
            map[i / 64] &= !(1 << (i % 64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_free_and_bounds() {
        let m = GuestMemory::new(0x10_0000, 4 * PAGE_SIZE).unwrap();
        assert_eq!(m.free_page_count(), 4);
        let a = m.alloc_pages(2).unwrap();
        assert_eq!(a, 0x10_0000);
        m.write(a + 10, &[1, 2, 3]).unwrap();
        assert_eq!(m.read_vec(a + 10, 3).unwrap(), [1, 2, 3]);
        let b = m.alloc_pages(2).unwrap();
        assert_eq!(b, 0x10_2000);
        assert!(matches!(
            m.alloc_pages(1),
            Err(Error::OutOfMemory { pages: 1 })
        ));
        m.free_pages(a, 2).unwrap();
        assert!(m.free_pages(a, 1).is_err(), "double free");
        // Reallocation hands out zeroed pages again.
        let c = m.alloc_bytes(5000).unwrap();
        assert_eq!(c, a);
        assert_eq!(m.read_vec(a + 10, 3).unwrap(), [0, 0, 0]);
        assert!(m.alloc_at(b, 1).is_err());
        assert!(m.read_vec(0x10_4000 - 1, 2).is_err());
        assert!(m.write(0xffff_ffff_ffff_ffff, &[0]).is_err());
        assert!(m.read_vec(0x10_0000, usize::MAX).is_err());
        assert_eq!(m.read_vec(0x10_4000, 0).unwrap(), Vec::<u8>::new());
        let p = m.host_ptr(b + 8, 1).unwrap();
        assert_eq!(m.gpa_of(p.as_ptr()), Some(b + 8));
        m.store_u16(b, 0xbeef).unwrap();
        assert_eq!(m.read_vec(b, 2).unwrap(), [0xef, 0xbe]);
        assert_eq!(m.load_u16(b).unwrap(), 0xbeef);
        assert!(m.load_u16(b + 1).is_err());
        assert_eq!((m.base(), m.size()), (0x10_0000, 4 * PAGE_SIZE));
        assert_eq!(m.gpa_of(m.host_base() as *const u8), Some(0x10_0000));
    }
}
