//! An endpoint's host device bound to the iommufd: a VFIO cdev, or a selftest mock device
//! (`IOMMU_TEST_CMD` MOCK_DOMAIN) that stands in for one on kernels built with IOMMUFD_TEST.
//! Both attach with replace semantics; they differ in the ioctls.

use std::fs::File;
use std::io;

use iommufd_bindings as b;
use log::{debug, info, warn};

use super::error::{ioctl_err, IommufdError};
use super::ranges;
use super::sys::{self, pack32, test_op, unpack32, HwInfo};
use crate::host::{AttachTarget, ReservedRegion};

/// What kind of device backs an endpoint.
#[derive(Debug)]
pub enum DeviceKind {
    /// A VFIO cdev bound with `VFIO_DEVICE_BIND_IOMMUFD`.
    Vfio {
        /// The open cdev (closing it unbinds the device).
        file: File,
        /// Where it came from, for messages.
        what: String,
    },
    /// A selftest mock device; its `stdev_id` is destroyed to remove it.
    Mock {
        /// The selftest device object ID.
        stdev_id: u32,
    },
}

/// A bound device and what the backend knows about it.
#[derive(Debug)]
pub struct BoundDevice {
    /// The device.
    pub kind: DeviceKind,
    /// Its iommufd device ID.
    pub dev_id: u32,
    /// What the engine attached its requests without PASID to (`None`: the unattached default).
    pub target: Option<AttachTarget>,
    /// The HWPT the kernel reports the device is attached to (`None`: detached/blocked).
    pub hwpt: Option<u32>,
    /// `IOMMU_GET_HW_INFO`, if the kernel answered it.
    pub hw_info: Option<HwInfo>,
    /// Host reserved regions (complement of the device's allowed IOVA ranges).
    pub reserved: Vec<ReservedRegion>,
    /// Minimum IOVA alignment for map/copy.
    pub iova_alignment: u64,
    /// Why nesting is unavailable (`None`: NEST_PARENT works on this device's IOMMU).
    pub no_nesting: Option<String>,
}

impl BoundDevice {
    /// Creates the bound-device record with nothing probed yet.
    #[must_use]
    pub fn new(kind: DeviceKind, dev_id: u32) -> Self {
        BoundDevice {
            kind,
            dev_id,
            target: None,
            hwpt: None,
            hw_info: None,
            reserved: Vec::new(),
            iova_alignment: 1,
            no_nesting: Some("not probed".into()),
        }
    }

    /// Probes the freshly bound device of `endpoint`: HW info, reserved ranges (seen through
    /// an attach to `empty_ioas`) and whether NEST_PARENT over `master_ioas` works. A `dev_id`
    /// of 0 (never a valid iommufd ID) means unknown: no HW info and no nesting.
    ///
    /// # Errors
    /// The attach or `IOMMU_IOAS_IOVA_RANGES` failing.
    pub fn probe(
        &mut self,
        endpoint: u32,
        iommufd: &File,
        empty_ioas: u32,
        master_ioas: u32,
    ) -> Result<(), IommufdError> {
        self.hw_info = match self.dev_id {
            0 => None,
            id => sys::get_hw_info(iommufd, id, 256)
                .inspect_err(|e| {
                    info!("endpoint {endpoint}: IOMMU_GET_HW_INFO: {e} (no host IOMMU details)");
                })
                .ok(),
        };
        // The device's reserved ranges show in an IOAS it is attached to; use the empty one.
        self.attach(iommufd, empty_ioas, None)
            .map_err(ioctl_err("attach to an empty IOAS"))?;
        let (allowed, align) = sys::ioas_iova_ranges(iommufd, empty_ioas)
            .map_err(ioctl_err("IOMMU_IOAS_IOVA_RANGES"))?;
        self.reserved = ranges::reserved_from_allowed(&allowed, cfg!(target_arch = "x86_64"));
        self.iova_alignment = align.max(1);
        self.no_nesting = if self.dev_id == 0 {
            Some("the iommufd device ID is unknown".into())
        } else {
            probe_nesting(iommufd, self.dev_id, master_ioas)
        };
        match &self.no_nesting {
            None => info!("endpoint {endpoint}: host IOMMU supports nesting (NEST_PARENT)"),
            Some(why) => info!(
                "endpoint {endpoint}: host IOMMU cannot nest ({why}); using the flat model \
                 (guest MAP/UNMAP copied into host IOASes)"
            ),
        }
        debug!(
            "endpoint {endpoint}: reserved {:?}, IOVA alignment {align:#x}",
            self.reserved
        );
        Ok(())
    }

    /// Points the device (or one PASID) at `pt_id` (IOAS or HWPT), replacing the current
    /// attachment. Returns the HWPT now in use.
    pub fn attach(&mut self, iommufd: &File, pt_id: u32, pasid: Option<u32>) -> io::Result<u32> {
        let hwpt = match &self.kind {
            DeviceKind::Vfio { file, .. } => sys::vfio_attach(file, pt_id, pasid)?,
            DeviceKind::Mock { stdev_id } => {
                if pasid.is_some() {
                    return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
                }
                let out = sys::test_cmd(
                    iommufd,
                    test_op::MOCK_DOMAIN_REPLACE,
                    *stdev_id,
                    [pack32(pt_id, 0), 0, 0, 0, 0, 0],
                )?;
                unpack32(out[0]).0
            }
        };
        if pasid.is_none() {
            self.hwpt = Some(hwpt);
        }
        Ok(hwpt)
    }

    /// Blocks the device's (or one PASID's) DMA. Mock devices cannot detach, so they are moved
    /// to `empty_ioas`, an IOAS without mappings.
    pub fn block(&mut self, iommufd: &File, pasid: Option<u32>, empty_ioas: u32) -> io::Result<()> {
        match &self.kind {
            DeviceKind::Vfio { file, .. } => sys::vfio_detach(file, pasid)?,
            DeviceKind::Mock { .. } => {
                self.attach(iommufd, empty_ioas, pasid)?;
            }
        }
        if pasid.is_none() {
            self.hwpt = None;
        }
        Ok(())
    }

    /// Readable description for log messages.
    #[must_use]
    pub fn describe(&self) -> String {
        match &self.kind {
            DeviceKind::Vfio { what, .. } => what.clone(),
            DeviceKind::Mock { stdev_id } => format!("selftest mock device {stdev_id}"),
        }
    }
}

/// `None` if NEST_PARENT over `master_ioas` works for `dev_id`, else why not.
fn probe_nesting(iommufd: &File, dev_id: u32, master_ioas: u32) -> Option<String> {
    let flags = b::iommufd_hwpt_alloc_flags_IOMMU_HWPT_ALLOC_NEST_PARENT;
    match sys::hwpt_alloc(iommufd, flags, dev_id, master_ioas, 0, &[], None) {
        Ok(id) => {
            if let Err(e) = sys::destroy(iommufd, id) {
                warn!("destroying the NEST_PARENT probe HWPT {id}: {e}");
            }
            None
        }
        Err(e) => Some(match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) => format!("NEST_PARENT refused with EOPNOTSUPP: {e}"),
            Some(libc::ENOTTY) => "the kernel has no IOMMU_HWPT_ALLOC (too old)".into(),
            _ => format!("NEST_PARENT failed: {e}"),
        }),
    }
}
