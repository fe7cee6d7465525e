//! The Linux iommufd host backend: the engine's address spaces become iommufd IOASes and its
//! endpoints VFIO devices (or selftest mock devices), so guest MAP/UNMAP program the real IOMMU.
//!
//! Flat model (every IOMMU): guest memory is mapped once into a *master* IOAS at IOVA = GPA
//! ([`HostIommu::set_guest_memory`]); a guest MAP is an `IOMMU_IOAS_COPY` of the pinned pages
//! from the master into the domain's IOAS, UNMAP is `IOMMU_IOAS_UNMAP`; ATTACH is a VFIO attach
//! with replace semantics; bypass attaches to the master; blocked detaches.
//!
//! Nested model (IOMMUs whose driver accepts `IOMMU_HWPT_ALLOC_NEST_PARENT`): a parent HWPT over
//! the master (or a domain's) IOAS, guest tables as nested HWPTs, invalidation through
//! `IOMMU_HWPT_INVALIDATE`, page requests from a fault queue. Nesting is probed per device at
//! bind time; where it is refused (e.g. QEMU's emulated VT-d: `EOPNOTSUPP`) the backend says so
//! once and the flat model stays in use.
//!
//! Every kernel object is destroyed by the operation that ends its use and, at the latest, on
//! drop. All `unsafe` lives in [`sys`].

pub mod bound_device;
pub mod error;
pub mod fault;
mod guest_memory;
mod host_impl;
mod nesting;
pub mod ranges;
pub mod selftest;
pub mod smmuv3_encode;
mod sys;
pub mod vfio_endpoint;
mod vmm_bound;
mod vsmmu;
mod vtd;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use iommufd_bindings as b;
use log::{debug, error, info, warn};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

#[cfg(doc)] // Only named in doc links.
use super::HostIommu;
use super::ReservedRegion;
use bound_device::{BoundDevice, DeviceKind};
use error::ioctl_err;
pub use error::IommufdError;
use fault::FaultQueue;
use nesting::{Nested, Parent};
pub use sys::{HwInfo, RegionInfo};
pub use vfio_endpoint::{VfioEndpoint, VfioSource};
use vmm_bound::WaitingDevice;
pub use vsmmu::SmmuIds;

/// Configuration of the iommufd backend.
#[derive(Debug, Clone, Default)]
pub struct IommufdConfig {
    /// The VFIO devices, one per endpoint.
    pub endpoints: Vec<VfioEndpoint>,
    /// Arm nested tables with a fault queue so page requests reach the guest.
    pub page_requests: bool,
    /// Share the VMM's iommufd: this inherited fd is the same open `/dev/iommu` file the VMM
    /// uses (QEMU `-object iommufd,fd=`). The VMM then binds every device (`fd:N` sources
    /// only; each device is installed once its bind is seen, in the `vmm_bound` module).
    pub iommufd_fd: Option<i32>,
}

/// A guest memory region mapped into the master IOAS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestMapping {
    /// Guest-physical (= master IOVA) start.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// Mapped from the region's memfd with `IOMMU_IOAS_MAP_FILE` (else from the daemon's VA).
    pub by_file: bool,
}

/// A selftest mock device's object IDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MockIds {
    /// The selftest device object (MOCK_DOMAIN_REPLACE target, destroyed on removal).
    pub stdev_id: u32,
    /// The iommufd device ID (as VFIO's bind would return).
    pub dev_id: u32,
}

/// The iommufd host IOMMU. See the module documentation.
#[derive(Debug)]
pub struct IommufdHost {
    fd: File,
    master: u32,
    /// An IOAS that never holds mappings: where mock devices go when "detached".
    empty: u32,
    guest: Vec<GuestMapping>,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    spaces: BTreeMap<u32, ()>,
    devices: BTreeMap<u32, BoundDevice>,
    unattached_bypass: bool,
    parents: BTreeMap<u32, Parent>,
    tables: BTreeMap<u32, Nested>,
    faults: Option<FaultQueue>,
    page_requests: bool,
    /// VMM-bound devices whose bind has not been seen yet (shared iommufd only).
    waiting: BTreeMap<u32, WaitingDevice>,
    /// SMMUv3-style nesting: vIOMMUs, vDEVICEs, vEVENTQs.
    smmu: vsmmu::VsmmuObjects,
    /// Epoll set of the host's event fds (fault queue, vEVENTQs), for the daemon to poll.
    events: File,
}

