//! Probes for tests against a real kernel: the iommufd selftest mock (`IOMMU_TEST_CMD`, only
//! in kernels built with `CONFIG_IOMMUFD_TEST`) and a few read-only object checks. Built only
//! with the `test-support` feature: nothing here is used by the daemon itself.

use std::fs::File;
use std::io;

pub use super::sys::RegionInfo;
use super::sys::{self, pack32, test_op};

/// What a VMM's vfio-pci does with a device before the daemon takes over (for tests that
/// play the VMM beside a backend sharing its iommufd): bind, an IOAS of its own with its RAM
/// mapped at IOVA = GPA, attach.
pub mod vmm {
    use std::fs::File;
    use std::io;

    use iommufd_bindings as b;

    use super::sys;

    /// `VFIO_DEVICE_BIND_IOMMUFD`: returns the device ID.
    ///
    /// # Errors
    /// The ioctl's errno.
    pub fn bind(dev: &File, iommufd: &File) -> io::Result<u32> {
        sys::vfio_bind(dev, iommufd)
    }

    /// `IOMMU_IOAS_ALLOC`.
    ///
    /// # Errors
    /// The ioctl's errno.
    pub fn ioas_alloc(iommufd: &File) -> io::Result<u32> {
        sys::ioas_alloc(iommufd)
    }

