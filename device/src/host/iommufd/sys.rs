//! Every `unsafe` call of the iommufd backend: the iommufd, VFIO cdev and selftest ioctls, plus
//! the few libc calls around them. Each function is a thin, safe wrapper that fills one uAPI
//! struct, issues one ioctl and returns the output fields or the `errno` as [`io::Error`].
//!
//! Layouts come from `iommufd-bindings` (v7.1 uAPI, identical to the 7.2 test kernel's);
//! the VFIO cdev structs and the selftest `iommu_test_cmd` are not in any crate and are
//! declared here, with their sizes asserted against the 7.2 headers.

use std::fs::File;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use iommufd_bindings as b;
use libc::c_ulong;
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref};

// ---- ioctl numbers ------------------------------------------------------------------------

/// `_IO(type, nr)`: iommufd and the VFIO cdev ioctls carry neither size nor direction.
#[allow(clippy::cast_lossless)] // `From` is not const; both casts widen.
const fn io(ty: u8, nr: u32) -> c_ulong {
    // Widening u32 -> c_ulong (u64 on Linux targets), never truncating.
    ((ty as c_ulong) << 8) | nr as c_ulong
}

const IOMMUFD_TYPE: u8 = b::IOMMUFD_TYPE;
const IOMMU_DESTROY: c_ulong = io(IOMMUFD_TYPE, b::IOMMUFD_CMD_DESTROY);
const IOMMU_IOAS_ALLOC: c_ulong = io(IOMMUFD_TYPE, b::IOMMUFD_CMD_IOAS_ALLOC);
const IOMMU_IOAS_COPY: c_ulong = io(IOMMUFD_TYPE, b::IOMMUFD_CMD_IOAS_COPY);
const IOMMU_IOAS_IOVA_RANGES: c_ulong = io(IOMMUFD_TYPE, b::IOMMUFD_CMD_IOAS_IOVA_RANGES);
const IOMMU_IOAS_MAP: c_ulong = io(IOMMUFD_TYPE, b::IOMMUFD_CMD_IOAS_MAP);
const IOMMU_IOAS_UNMAP: c_ulong = io(IOMMUFD_TYPE, b::IOMMUFD_CMD_IOAS_UNMAP);
const IOMMU_HWPT_ALLOC: c_ulong = io(IOMMUFD_TYPE, b::IOMMUFD_CMD_HWPT_ALLOC);
const IOMMU_GET_HW_INFO: c_ulong = io(IOMMUFD_TYPE, b::IOMMUFD_CMD_GET_HW_INFO);
const IOMMU_HWPT_INVALIDATE: c_ulong = io(IOMMUFD_TYPE, b::IOMMUFD_CMD_HWPT_INVALIDATE);
const IOMMU_FAULT_QUEUE_ALLOC: c_ulong = io(IOMMUFD_TYPE, b::IOMMUFD_CMD_FAULT_QUEUE_ALLOC);
const IOMMU_IOAS_MAP_FILE: c_ulong = io(IOMMUFD_TYPE, b::IOMMUFD_CMD_IOAS_MAP_FILE);
/// `IOMMU_TEST_CMD` = `_IO(';', IOMMUFD_CMD_BASE + 32)` (selftest builds only).
const IOMMU_TEST_CMD: c_ulong = io(IOMMUFD_TYPE, b::IOMMUFD_CMD_BASE + 32);

/// VFIO ioctls: `_IO(VFIO_TYPE = ';', VFIO_BASE = 100 + n)`.
const VFIO_TYPE: u8 = b';';
const VFIO_BASE: u32 = 100;
#[cfg(feature = "test-support")]
const VFIO_DEVICE_GET_REGION_INFO: c_ulong = io(VFIO_TYPE, VFIO_BASE + 8);
const VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: c_ulong = io(VFIO_TYPE, VFIO_BASE + 12);
const VFIO_DEVICE_BIND_IOMMUFD: c_ulong = io(VFIO_TYPE, VFIO_BASE + 18);
const VFIO_DEVICE_ATTACH_IOMMUFD_PT: c_ulong = io(VFIO_TYPE, VFIO_BASE + 19);
const VFIO_DEVICE_DETACH_IOMMUFD_PT: c_ulong = io(VFIO_TYPE, VFIO_BASE + 20);
const VFIO_DEVICE_ATTACH_PASID: u32 = 1;
const VFIO_DEVICE_DETACH_PASID: u32 = 1;