impl IommufdHost {
    /// Opens `/dev/iommu` (or takes the shared `iommufd_fd`), allocates the master IOAS and
    /// binds every configured VFIO device. With a shared iommufd the devices are not bound
    /// here: the VMM binds them, and each is installed once its bind is seen.
    ///
    /// # Errors
    /// A missing `/dev/iommu`, an unusable device or a failed bind, with a hint; with a
    /// shared iommufd, a device source other than `fd:N`.
    pub fn open(cfg: &IommufdConfig) -> Result<Self, IommufdError> {
        let fd = match cfg.iommufd_fd {
            Some(n) => sys::take_inherited_fd(n)
                .map_err(|err| IommufdError::BadIommufdFd { fd: n, err })?,
            None => OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/iommu")
                .map_err(|err| IommufdError::OpenIommufd { err })?,
        };
        let master = sys::ioas_alloc(&fd).map_err(ioctl_err("IOMMU_IOAS_ALLOC"))?;
        let empty = sys::ioas_alloc(&fd).map_err(ioctl_err("IOMMU_IOAS_ALLOC"))?;
        let mut host = IommufdHost {
            fd,
            master,
            empty,
            guest: Vec::new(),
            mem: None,
            spaces: BTreeMap::new(),
            devices: BTreeMap::new(),
            unattached_bypass: false,
            parents: BTreeMap::new(),
            tables: BTreeMap::new(),
            faults: None,
            page_requests: cfg.page_requests,
            waiting: BTreeMap::new(),
            smmu: vsmmu::VsmmuObjects::default(),
            events: sys::epoll_new().map_err(ioctl_err("epoll_create1"))?,
        };
        for ep in &cfg.endpoints {
            if cfg.iommufd_fd.is_some() {
                host.add_vmm_bound_endpoint(ep)?;
            } else {
                host.add_vfio_endpoint(ep)?;
            }
        }
        // A VMM that started first has bound its devices already.
        host.install_vmm_bound(None);
        Ok(host)
    }

    /// Takes the open device file of a VMM-bound endpoint (shared iommufd); it is installed
    /// once the VMM has bound it.
    ///
    /// # Errors
    /// A source other than `fd:N` (a fresh open would be a file nobody binds), a bad fd or a
    /// duplicate endpoint.
    pub fn add_vmm_bound_endpoint(&mut self, ep: &VfioEndpoint) -> Result<(), IommufdError> {
        self.check_new_endpoint(ep.endpoint)?;
        if !matches!(ep.source, VfioSource::Fd(_)) {
            return Err(IommufdError::SharedNeedsFd(ep.endpoint));
        }
        let (what, file) = ep.open()?;
        self.waiting
            .insert(ep.endpoint, WaitingDevice { file, what });
        Ok(())
    }

    /// `DuplicateEndpoint` if `endpoint` already has a device (bound or waiting for its bind).
    fn check_new_endpoint(&self, endpoint: u32) -> Result<(), IommufdError> {
        if self.devices.contains_key(&endpoint) || self.waiting.contains_key(&endpoint) {
            return Err(IommufdError::DuplicateEndpoint(endpoint));
        }
        Ok(())
    }

    /// Whether `endpoint` is a VMM-bound device whose bind has not been seen yet.
    #[must_use]
    pub fn is_waiting(&self, endpoint: u32) -> bool {
        self.waiting.contains_key(&endpoint)
    }

