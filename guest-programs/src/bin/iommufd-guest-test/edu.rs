//! QEMU's `edu` device bound to vfio-pci: its BAR, its DMA engine, its cdev.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::Duration;

use vhost_device_iommu::host::iommufd::selftest::{self as st, RegionInfo};
use vhost_device_iommu::host::iommufd::{vfio_endpoint, VfioEndpoint, VfioSource};

use crate::report::Report;

const EDU_ID: usize = 0x00;
const EDU_DMA_SRC: usize = 0x80;
const EDU_DMA_DST: usize = 0x88;
const EDU_DMA_COUNT: usize = 0x90;
const EDU_DMA_CMD: usize = 0x98;
/// The edu device's DMA buffer, as seen by its DMA engine.
pub const EDU_BUF: u64 = 0x4_0000;
const EDU_CMD_START: u64 = 1;
/// Direction bit: 1 = edu buffer -> RAM, 0 = RAM -> edu buffer.
const EDU_CMD_TO_RAM: u64 = 2;
const VFIO_PCI_BAR0_REGION_INDEX: u32 = 0;
const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;

/// The edu device's BAR0, mmapped from the VFIO device fd.
pub struct EduBar {
    base: *mut u8,
    len: usize,
}

impl EduBar {
    pub fn map(dev: &File, bar: RegionInfo) -> std::io::Result<Self> {
        let len = usize::try_from(bar.size).map_err(|_| std::io::Error::other("BAR too large"))?;
        let off =
            libc::off_t::try_from(bar.offset).map_err(|_| std::io::Error::other("bad offset"))?;
        if len < 0x100 {
            return Err(std::io::Error::other("BAR0 too small for edu"));
        }
        // SAFETY: a fresh shared mapping of the device region chosen by the kernel (addr NULL);
        // it does not alias any Rust object and is only accessed through volatile reads/writes.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                dev.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(EduBar {
            base: p.cast(),
            len,
        })
    }

    pub fn read32(&self, off: usize) -> u32 {
        assert!(off + 4 <= self.len);
        // SAFETY: `off + 4` is inside the live mapping (checked), 4-byte aligned register.
        unsafe { self.base.add(off).cast::<u32>().read_volatile() }
    }

    pub fn read64(&self, off: usize) -> u64 {
        assert!(off + 8 <= self.len);
        // SAFETY: `off + 8` is inside the live mapping (checked), 8-byte aligned register.
        unsafe { self.base.add(off).cast::<u64>().read_volatile() }
    }

    pub fn write64(&self, off: usize, v: u64) {
        assert!(off + 8 <= self.len);
        // SAFETY: as in `read64`.
        unsafe { self.base.add(off).cast::<u64>().write_volatile(v) }
    }

    /// Runs one DMA transfer and waits for edu to finish it (it completes, successful or not,
    /// about 100 ms of virtual time later). Returns whether it completed.
    pub fn dma(&self, src: u64, dst: u64, len: u64, to_ram: bool) -> bool {
        self.write64(EDU_DMA_SRC, src);
        self.write64(EDU_DMA_DST, dst);
        self.write64(EDU_DMA_COUNT, len);
        self.write64(
            EDU_DMA_CMD,
            EDU_CMD_START | if to_ram { EDU_CMD_TO_RAM } else { 0 },
        );
        for _ in 0..400 {
            if self.read64(EDU_DMA_CMD) & EDU_CMD_START == 0 {
                return true;
            }
            sleep(Duration::from_millis(10));
        }
        false
    }

    /// RAM at `src_iova` -> edu buffer -> RAM at `dst_iova`.
    pub fn round_trip(&self, src_iova: u64, dst_iova: u64, len: u64) -> bool {
        self.dma(src_iova, EDU_BUF, len, false) && self.dma(EDU_BUF, dst_iova, len, true)
    }
}

impl Drop for EduBar {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `map`; no reference into it survives.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Enables memory decoding and bus mastering through the VFIO config region and maps BAR0.
pub fn edu_open(r: &mut Report, dev: &File) -> Option<EduBar> {
    let cfg = st::vfio_region_info(dev, VFIO_PCI_CONFIG_REGION_INDEX).ok()?;
    let bar = st::vfio_region_info(dev, VFIO_PCI_BAR0_REGION_INDEX).ok()?;
    let mut ids = [0u8; 4];
    dev.read_exact_at(&mut ids, cfg.offset).ok()?;
    let is_edu = ids == [0x34, 0x12, 0xe8, 0x11];
    if !r.check(is_edu, format!("device is QEMU edu (ids {ids:02x?})")) {
        return None;
    }
    let mut cmd = [0u8; 2];
    dev.read_exact_at(&mut cmd, cfg.offset + 4).ok()?;
    let v = u16::from_le_bytes(cmd) | 0x6;
    dev.write_all_at(&v.to_le_bytes(), cfg.offset + 4).ok()?;
    match EduBar::map(dev, bar) {
        Ok(b) => {
            let ident = b.read32(EDU_ID);
            r.check(
                ident == 0x0100_00ed,
                format!("edu BAR0 mmapped, ident {ident:#010x}"),
            );
            Some(b)
        }
        Err(e) => {
            r.check(false, format!("mmap edu BAR0: {e}"));
            None
        }
    }
}

/// The endpoint of the edu device in the VFIO tests.
pub const EP: u32 = 8;
/// Guest memory of the VFIO tests: well below edu's 28-bit DMA mask; IOVAs too.
pub const EDU_GPA: u64 = 0x100_0000;

/// `--vfio EP=BDF` parsed, and the cdev the PCI address resolves to through sysfs.
pub fn edu_cdev(r: &mut Report, bdf: &str) -> Option<(VfioEndpoint, PathBuf)> {
    let spec: VfioEndpoint = match format!("{EP}={bdf}").parse() {
        Ok(s) => s,
        Err(e) => {
            r.check(false, format!("parse --vfio {EP}={bdf}: {e}"));
            return None;
        }
    };
    let VfioSource::Pci(norm) = spec.source.clone() else {
        r.check(
            false,
            format!("{bdf} did not parse as a PCI address: {spec:?}"),
        );
        return None;
    };
    let cdev = match vfio_endpoint::resolve_pci(Path::new(vfio_endpoint::SYSFS_PCI), &norm) {
        Ok(p) => p,
        Err(e) => {
            r.check(false, format!("resolve {bdf}: {e}"));
            return None;
        }
    };
    r.check(
        cdev.to_string_lossy().starts_with("/dev/vfio/devices/vfio"),
        format!("{bdf} resolves to {}", cdev.display()),
    );
    Some((spec, cdev))
}

pub fn gpa_plus(off: u64) -> u64 {
    EDU_GPA + off
}