// ---- structs the crates lack ----------------------------------------------------------------

/// `struct vfio_device_bind_iommufd` (24 bytes since 6.17; older kernels take the first 16).
#[repr(C)]
#[derive(Default)]
struct VfioBindIommufd {
    argsz: u32,
    flags: u32,
    iommufd: i32,
    out_devid: u32,
    token_uuid_ptr: u64,
}

/// `struct vfio_device_attach_iommufd_pt` (16 bytes).
#[repr(C)]
#[derive(Default)]
struct VfioAttachPt {
    argsz: u32,
    flags: u32,
    pt_id: u32,
    pasid: u32,
}

/// `struct vfio_device_detach_iommufd_pt` (12 bytes).
#[repr(C)]
#[derive(Default)]
struct VfioDetachPt {
    argsz: u32,
    flags: u32,
    pasid: u32,
}

/// `struct vfio_region_info` (32 bytes, without capability chain).
#[repr(C)]
#[derive(Default)]
struct VfioRegionInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    cap_offset: u32,
    size: u64,
    offset: u64,
}

/// `struct vfio_pci_hot_reset_info` with room for [`MAX_RESET_DEVICES`] entries of
/// `struct vfio_pci_dependent_device` (8 bytes each: devid/group, segment, bus, devfn).
#[repr(C)]
struct VfioHotResetInfo {
    argsz: u32,
    flags: u32,
    count: u32,
    devices: [[u32; 2]; MAX_RESET_DEVICES],
}

/// Devices one reset can affect that we look at (a bus rarely holds more).
const MAX_RESET_DEVICES: usize = 64;

/// `struct iommu_test_cmd` (72 bytes): header, a 48-byte union, `last`.
#[repr(C)]
#[derive(Default)]
struct TestCmd {
    size: u32,
    op: u32,
    id: u32,
    reserved: u32,
    payload: [u64; 6],
    last: u32,
}

const _: () = {
    assert!(size_of::<VfioBindIommufd>() == 24);
    assert!(size_of::<VfioAttachPt>() == 16);
    assert!(size_of::<VfioDetachPt>() == 12);
    assert!(size_of::<VfioRegionInfo>() == 32);
    assert!(size_of::<TestCmd>() == 72);
    assert!(size_of::<VfioHotResetInfo>() == 12 + 8 * MAX_RESET_DEVICES);
    // The bindings must match the uAPI the backend was written against (7.2 headers).
    assert!(size_of::<b::iommu_ioas_map>() == 40);
    assert!(size_of::<b::iommu_ioas_map_file>() == 40);
    assert!(size_of::<b::iommu_ioas_copy>() == 40);
    assert!(size_of::<b::iommu_ioas_unmap>() == 24);
    assert!(size_of::<b::iommu_ioas_iova_ranges>() == 32);
    assert!(size_of::<b::iommu_hwpt_alloc>() == 48);
    assert!(size_of::<b::iommu_hw_info>() == 40);
    assert!(size_of::<b::iommu_hwpt_invalidate>() == 32);
    assert!(size_of::<b::iommu_hwpt_pgfault>() == 40);
    assert!(size_of::<b::iommu_hwpt_page_response>() == 8);
    assert!(size_of::<b::iommu_fault_alloc>() == 16);
};

/// The `size`/`argsz` field value of a uAPI struct (all are far below 4 GiB).
fn size32<T>() -> u32 {
    u32::try_from(size_of::<T>()).unwrap_or(u32::MAX)
}

