//! Isolation through the guest's IOMMU: QEMU's `edu` bound to vfio-pci, its DMA engine aimed
//! at a mapped IOVA (lands), at an IOVA after its UNMAP (must not land, although the device's
//! cached translation was used before) and at a buffer's guest-physical address used as IOVA
//! (lands only if DMA bypasses the IOMMU). Each blocked DMA is a fault the guest kernel should
//! log; the IOVAs are printed for the host to look for (`VM-EDU-FAULTS:`).
//!
//! The blocked DMAs are 4 bytes long: QEMU splits a DMA that fails translation into 4-byte
//! accesses, each one TRANSLATE and one fault event, and the guest kernel logs at most 10
//! faults per 5 s. One access per blocked DMA gives one fault line for each.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::process::ExitCode;

use crate::edu::{edu_open, EDU_BUF};
use crate::report::Report;
use crate::vfio_type1::Type1;

const PAGE: usize = 4096;
const PAGE64: u64 = 4096;
const IOVA_SRC: u64 = 0x10_0000;
const IOVA_DST: u64 = 0x20_0000;

/// Three anonymous pages (source, destination, victim), locked in memory.
struct Pages {
    base: *mut u8,
}

impl Pages {
    const LEN: usize = 3 * PAGE;

    fn new() -> io::Result<Self> {
        // SAFETY: a fresh private anonymous mapping at an address the kernel picks.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: locks the mapping just created, so its guest-physical pages stay put.
        if unsafe { libc::mlock(p, Self::LEN) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Pages { base: p.cast() })
    }

    fn addr(&self, page: usize) -> u64 {
        self.base as u64 + (page * PAGE) as u64
    }

    fn write(&self, page: usize, data: &[u8]) {
        assert!(data.len() <= PAGE && page < 3);
        for (i, b) in data.iter().enumerate() {
            // SAFETY: inside the mapping (checked); the device may write it too, hence
            // volatile byte accesses rather than a Rust reference.
            unsafe { self.base.add(page * PAGE + i).write_volatile(*b) };
        }
    }

    fn read(&self, page: usize) -> Vec<u8> {
        assert!(page < 3);
        (0..PAGE)
            // SAFETY: as in `write`.
            .map(|i| unsafe { self.base.add(page * PAGE + i).read_volatile() })
            .collect()
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping of `new`; nothing refers into it any more.
        unsafe { libc::munmap(self.base.cast(), Self::LEN) };
    }
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..PAGE)
        .map(|i| u8::try_from(i % 251).unwrap_or(0).wrapping_add(seed))
        .collect()
}

/// The guest-physical address of this process's virtual address `va` (root only).
fn guest_physical(va: u64) -> io::Result<u64> {
    let f = File::open("/proc/self/pagemap")?;
    let mut e = [0u8; 8];
    f.read_exact_at(&mut e, va / PAGE64 * 8)?;
    let e = u64::from_le_bytes(e);
    if e >> 63 == 0 || e & ((1 << 55) - 1) == 0 {
        return Err(io::Error::other(format!(
            "page at {va:#x} not present ({e:#x})"
        )));
    }
    Ok((e & ((1 << 55) - 1)) * PAGE64 + va % PAGE64)
}

fn group_of(bdf: &str) -> io::Result<String> {
    let link = std::fs::read_link(format!("/sys/bus/pci/devices/{bdf}/iommu_group"))?;
    link.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| io::Error::other("no group name"))
}

pub fn edu_isolation(bdf: &str) -> ExitCode {
    let mut r = Report::new("edu-isolation");
    let t = match group_of(bdf).and_then(|g| Type1::open(&g, bdf)) {
        Ok(t) => t,
        Err(e) => {
            r.check(false, format!("{bdf} through a type1 container: {e}"));
            return r.finish();
        }
    };
    let Some(edu) = edu_open(&mut r, &t.device) else {
        return r.finish();
    };
    let pages = match Pages::new() {
        Ok(p) => p,
        Err(e) => {
            r.check(false, format!("buffers: {e}"));
            return r.finish();
        }
    };
    let (src, dst, victim) = (0, 1, 2);
    for (page, iova) in [(src, IOVA_SRC), (dst, IOVA_DST)] {
        if let Err(e) = t.map(pages.addr(page), iova, PAGE64) {
            r.check(false, format!("map page {page} at IOVA {iova:#x}: {e}"));
            return r.finish();
        }
    }
    let len = PAGE64;
    let short = 4;

    // 1. Mapped: source -> edu -> destination, through two IOVAs.
    pages.write(src, &pattern(1));
    let done = edu.round_trip(IOVA_SRC, IOVA_DST, len);
    r.check(
        done && pages.read(dst) == pattern(1),
        format!("DMA through mapped IOVAs {IOVA_SRC:#x} -> {IOVA_DST:#x} landed in the buffer"),
    );

    // 2. After UNMAP: the destination's IOVA was translated (and cached) just before.
    pages.write(src, &pattern(2));
    if let Err(e) = t.unmap(IOVA_DST, PAGE64) {
        r.check(false, format!("unmap IOVA {IOVA_DST:#x}: {e}"));
        return r.finish();
    }
    let done = edu.dma(IOVA_SRC, EDU_BUF, len, false) && edu.dma(EDU_BUF, IOVA_DST, short, true);
    r.check(
        done && pages.read(dst) == pattern(1),
        format!("DMA to IOVA {IOVA_DST:#x} after its UNMAP did not touch the old buffer"),
    );

    // 3. A guest-physical address used as IOVA: lands only without translation.
    let gpa = match guest_physical(pages.addr(victim)) {
        Ok(g) => g,
        Err(e) => {
            r.check(false, format!("victim page's guest-physical address: {e}"));
            return r.finish();
        }
    };
    let mapped = |a: u64| (IOVA_SRC..IOVA_SRC + PAGE64).contains(&a);
    r.check(
        !mapped(gpa),
        format!("victim page at guest-physical {gpa:#x}, not a mapped IOVA"),
    );
    let done = edu.dma(EDU_BUF, gpa, short, true);
    r.check(
        done && pages.read(victim).iter().all(|&b| b == 0),
        format!("DMA to IOVA {gpa:#x} (the victim's guest-physical address) did not touch it"),
    );
    println!("VM-EDU-FAULTS: {IOVA_DST:#x} {gpa:#x}");

    // 4. The mapped path still works after the faults.
    pages.write(src, &pattern(3));
    let _ = t.map(pages.addr(dst), IOVA_DST, PAGE64);
    let done = edu.round_trip(IOVA_SRC, IOVA_DST, len);
    r.check(
        done && pages.read(dst) == pattern(3),
        "DMA through the remapped IOVA lands again after the faults",
    );
    r.finish()
}