    /// Opens and binds one more VFIO device.
    ///
    /// # Errors
    /// As [`IommufdHost::open`]; also a duplicate endpoint.
    pub fn add_vfio_endpoint(&mut self, ep: &VfioEndpoint) -> Result<(), IommufdError> {
        self.check_new_endpoint(ep.endpoint)?;
        let (what, file) = ep.open()?;
        let dev_id = sys::vfio_bind(&file, &self.fd).map_err(|err| IommufdError::Bind {
            endpoint: ep.endpoint,
            what: what.clone(),
            err,
        })?;
        info!(
            "endpoint {}: {what} bound to iommufd as device {dev_id}",
            ep.endpoint
        );
        let dev = BoundDevice::new(DeviceKind::Vfio { file, what }, dev_id);
        self.install(ep.endpoint, dev)
    }

    /// Creates a selftest mock device (kernels with `CONFIG_IOMMUFD_TEST`) for `endpoint`.
    ///
    /// # Errors
    /// `IOMMU_TEST_CMD` failures (`ENOTTY` without the selftest), a duplicate endpoint.
    pub fn add_mock_endpoint(&mut self, endpoint: u32) -> Result<MockIds, IommufdError> {
        self.check_new_endpoint(endpoint)?;
        let out = sys::test_cmd(&self.fd, sys::test_op::MOCK_DOMAIN, self.empty, [0; 6])
            .map_err(ioctl_err("IOMMU_TEST_CMD(MOCK_DOMAIN)"))?;
        let (stdev_id, hwpt) = sys::unpack32(out[0]);
        let dev_id = sys::unpack32(out[1]).0;
        let mut dev = BoundDevice::new(DeviceKind::Mock { stdev_id }, dev_id);
        dev.hwpt = Some(hwpt);
        self.install(endpoint, dev)?;
        Ok(MockIds { stdev_id, dev_id })
    }

    /// Probes a freshly bound device (hw info, reserved ranges, nesting) and applies the
    /// unattached default to it. A `dev_id` of 0 (never a valid iommufd ID) means unknown: no HW info and no nesting.
    fn install(&mut self, endpoint: u32, mut dev: BoundDevice) -> Result<(), IommufdError> {
        dev.hw_info = match dev.dev_id {
            0 => None,
            id => sys::get_hw_info(&self.fd, id, 256)
                .inspect_err(|e| {
                    info!("endpoint {endpoint}: IOMMU_GET_HW_INFO: {e} (no host IOMMU details)");
                })
                .ok(),
        };
        // The device's reserved ranges show in an IOAS it is attached to; use the empty one.
        dev.attach(&self.fd, self.empty, None)
            .map_err(ioctl_err("attach to an empty IOAS"))?;
        let (allowed, align) = sys::ioas_iova_ranges(&self.fd, self.empty)
            .map_err(ioctl_err("IOMMU_IOAS_IOVA_RANGES"))?;
        dev.reserved = ranges::reserved_from_allowed(&allowed, cfg!(target_arch = "x86_64"));
        dev.iova_alignment = align.max(1);
        dev.no_nesting = if dev.dev_id == 0 {
            Some("the iommufd device ID is unknown".into())
        } else {
            self.probe_nesting(dev.dev_id)
        };
        match &dev.no_nesting {
            None => info!("endpoint {endpoint}: host IOMMU supports nesting (NEST_PARENT)"),
            Some(why) => info!(
                "endpoint {endpoint}: host IOMMU cannot nest ({why}); using the flat model \
                 (guest MAP/UNMAP copied into host IOASes)"
            ),
        }
        debug!(
            "endpoint {endpoint}: reserved {:?}, IOVA alignment {align:#x}",
            dev.reserved
        );
        let apply = self.apply_default(&mut dev);
        self.devices.insert(endpoint, dev);
        apply.map_err(ioctl_err("applying the unattached default"))
    }