/// A pointer as the u64 the uAPI carries it in.
fn uptr<T>(p: *const T) -> u64 {
    p as usize as u64
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

// ---- iommufd objects ----------------------------------------------------------------------

/// `IOMMU_DESTROY`.
pub fn destroy(fd: &File, id: u32) -> io::Result<()> {
    let arg = b::iommu_destroy {
        size: size32::<b::iommu_destroy>(),
        id,
    };
    // SAFETY: `arg` is a valid, initialised `iommu_destroy` that the kernel only reads.
    check(unsafe { ioctl_with_ref(fd, IOMMU_DESTROY, &arg) })
}

/// `IOMMU_IOAS_ALLOC`: returns the IOAS ID.
pub fn ioas_alloc(fd: &File) -> io::Result<u32> {
    let mut arg = b::iommu_ioas_alloc {
        size: size32::<b::iommu_ioas_alloc>(),
        ..Default::default()
    };
    // SAFETY: `arg` is a valid `iommu_ioas_alloc`; the kernel writes only inside it.
    check(unsafe { ioctl_with_mut_ref(fd, IOMMU_IOAS_ALLOC, &mut arg) })?;
    Ok(arg.out_ioas_id)
}

/// `IOMMU_IOAS_MAP` at a fixed IOVA of `len` bytes of this process's memory at `va`.
///
/// The kernel pins the pages, so they stay valid for the device even if the caller unmaps
/// them; the caller keeps `va..va+len` mapped while the IOAS mapping exists so that the
/// device and the process keep seeing the same memory.
pub fn ioas_map_va(
    fd: &File,
    ioas: u32,
    va: u64,
    len: u64,
    iova: u64,
    flags: u32,
) -> io::Result<()> {
    let mut arg = b::iommu_ioas_map {
        size: size32::<b::iommu_ioas_map>(),
        flags: flags | b::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_FIXED_IOVA,
        ioas_id: ioas,
        __reserved: 0,
        user_va: va,
        length: len,
        iova,
    };
    // SAFETY: `arg` is a valid `iommu_ioas_map`. The kernel pins the user pages at `va`
    // (faulting on unmapped addresses with EFAULT) and never writes our memory through the
    // ioctl itself; it only writes `arg`.
    check(unsafe { ioctl_with_mut_ref(fd, IOMMU_IOAS_MAP, &mut arg) })
}

/// `IOMMU_IOAS_MAP_FILE` at a fixed IOVA: `len` bytes of the memfd `file` from `start`.
pub fn ioas_map_file(
    fd: &File,
    ioas: u32,
    file: RawFd,
    start: u64,
    len: u64,
    iova: u64,
    flags: u32,
) -> io::Result<()> {
    let mut arg = b::iommu_ioas_map_file {
        size: size32::<b::iommu_ioas_map_file>(),
        flags: flags | b::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_FIXED_IOVA,
        ioas_id: ioas,
        fd: file,
        start,
        length: len,
        iova,
    };
    // SAFETY: `arg` is a valid `iommu_ioas_map_file`; the kernel validates the fd itself.
    check(unsafe { ioctl_with_mut_ref(fd, IOMMU_IOAS_MAP_FILE, &mut arg) })
}

/// `IOMMU_IOAS_COPY` at a fixed IOVA: shares the pages already pinned in `src`.
pub fn ioas_copy(
    fd: &File,
    dst: u32,
    dst_iova: u64,
    src: u32,
    src_iova: u64,
    len: u64,
    flags: u32,
) -> io::Result<()> {
    let mut arg = b::iommu_ioas_copy {
        size: size32::<b::iommu_ioas_copy>(),
        flags: flags | b::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_FIXED_IOVA,
        dst_ioas_id: dst,
        src_ioas_id: src,
        length: len,
        dst_iova,
        src_iova,
    };
    // SAFETY: `arg` is a valid `iommu_ioas_copy`; the kernel writes only inside it.
    check(unsafe { ioctl_with_mut_ref(fd, IOMMU_IOAS_COPY, &mut arg) })
}

/// `IOMMU_IOAS_UNMAP`: returns the number of bytes unmapped.
pub fn ioas_unmap(fd: &File, ioas: u32, iova: u64, len: u64) -> io::Result<u64> {
    let mut arg = b::iommu_ioas_unmap {
        size: size32::<b::iommu_ioas_unmap>(),
        ioas_id: ioas,
        iova,
        length: len,
    };
    // SAFETY: `arg` is a valid `iommu_ioas_unmap`; the kernel writes only inside it.
    check(unsafe { ioctl_with_mut_ref(fd, IOMMU_IOAS_UNMAP, &mut arg) })?;
    Ok(arg.length)
}

/// Upper bound on the ranges we accept from `IOMMU_IOAS_IOVA_RANGES` (a handful in practice).
const MAX_IOVA_RANGES: u32 = 1024;

/// `IOMMU_IOAS_IOVA_RANGES`: the allowed `(start, last)` ranges and the IOVA alignment.
pub fn ioas_iova_ranges(fd: &File, ioas: u32) -> io::Result<(Vec<(u64, u64)>, u64)> {
    let mut ranges = vec![b::iommu_iova_range::default(); 8];
    // The count can grow between calls (a concurrent attach): retry a few times.
    for _ in 0..4 {
        let mut arg = b::iommu_ioas_iova_ranges {
            size: size32::<b::iommu_ioas_iova_ranges>(),
            ioas_id: ioas,
            num_iovas: u32::try_from(ranges.len()).unwrap_or(MAX_IOVA_RANGES),
            __reserved: 0,
            allowed_iovas: uptr(ranges.as_mut_ptr()),
            out_iova_alignment: 0,
        };
        // SAFETY: `allowed_iovas` points to `num_iovas` writable `iommu_iova_range`s that live
        // for the whole call; the kernel writes at most that many and otherwise only `arg`.
        let rc = unsafe { ioctl_with_mut_ref(fd, IOMMU_IOAS_IOVA_RANGES, &mut arg) };
        if rc == 0 {
            let n = usize::try_from(arg.num_iovas)
                .unwrap_or(usize::MAX)
                .min(ranges.len());
            let out = ranges[..n].iter().map(|r| (r.start, r.last)).collect();
            return Ok((out, arg.out_iova_alignment));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EMSGSIZE) || arg.num_iovas > MAX_IOVA_RANGES {
            return Err(err);
        }
        ranges = vec![b::iommu_iova_range::default(); usize::try_from(arg.num_iovas).unwrap_or(0)];
    }
    Err(io::Error::from_raw_os_error(libc::EMSGSIZE))
}

/// `IOMMU_HWPT_ALLOC`. `data` is the driver-specific blob (`data_type` 0 = none).
pub fn hwpt_alloc(
    fd: &File,
    flags: u32,
    dev_id: u32,
    pt_id: u32,
    data_type: u32,
    data: &[u8],
    fault_id: Option<u32>,
) -> io::Result<u32> {
    let mut arg = b::iommu_hwpt_alloc {
        size: size32::<b::iommu_hwpt_alloc>(),
        flags,
        dev_id,
        pt_id,
        data_type,
        data_len: u32::try_from(data.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
        data_uptr: if data.is_empty() {
            0
        } else {
            uptr(data.as_ptr())
        },
        ..Default::default()
    };
    if let Some(id) = fault_id {
        arg.flags |= b::iommufd_hwpt_alloc_flags_IOMMU_HWPT_FAULT_ID_VALID;
        arg.fault_id = id;
    }
    // SAFETY: `data_uptr`/`data_len` describe the live `data` slice, which the kernel only
    // reads; the kernel writes only `arg`.
    check(unsafe { ioctl_with_mut_ref(fd, IOMMU_HWPT_ALLOC, &mut arg) })?;
    Ok(arg.out_hwpt_id)
}

/// Output of `IOMMU_GET_HW_INFO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HwInfo {
    /// `enum iommu_hw_info_type` (or the selftest's 0xfeedbeef).
    pub data_type: u32,
    /// The driver data (at most the buffer the caller gave).
    pub data: Vec<u8>,
    /// `out_max_pasid_log2` (0: no PASID).
    pub max_pasid_log2: u8,
    /// `out_capabilities`.
    pub capabilities: u64,
}

/// `IOMMU_GET_HW_INFO` with a `max_len`-byte data buffer.
pub fn get_hw_info(fd: &File, dev_id: u32, max_len: u32) -> io::Result<HwInfo> {
    let mut buf = vec![0u8; usize::try_from(max_len).unwrap_or(0)];
    let mut arg = b::iommu_hw_info {
        size: size32::<b::iommu_hw_info>(),
        dev_id,
        data_len: max_len,
        data_uptr: uptr(buf.as_mut_ptr()),
        ..Default::default()
    };
    // SAFETY: `data_uptr` points to `data_len` writable bytes that outlive the call; the kernel
    // writes at most that many there and otherwise only `arg`.
    check(unsafe { ioctl_with_mut_ref(fd, IOMMU_GET_HW_INFO, &mut arg) })?;
    buf.truncate(usize::try_from(arg.data_len).unwrap_or(0));
    Ok(HwInfo {
        // SAFETY: both union members are a plain u32 at the same offset; any bit pattern is
        // valid, and the kernel filled the "out" member.
        data_type: unsafe { arg.__bindgen_anon_1.out_data_type },
        data: buf,
        max_pasid_log2: arg.out_max_pasid_log2,
        capabilities: arg.out_capabilities,
    })
}

/// `IOMMU_HWPT_INVALIDATE` of `entries.len() / entry_len` entries. Returns how many the
/// kernel handled, also on failure (`Err((err, handled))`).
pub fn hwpt_invalidate(
    fd: &File,
    hwpt: u32,
    data_type: u32,
    entry_len: u32,
    entries: &[u8],
) -> Result<u32, (io::Error, u32)> {
    let einval = || (io::Error::from_raw_os_error(libc::EINVAL), 0);
    let len = usize::try_from(entry_len).map_err(|_| einval())?;
    let num = entries.len().checked_div(len).unwrap_or(0);
    if num.checked_mul(len) != Some(entries.len()) {
        return Err(einval());
    }
    let mut arg = b::iommu_hwpt_invalidate {
        size: size32::<b::iommu_hwpt_invalidate>(),
        hwpt_id: hwpt,
        data_uptr: if entries.is_empty() {
            0
        } else {
            uptr(entries.as_ptr())
        },
        data_type,
        entry_len,
        entry_num: u32::try_from(num).map_err(|_| einval())?,
        __reserved: 0,
    };
    // SAFETY: `data_uptr` points to `entry_num * entry_len` readable bytes (checked above) that
    // outlive the call; the kernel writes only `arg`.
    let rc = unsafe { ioctl_with_mut_ref(fd, IOMMU_HWPT_INVALIDATE, &mut arg) };
    if rc < 0 {
        Err((io::Error::last_os_error(), arg.entry_num))
    } else {
        Ok(arg.entry_num)
    }
}

/// `IOMMU_FAULT_QUEUE_ALLOC`: the fault object ID and its fd, switched to non-blocking.
pub fn fault_queue_alloc(fd: &File) -> io::Result<(u32, File)> {
    let mut arg = b::iommu_fault_alloc {
        size: size32::<b::iommu_fault_alloc>(),
        ..Default::default()
    };
    // SAFETY: `arg` is a valid `iommu_fault_alloc`; the kernel writes only inside it.
    check(unsafe { ioctl_with_mut_ref(fd, IOMMU_FAULT_QUEUE_ALLOC, &mut arg) })?;
    let raw =
        RawFd::try_from(arg.out_fault_fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: on success the kernel installed a new fd for us in `out_fault_fd`; nothing else
    // owns it, so taking ownership exactly once is sound.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    set_nonblocking(&file)?;
    Ok((arg.out_fault_id, file))
}

fn set_nonblocking(file: &File) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on an fd we own; no memory is passed.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    check(flags)?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })
}

