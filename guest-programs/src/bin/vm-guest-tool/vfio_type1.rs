//! The legacy VFIO container API with the type1 IOMMU: the guest kernel's own DMA API path
//! (iommu_map / iommu_unmap on the group's domain), which the guest's virtio-iommu driver
//! turns into MAP / UNMAP requests.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

const VFIO_GET_API_VERSION: libc::c_ulong = 0x3b64;
const VFIO_SET_IOMMU: libc::c_ulong = 0x3b66;
const VFIO_GROUP_GET_STATUS: libc::c_ulong = 0x3b67;
const VFIO_GROUP_SET_CONTAINER: libc::c_ulong = 0x3b68;
const VFIO_GROUP_GET_DEVICE_FD: libc::c_ulong = 0x3b6a;
const VFIO_IOMMU_MAP_DMA: libc::c_ulong = 0x3b71;
const VFIO_IOMMU_UNMAP_DMA: libc::c_ulong = 0x3b72;
const VFIO_API_VERSION: i32 = 0;
const VFIO_TYPE1V2_IOMMU: libc::c_ulong = 3;
const VFIO_GROUP_FLAGS_VIABLE: u32 = 1;
const VFIO_DMA_MAP_FLAG_READ: u32 = 1;
const VFIO_DMA_MAP_FLAG_WRITE: u32 = 2;

#[repr(C)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

#[repr(C)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

#[repr(C)]
struct DmaUnmap {
    argsz: u32,
    flags: u32,
    iova: u64,
    size: u64,
}

fn argsz<T>() -> u32 {
    u32::try_from(std::mem::size_of::<T>()).unwrap_or(u32::MAX)
}

fn check(rc: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(rc)
}

/// A type1 container holding one group, and that group's device.
#[derive(Debug)]
pub struct Type1 {
    container: File,
    // Kept open: closing the group detaches it from the container.
    _group: File,
    pub device: File,
}

impl Type1 {
    /// Opens the PCI device `bdf` (bound to vfio-pci) through its IOMMU group `group`.
    pub fn open(group: &str, bdf: &str) -> io::Result<Self> {
        let rw = |p: &str| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .map_err(|e| io::Error::new(e.kind(), format!("open {p}: {e}")))
        };
        let container = rw("/dev/vfio/vfio")?;
        let group_file = rw(&format!("/dev/vfio/{group}"))?;
        // SAFETY: an argument-less ioctl on the container fd.
        let v = unsafe { libc::ioctl(container.as_raw_fd(), VFIO_GET_API_VERSION) };
        if check(v, "VFIO_GET_API_VERSION")? != VFIO_API_VERSION {
            return Err(io::Error::other(format!("VFIO API version {v}")));
        }
        let mut st = GroupStatus {
            argsz: argsz::<GroupStatus>(),
            flags: 0,
        };
        // SAFETY: `st` is a writable vfio_group_status with its argsz set.
        let rc = unsafe { libc::ioctl(group_file.as_raw_fd(), VFIO_GROUP_GET_STATUS, &mut st) };
        check(rc, "VFIO_GROUP_GET_STATUS")?;
        if st.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(io::Error::other(format!("group {group} is not viable")));
        }
        let cfd: libc::c_int = container.as_raw_fd();
        // SAFETY: the argument points to an int holding the container fd.
        let rc = unsafe { libc::ioctl(group_file.as_raw_fd(), VFIO_GROUP_SET_CONTAINER, &cfd) };
        check(rc, "VFIO_GROUP_SET_CONTAINER")?;
        // SAFETY: VFIO_SET_IOMMU takes the IOMMU type by value.
        let rc = unsafe { libc::ioctl(container.as_raw_fd(), VFIO_SET_IOMMU, VFIO_TYPE1V2_IOMMU) };
        check(rc, "VFIO_SET_IOMMU(type1v2)")?;
        let name = CString::new(bdf).map_err(io::Error::other)?;
        // SAFETY: the argument is a NUL-terminated device name alive during the call.
        let rc = unsafe {
            libc::ioctl(
                group_file.as_raw_fd(),
                VFIO_GROUP_GET_DEVICE_FD,
                name.as_ptr(),
            )
        };
        let fd = check(rc, "VFIO_GROUP_GET_DEVICE_FD")?;
        // SAFETY: `fd` is a new descriptor returned to us alone.
        let device = unsafe { File::from_raw_fd(fd) };
        Ok(Type1 {
            container,
            _group: group_file,
            device,
        })
    }

    /// Maps `size` bytes of this process at `vaddr` to `iova`, readable and writable.
    pub fn map(&self, vaddr: u64, iova: u64, size: u64) -> io::Result<()> {
        let m = DmaMap {
            argsz: argsz::<DmaMap>(),
            flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            vaddr,
            iova,
            size,
        };
        // SAFETY: `m` is a complete vfio_iommu_type1_dma_map alive during the call.
        let rc = unsafe { libc::ioctl(self.container.as_raw_fd(), VFIO_IOMMU_MAP_DMA, &m) };
        check(rc, "VFIO_IOMMU_MAP_DMA").map(drop)
    }

    pub fn unmap(&self, iova: u64, size: u64) -> io::Result<()> {
        let mut u = DmaUnmap {
            argsz: argsz::<DmaUnmap>(),
            flags: 0,
            iova,
            size,
        };
        // SAFETY: `u` is a writable vfio_iommu_type1_dma_unmap alive during the call.
        let rc = unsafe { libc::ioctl(self.container.as_raw_fd(), VFIO_IOMMU_UNMAP_DMA, &mut u) };
        check(rc, "VFIO_IOMMU_UNMAP_DMA").map(drop)
    }
}