    /// `None` if NEST_PARENT works for `dev_id`, else why not.
    fn probe_nesting(&self, dev_id: u32) -> Option<String> {
        let flags = b::iommufd_hwpt_alloc_flags_IOMMU_HWPT_ALLOC_NEST_PARENT;
        match sys::hwpt_alloc(&self.fd, flags, dev_id, self.master, 0, &[], None) {
            Ok(id) => {
                if let Err(e) = sys::destroy(&self.fd, id) {
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

    fn apply_default(&self, dev: &mut BoundDevice) -> io::Result<()> {
        if self.unattached_bypass {
            dev.attach(&self.fd, self.master, None).map(|_| ())
        } else {
            dev.block(&self.fd, None, self.empty)
        }
    }

    /// The iommufd (for callers that add their own objects, and for tests).
    #[must_use]
    pub fn iommufd(&self) -> &File {
        &self.fd
    }

    /// The IOAS holding guest memory at IOVA = GPA.
    #[must_use]
    pub fn master_ioas(&self) -> u32 {
        self.master
    }

    /// The iommufd device ID of `endpoint`.
    #[must_use]
    pub fn dev_id(&self, endpoint: u32) -> Option<u32> {
        self.devices.get(&endpoint).map(|d| d.dev_id)
    }

    /// The HWPT the kernel says `endpoint` is attached to (`None`: blocked or unknown).
    #[must_use]
    pub fn attached_hwpt(&self, endpoint: u32) -> Option<u32> {
        self.devices.get(&endpoint)?.hwpt
    }

    /// The host reserved regions of `endpoint` (complement of its allowed IOVA ranges, the x86
    /// MSI window typed MSI), for PROBE `RESV_MEM` properties.
    #[must_use]
    pub fn reserved_regions(&self, endpoint: u32) -> Option<&[ReservedRegion]> {
        self.devices.get(&endpoint).map(|d| d.reserved.as_slice())
    }

    /// Every endpoint with its host reserved regions (to merge into the device config). A
    /// VMM-bound endpoint not bound yet gets what every host of this architecture reserves.
    #[must_use]
    pub fn all_reserved_regions(&self) -> Vec<(u32, Vec<ReservedRegion>)> {
        let waiting = self
            .waiting
            .keys()
            .map(|ep| (*ep, vmm_bound::vmm_bound_reserved()));
        self.devices
            .iter()
            .map(|(ep, d)| (*ep, d.reserved.clone()))
            .chain(waiting)
            .collect()
    }

    /// The page-size mask the host can map for `endpoint`: every power of two from its IOVA
    /// alignment up (at least 4 KiB, the smallest page a guest maps).
    #[must_use]
    pub fn page_size_mask(&self, endpoint: u32) -> Option<u64> {
        let align = self.devices.get(&endpoint)?.iova_alignment.max(4096);
        Some(!(align.next_power_of_two() - 1))
    }

    /// `IOMMU_GET_HW_INFO` of `endpoint`'s IOMMU.
    #[must_use]
    pub fn hw_info(&self, endpoint: u32) -> Option<&HwInfo> {
        self.devices.get(&endpoint)?.hw_info.as_ref()
    }

    /// Whether `endpoint`'s IOMMU nests: `Ok(())`, or the reason it cannot.
    ///
    /// # Errors
    /// The reason text (e.g. NEST_PARENT refused with `EOPNOTSUPP`); "unknown endpoint".
    pub fn nesting(&self, endpoint: u32) -> Result<(), String> {
        match self.devices.get(&endpoint) {
            None => Err("unknown endpoint".into()),
            Some(d) => d.no_nesting.clone().map_or(Ok(()), Err),
        }
    }

    /// The fault queue's own fd (the daemon polls [`IommufdHost::events_fd`], which covers it).
    #[must_use]
    pub fn fault_fd(&self) -> Option<BorrowedFd<'_>> {
        self.faults.as_ref().map(|q| q.file().as_fd())
    }

    /// Allocates the fault queue now (it is otherwise created with the first fault-capable
    /// table), so that a missing kernel feature shows at start-up.
    ///
    /// # Errors
    /// `IOMMU_FAULT_QUEUE_ALLOC` failures (`ENOTTY` before Linux 6.11).
    pub fn alloc_fault_queue(&mut self) -> Result<(), IommufdError> {
        self.fault_queue()
            .map(|_| ())
            .map_err(ioctl_err("IOMMU_FAULT_QUEUE_ALLOC"))
    }

    /// A duplicate of the fd that is readable while the host has events for the guest (page
    /// requests on the fault queue, vEVENTQ records; queues created later join it): on
    /// EPOLLIN, call [`HostIommu::poll_event`] (e.g. `Engine::poll_host`) until it returns
    /// `None`.
    ///
    /// # Errors
    /// The dup failing.
    pub fn events_fd(&self) -> Result<File, IommufdError> {
        self.events
            .try_clone()
            .map_err(ioctl_err("dup(host events epoll fd)"))
    }

    /// Adds a new event queue's fd to the set [`IommufdHost::events_fd`] stands for.
    fn watch_events(&self, file: &File, what: &str) {
        if let Err(e) = sys::epoll_watch(&self.events, file) {
            error!("watching the {what} fd: {e}; its events reach the guest only with others");
        }
    }

    /// Number of page-request groups waiting for the guest's answer.
    #[must_use]
    pub fn pending_page_requests(&self) -> usize {
        self.faults.as_ref().map_or(0, FaultQueue::pending_groups)
    }

    /// Removes `endpoint`'s device: detached and unbound (its fd closed) or, for a mock,
    /// destroyed. Its pending page requests are dropped.
    pub fn remove_endpoint(&mut self, endpoint: u32) {
        self.waiting.remove(&endpoint);
        if let Some(dev) = self.devices.remove(&endpoint) {
            self.release(endpoint, dev);
        }
    }

    fn release(&mut self, endpoint: u32, mut dev: BoundDevice) {
        // A vDEVICE must go before its device is unbound.
        self.release_vdevices(endpoint);
        if let Some(q) = &mut self.faults {
            q.forget_endpoint(endpoint);
        }
        match &dev.kind {
            DeviceKind::Vfio { .. } => {
                if let Err(e) = dev.block(&self.fd, None, self.empty) {
                    warn!("endpoint {endpoint}: detach on removal: {e}");
                }
            }
            DeviceKind::Mock { stdev_id } => {
                if let Err(e) = sys::destroy(&self.fd, *stdev_id) {
                    warn!("endpoint {endpoint}: destroying mock device {stdev_id}: {e}");
                }
            }
        }
    }

    /// Re-applies the unattached default to every endpoint the guest has not attached.
    fn set_default_all(&mut self) {
        let eps: Vec<u32> = self
            .devices
            .iter()
            .filter(|(_, d)| d.target.is_none())
            .map(|(e, _)| *e)
            .collect();
        for ep in eps {
            if let Some(mut dev) = self.devices.remove(&ep) {
                if let Err(e) = self.apply_default(&mut dev) {
                    error!("endpoint {ep}: applying the unattached default: {e}");
                }
                self.devices.insert(ep, dev);
            }
        }
    }
}

impl Drop for IommufdHost {
    fn drop(&mut self) {
        for (ep, dev) in std::mem::take(&mut self.devices) {
            self.release(ep, dev);
        }
        for hwpt in std::mem::take(&mut self.tables).into_keys() {
            if let Err(e) = sys::destroy(&self.fd, hwpt) {
                warn!("destroying nested HWPT {hwpt}: {e}");
            }
        }
        self.drop_viommus();
        for p in std::mem::take(&mut self.parents).into_values() {
            if let Err(e) = sys::destroy(&self.fd, p.hwpt) {
                warn!("destroying parent HWPT {}: {e}", p.hwpt);
            }
        }
        if let Some(q) = self.faults.take() {
            // The fault fd holds a reference on the object: close it first.
            let id = q.id();
            drop(q);
            if let Err(e) = sys::destroy(&self.fd, id) {
                warn!("destroying fault queue {id}: {e}");
            }
        }
        let ioases = std::mem::take(&mut self.spaces)
            .into_keys()
            .chain([self.empty, self.master]);
        for ioas in ioases {
            if let Err(e) = sys::destroy(&self.fd, ioas) {
                warn!("destroying IOAS {ioas}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the machine has no iommufd (Debian kernels), opening fails with the hint.
    #[test]
    fn open_without_dev_iommu_explains() {
        if std::path::Path::new("/dev/iommu").exists() {
            return;
        }
        let err = IommufdHost::open(&IommufdConfig::default()).unwrap_err();
        assert!(err.to_string().contains("CONFIG_IOMMUFD"), "{err}");
    }
}