// ---- host event fds --------------------------------------------------------------------------

/// A new epoll instance (close-on-exec). An epoll fd is itself pollable: readable while any
/// watched fd is, so one fd can stand for a set of queues that changes over time.
pub fn epoll_new() -> io::Result<File> {
    // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new fd we own.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    check(fd)?;
    // SAFETY: `fd` was just created by epoll_create1 and is owned by nobody else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Adds `file` to `epoll` for input (level-triggered). A closed file leaves the set by itself.
pub fn epoll_watch(epoll: &File, file: &File) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN.unsigned_abs(),
        u64: 0,
    };
    // SAFETY: both fds are open (borrowed `File`s) and `ev` is a valid epoll_event the kernel
    // only reads.
    check(unsafe {
        libc::epoll_ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            file.as_raw_fd(),
            &raw mut ev,
        )
    })
}

// ---- VFIO cdev ------------------------------------------------------------------------------

/// Takes ownership of an inherited fd number after checking it is open.
///
/// The fd must have been handed to this process for the backend's exclusive use (e.g. by the
/// launcher, `--vfio EP=fd:N`): nothing else in the process may close or reuse it.
pub fn take_inherited_fd(fd: RawFd) -> io::Result<File> {
    // SAFETY: F_GETFD only queries the descriptor table; no memory is passed.
    check(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: the fd is open (checked above) and, by the configuration contract documented
    // above, owned by nobody else in this process, so wrapping it in one owner is sound.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// `VFIO_DEVICE_BIND_IOMMUFD`: returns the device ID in the iommufd.
pub fn vfio_bind(dev: &File, iommufd: &File) -> io::Result<u32> {
    // argsz 16: the token field (6.17+) is not used, and older kernels reject larger sizes
    // only if the extra bytes are non-zero; 16 works everywhere.
    let mut arg = VfioBindIommufd {
        argsz: 16,
        iommufd: iommufd.as_raw_fd(),
        ..Default::default()
    };
    // SAFETY: `arg` is a valid `vfio_device_bind_iommufd`; the kernel reads `argsz` bytes and
    // writes `out_devid` inside it.
    check(unsafe { ioctl_with_mut_ref(dev, VFIO_DEVICE_BIND_IOMMUFD, &mut arg) })?;
    Ok(arg.out_devid)
}

/// `VFIO_DEVICE_ATTACH_IOMMUFD_PT` (replaces any current attachment): returns the HWPT ID the
/// device now uses (the kernel's auto domain when `pt_id` is an IOAS).
pub fn vfio_attach(dev: &File, pt_id: u32, pasid: Option<u32>) -> io::Result<u32> {
    // VFIO reads only `argsz`'s known prefix, so the full size works on every kernel.
    let mut arg = VfioAttachPt {
        argsz: size32::<VfioAttachPt>(),
        flags: if pasid.is_some() {
            VFIO_DEVICE_ATTACH_PASID
        } else {
            0
        },
        pt_id,
        pasid: pasid.unwrap_or(0),
    };
    // SAFETY: `arg` is a valid `vfio_device_attach_iommufd_pt`; the kernel writes only inside.
    check(unsafe { ioctl_with_mut_ref(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &mut arg) })?;
    Ok(arg.pt_id)
}

/// `VFIO_DEVICE_DETACH_IOMMUFD_PT`: the device (or PASID) blocks DMA afterwards.
pub fn vfio_detach(dev: &File, pasid: Option<u32>) -> io::Result<()> {
    let mut arg = VfioDetachPt {
        argsz: size32::<VfioDetachPt>(),
        flags: if pasid.is_some() {
            VFIO_DEVICE_DETACH_PASID
        } else {
            0
        },
        pasid: pasid.unwrap_or(0),
    };
    // SAFETY: `arg` is a valid `vfio_device_detach_iommufd_pt`; the kernel reads it only.
    check(unsafe { ioctl_with_mut_ref(dev, VFIO_DEVICE_DETACH_IOMMUFD_PT, &mut arg) })
}

/// A device a hot reset of a VFIO device would also reset, as
/// `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO` reports it for a cdev bound to iommufd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetDevice {
    /// PCI segment, bus and devfn.
    pub segment: u16,
    /// PCI bus.
    pub bus: u8,
    /// PCI device/function.
    pub devfn: u8,
    /// Its iommufd device ID when it is bound to the same iommufd; `None` when it is not
    /// (`VFIO_PCI_DEVID_OWNED` 0 / `VFIO_PCI_DEVID_NOT_OWNED` -1).
    pub dev_id: Option<u32>,
}

/// `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO` with device IDs (`VFIO_PCI_HOT_RESET_FLAG_DEV_ID`).
/// `ENODEV` when the device cannot be reset by slot or bus (e.g. on a root bus).
pub fn vfio_hot_reset_devices(dev: &File) -> io::Result<Vec<ResetDevice>> {
    const FLAG_DEV_ID: u32 = 1;
    let mut arg = VfioHotResetInfo {
        argsz: size32::<VfioHotResetInfo>(),
        flags: 0,
        count: 0,
        devices: [[0; 2]; MAX_RESET_DEVICES],
    };
    // SAFETY: `arg` is a valid `vfio_pci_hot_reset_info` whose `argsz` covers the entry array;
    // the kernel writes at most `argsz` bytes (ENOSPC when more entries would be needed).
    check(unsafe { ioctl_with_mut_ref(dev, VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, &mut arg) })?;
    if arg.flags & FLAG_DEV_ID == 0 {
        // Group-style answer (group IDs, not device IDs): not a bound cdev.
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let n = usize::try_from(arg.count).map_or(MAX_RESET_DEVICES, |c| c.min(MAX_RESET_DEVICES));
    Ok(arg.devices[..n]
        .iter()
        .map(|&[id, loc]| {
            // The second word is `__u16 segment; __u8 bus; __u8 devfn;` in memory order.
            let [s0, s1, bus, devfn] = loc.to_ne_bytes();
            ResetDevice {
                segment: u16::from_ne_bytes([s0, s1]),
                bus,
                devfn,
                dev_id: (id != 0 && id != u32::MAX).then_some(id),
            }
        })
        .collect())
}

/// Size, file offset and flags of a VFIO device region.
#[cfg(feature = "test-support")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionInfo {
    /// Region size in bytes.
    pub size: u64,
    /// Offset of the region in the device fd (for pread/pwrite/mmap).
    pub offset: u64,
    /// `VFIO_REGION_INFO_FLAG_*` (1 read, 2 write, 4 mmap).
    pub flags: u32,
}

/// `VFIO_DEVICE_GET_REGION_INFO`.
#[cfg(feature = "test-support")]
pub fn vfio_region_info(dev: &File, index: u32) -> io::Result<RegionInfo> {
    let mut arg = VfioRegionInfo {
        argsz: size32::<VfioRegionInfo>(),
        index,
        ..Default::default()
    };
    // SAFETY: `arg` is a valid `vfio_region_info` of `argsz` bytes; the kernel writes only
    // inside it (capabilities would need a larger argsz and are not requested).
    check(unsafe { ioctl_with_mut_ref(dev, VFIO_DEVICE_GET_REGION_INFO, &mut arg) })?;
    Ok(RegionInfo {
        size: arg.size,
        offset: arg.offset,
        flags: arg.flags,
    })
}

// ---- selftest (CONFIG_IOMMUFD_TEST) ---------------------------------------------------------

/// Selftest `IOMMU_TEST_OP_*` codes (7.2 `iommufd_test.h`).
pub mod test_op {
    /// Create a mock device attached to IOAS/HWPT `id`.
    pub const MOCK_DOMAIN: u32 = 2;
    /// Check the mock page table of HWPT `id` maps an IOVA range to a user buffer.
    #[cfg(feature = "test-support")]
    pub const MD_CHECK_MAP: u32 = 3;
    /// Re-attach mock device `id` to another IOAS/HWPT.
    pub const MOCK_DOMAIN_REPLACE: u32 = 10;
    /// Read an IOTLB entry of a mock nested HWPT.
    #[cfg(feature = "test-support")]
    pub const MD_CHECK_IOTLB: u32 = 14;
    /// Raise a page request from a mock device.
    #[cfg(feature = "test-support")]
    pub const TRIGGER_IOPF: u32 = 15;
    /// Compare one cache entry of a mock device (vIOMMU invalidation target).
    #[cfg(feature = "test-support")]
    pub const DEV_CHECK_CACHE: u32 = 16;
    /// Report a vEVENT for a mock device through its vIOMMU.
    #[cfg(feature = "test-support")]
    pub const TRIGGER_VEVENT: u32 = 17;
}

/// Issues `IOMMU_TEST_CMD` with `op`, `id` and up to six u64 payload words (the union, in the
/// uAPI's native layout); returns the payload as the kernel left it.
pub fn test_cmd(fd: &File, op: u32, id: u32, payload: [u64; 6]) -> io::Result<[u64; 6]> {
    let mut arg = TestCmd {
        size: size32::<TestCmd>(),
        op,
        id,
        payload,
        ..Default::default()
    };
    // SAFETY: `arg` is a valid 72-byte `iommu_test_cmd`. Ops that take user pointers
    // (MD_CHECK_MAP's `uptr`) only read them, and the callers pass addresses of live memory.
    check(unsafe { ioctl_with_mut_ref(fd, IOMMU_TEST_CMD, &mut arg) })?;
    Ok(arg.payload)
}

/// Packs two u32 into one payload word the way a C struct of two u32 lays them out.
#[must_use]
pub fn pack32(lo: u32, hi: u32) -> u64 {
    if cfg!(target_endian = "little") {
        u64::from(lo) | (u64::from(hi) << 32)
    } else {
        (u64::from(lo) << 32) | u64::from(hi)
    }
}

/// The two u32 of a payload word (inverse of [`pack32`]).
#[must_use]
#[allow(clippy::cast_possible_truncation)] // both halves are masked/shifted to 32 bits
pub fn unpack32(w: u64) -> (u32, u32) {
    let (a, b) = ((w & 0xffff_ffff) as u32, (w >> 32) as u32);
    if cfg!(target_endian = "little") {
        (a, b)
    } else {
        (b, a)
    }
}

// ---- vIOMMU objects (6.13+; vEVENTQ 6.15+) ------------------------------------------------

const IOMMU_VIOMMU_ALLOC: c_ulong = io(IOMMUFD_TYPE, b::IOMMUFD_CMD_VIOMMU_ALLOC);
const IOMMU_VDEVICE_ALLOC: c_ulong = io(IOMMUFD_TYPE, b::IOMMUFD_CMD_VDEVICE_ALLOC);
const IOMMU_VEVENTQ_ALLOC: c_ulong = io(IOMMUFD_TYPE, b::IOMMUFD_CMD_VEVENTQ_ALLOC);

const _: () = {
    assert!(size_of::<b::iommu_viommu_alloc>() == 40);
    assert!(size_of::<b::iommu_vdevice_alloc>() == 24);
    assert!(size_of::<b::iommu_veventq_alloc>() == 32);
    assert!(size_of::<b::iommufd_vevent_header>() == 8);
};

/// `IOMMU_VIOMMU_ALLOC` of `ty` on the NEST_PARENT HWPT `parent` (no driver data): the ID.
pub fn viommu_alloc(fd: &File, ty: u32, dev_id: u32, parent: u32) -> io::Result<u32> {
    let mut arg = b::iommu_viommu_alloc {
        size: size32::<b::iommu_viommu_alloc>(),
        type_: ty,
        dev_id,
        hwpt_id: parent,
        ..Default::default()
    };
    // SAFETY: `arg` is a valid `iommu_viommu_alloc` without a data pointer (data_len 0); the
    // kernel writes only inside it.
    check(unsafe { ioctl_with_mut_ref(fd, IOMMU_VIOMMU_ALLOC, &mut arg) })?;
    Ok(arg.out_viommu_id)
}

/// `IOMMU_VDEVICE_ALLOC`: device `dev_id` is `virt_id` (the vSID) behind vIOMMU `viommu`.
pub fn vdevice_alloc(fd: &File, viommu: u32, dev_id: u32, virt_id: u64) -> io::Result<u32> {
    let mut arg = b::iommu_vdevice_alloc {
        size: size32::<b::iommu_vdevice_alloc>(),
        viommu_id: viommu,
        dev_id,
        virt_id,
        ..Default::default()
    };
    // SAFETY: `arg` is a valid `iommu_vdevice_alloc`; the kernel writes only inside it.
    check(unsafe { ioctl_with_mut_ref(fd, IOMMU_VDEVICE_ALLOC, &mut arg) })?;
    Ok(arg.out_vdevice_id)
}

/// `IOMMU_VEVENTQ_ALLOC` of `ty` on `viommu`: the queue ID and its fd, made non-blocking.
pub fn veventq_alloc(fd: &File, viommu: u32, ty: u32, depth: u32) -> io::Result<(u32, File)> {
    let mut arg = b::iommu_veventq_alloc {
        size: size32::<b::iommu_veventq_alloc>(),
        viommu_id: viommu,
        type_: ty,
        veventq_depth: depth,
        ..Default::default()
    };
    // SAFETY: `arg` is a valid `iommu_veventq_alloc`; the kernel writes only inside it.
    check(unsafe { ioctl_with_mut_ref(fd, IOMMU_VEVENTQ_ALLOC, &mut arg) })?;
    let raw = RawFd::try_from(arg.out_veventq_fd)
        .map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: on success the kernel installed a new fd for us in `out_veventq_fd`; nothing
    // else owns it, so taking ownership exactly once is sound.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    set_nonblocking(&file)?;
    Ok((arg.out_veventq_id, file))
}