    /// `IOMMU_IOAS_MAP` (read/write, fixed IOVA) of this process's memory at `va`.
    ///
    /// # Errors
    /// The ioctl's errno.
    pub fn ioas_map(iommufd: &File, ioas: u32, va: u64, len: u64, iova: u64) -> io::Result<()> {
        let rw = b::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE
            | b::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE;
        sys::ioas_map_va(iommufd, ioas, va, len, iova, rw)
    }

    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`: returns the HWPT in use.
    ///
    /// # Errors
    /// The ioctl's errno.
    pub fn attach(dev: &File, pt_id: u32) -> io::Result<u32> {
        sys::vfio_attach(dev, pt_id, None)
    }
}

/// `IOMMU_HWPT_DATA_SELFTEST`: nested HWPT data type of the mock driver.
pub const HWPT_DATA_SELFTEST: u32 = 0xdead;
/// `IOMMU_TEST_IOTLB_DEFAULT`: initial value of every mock nested IOTLB entry.
pub const IOTLB_DEFAULT: u32 = 0x0bad_beef;
/// `IOMMU_HWPT_INVALIDATE_DATA_SELFTEST`: invalidation data type of the mock driver.
pub const INVALIDATE_DATA_SELFTEST: u32 = 0xdead_beef;
/// `IOMMU_TEST_INVALIDATE_FLAG_ALL`.
pub const INVALIDATE_FLAG_ALL: u32 = 1;
/// Mock IOMMU aperture: first IOVA.
pub const MOCK_APERTURE_START: u64 = 1 << 24;
/// Mock IOMMU aperture: last IOVA.
pub const MOCK_APERTURE_LAST: u64 = (1 << 31) - 1;

/// `struct iommu_hwpt_selftest {iotlb, pagetable_type}` bytes.
#[must_use]
pub fn hwpt_selftest_data(iotlb: u32) -> Vec<u8> {
    let mut d = iotlb.to_ne_bytes().to_vec();
    d.extend_from_slice(&0u32.to_ne_bytes());
    d
}

/// `struct iommu_hwpt_invalidate_selftest {flags, iotlb_id}` bytes.
#[must_use]
pub fn invalidate_selftest_entry(flags: u32, iotlb_id: u32) -> Vec<u8> {
    let mut d = flags.to_ne_bytes().to_vec();
    d.extend_from_slice(&iotlb_id.to_ne_bytes());
    d
}

/// `IOMMU_TEST_OP_TRIGGER_IOPF`: the mock device `dev_id` raises a page request.
///
/// # Errors
/// The ioctl's errno (e.g. `EINVAL` if the device's HWPT has no fault queue).
pub fn trigger_iopf(
    iommufd: &File,
    dev_id: u32,
    pasid: u32,
    grpid: u32,
    perm: u32,
    addr: u64,
) -> io::Result<()> {
    let p = [pack32(dev_id, pasid), pack32(grpid, perm), addr, 0, 0, 0];
    sys::test_cmd(iommufd, test_op::TRIGGER_IOPF, 0, p).map(|_| ())
}

/// `IOMMU_TEST_OP_MD_CHECK_MAP`: whether mock HWPT `hwpt` maps `[iova, iova+len)` to the same
/// pages as this process's memory at address `uptr` (the kernel pins and compares them; an
/// unmapped `uptr` gives `EFAULT`).
///
/// # Errors
/// The ioctl's errno: `EINVAL` when the mapping is absent or points elsewhere.
pub fn md_check_map(iommufd: &File, hwpt: u32, iova: u64, len: u64, uptr: u64) -> io::Result<()> {
    sys::test_cmd(
        iommufd,
        test_op::MD_CHECK_MAP,
        hwpt,
        [iova, len, uptr, 0, 0, 0],
    )
    .map(|_| ())
}

/// `IOMMU_TEST_OP_MD_CHECK_IOTLB`: whether IOTLB entry `index` of mock nested HWPT `hwpt`
/// holds `value`.
///
/// # Errors
/// `EINVAL` on a mismatch.
pub fn md_check_iotlb(iommufd: &File, hwpt: u32, index: u32, value: u32) -> io::Result<()> {
    sys::test_cmd(
        iommufd,
        test_op::MD_CHECK_IOTLB,
        hwpt,
        [pack32(index, value), 0, 0, 0, 0, 0],
    )
    .map(|_| ())
}

/// Whether IOAS `id` exists (`IOMMU_IOAS_IOVA_RANGES` answers instead of `ENOENT`).
#[must_use]
pub fn ioas_exists(iommufd: &File, id: u32) -> bool {
    sys::ioas_iova_ranges(iommufd, id).is_ok()
}

/// Whether nested HWPT `id` exists: a zero-entry `IOMMU_HWPT_INVALIDATE` of `data_type` (the
/// kernel's support probe) fails with `ENOENT` only for a missing object.
#[must_use]
pub fn hwpt_exists(iommufd: &File, id: u32, data_type: u32) -> bool {
    !matches!(sys::hwpt_invalidate(iommufd, id, data_type, 8, &[]), Err((e, _)) if e.raw_os_error() == Some(libc::ENOENT))
}

/// `IOMMU_TEST_DEV_CACHE_DEFAULT`: initial value of every mock device cache entry (what a
/// vIOMMU invalidation clears).
pub const DEV_CACHE_DEFAULT: u32 = 0x00ba_ddad;
/// `IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST`: vIOMMU invalidation data type of the mock.
pub const VIOMMU_INVALIDATE_DATA_SELFTEST: u32 = 0xdead_beef;

/// `IOMMU_TEST_OP_DEV_CHECK_CACHE`: whether cache entry `index` of mock device `dev_id`
/// holds `value`.
///
/// # Errors
/// `EINVAL` on a mismatch.
pub fn dev_check_cache(iommufd: &File, dev_id: u32, index: u32, value: u32) -> io::Result<()> {
    let p = [pack32(index, value), 0, 0, 0, 0, 0];
    sys::test_cmd(iommufd, test_op::DEV_CHECK_CACHE, dev_id, p).map(|_| ())
}

/// `IOMMU_TEST_OP_TRIGGER_VEVENT`: mock device `dev_id` reports a vEVENT (its vSID) through
/// the vIOMMU of its nested HWPT.
///
/// # Errors
/// `ENOENT` if the device is not attached to a vIOMMU's table or its vSID is 0.
pub fn trigger_vevent(iommufd: &File, dev_id: u32) -> io::Result<()> {
    let p = [pack32(dev_id, 0), 0, 0, 0, 0, 0];
    sys::test_cmd(iommufd, test_op::TRIGGER_VEVENT, 0, p).map(|_| ())
}

/// Whether object `id` is gone: `IOMMU_DESTROY` answers `ENOENT`. Destroys it otherwise, so
/// only call it where the object must already be gone.
#[must_use]
pub fn destroyed(iommufd: &File, id: u32) -> bool {
    matches!(sys::destroy(iommufd, id), Err(e) if e.raw_os_error() == Some(libc::ENOENT))
}

/// Whether vIOMMU `id` exists: a zero-entry selftest invalidation on it succeeds.
#[must_use]
pub fn viommu_exists(iommufd: &File, id: u32) -> bool {
    sys::hwpt_invalidate(iommufd, id, VIOMMU_INVALIDATE_DATA_SELFTEST, 12, &[]).is_ok()
}

/// `VFIO_DEVICE_GET_REGION_INFO` on a VFIO device fd.
///
/// # Errors
/// The ioctl's errno.
pub fn vfio_region_info(dev: &File, index: u32) -> io::Result<RegionInfo> {
    sys::vfio_region_info(dev, index)
}
