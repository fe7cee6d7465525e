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
mod master_ioas;
mod nesting;
pub mod ranges;
#[cfg(feature = "test-support")]
pub mod selftest;
pub mod smmuv3_encode;
mod sys;
pub mod vfio_endpoint;
mod vmm_bound;
mod vsmmu;
mod vsmmu_flavour;
mod vtd;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use iommufd_bindings as b;
use log::{error, info, trace, warn};
use virtio_iommu_spec::ext::PageRespCode;
use virtio_iommu_spec::request::{Invalidate, TableDesc};
use virtio_iommu_spec::Event;
use vm_memory::GuestMemoryAtomic;

use super::{AttachTarget, HostError, HostIommu, Perm, ReservedRegion, SpaceId, TableId};
use crate::GuestRam;
use bound_device::{BoundDevice, DeviceKind};
pub use error::IommufdError;
use error::{host_err, ioctl_err};
use fault::FaultQueue;
pub use master_ioas::GuestMapping;
use master_ioas::MasterIoas;
use nesting::Nesting;
pub use sys::HwInfo;
#[cfg(feature = "test-support")]
pub use sys::RegionInfo;
pub use vfio_endpoint::{VfioEndpoint, VfioSource};
use vmm_bound::{WaitingDevice, WaitingDevices};
pub use vsmmu::SmmuIds;
use vsmmu::VsmmuObjects;
use vtd::{vtd_entries, vtd_s1_data};

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
    /// Guest memory at IOVA = GPA.
    master: MasterIoas,
    /// An IOAS that never holds mappings: where mock devices go when "detached".
    empty: u32,
    /// The domains' IOASes.
    spaces: BTreeSet<u32>,
    devices: BTreeMap<u32, BoundDevice>,
    unattached_bypass: bool,
    /// Parent HWPTs, nested tables, the fault queue.
    nesting: Nesting,
    /// Arm nested tables with the fault queue.
    page_requests: bool,
    /// VMM-bound devices whose bind has not been seen yet (shared iommufd only).
    waiting: WaitingDevices,
    /// SMMUv3-style nesting: vIOMMUs, vDEVICEs, vEVENTQs.
    vsmmu: VsmmuObjects,
    /// Epoll set of the host's event fds (fault queue, vEVENTQs), for the daemon to poll.
    events: File,
}

/// Adds an event queue's fd to the host's epoll set (what [`IommufdHost::events_fd`] stands
/// for).
fn watch_events(epoll: &File, file: &File, what: &str) {
    if let Err(e) = sys::epoll_watch(epoll, file) {
        error!("watching the {what} fd: {e}; its events reach the guest only with others");
    }
}

/// `last - first + 1`, or `None` for an empty or 2^64-byte range.
fn range_len(first: u64, last: u64) -> Option<u64> {
    last.checked_sub(first)?.checked_add(1)
}

/// The IOAS map flags for `perm`'s R/W bits.
fn map_flags(perm: Perm) -> u32 {
    let mut f = 0;
    if perm.contains(Perm::READ) {
        f |= b::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE;
    }
    if perm.contains(Perm::WRITE) {
        f |= b::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE;
    }
    f
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
            master: MasterIoas::new(master),
            empty,
            spaces: BTreeSet::new(),
            devices: BTreeMap::new(),
            unattached_bypass: false,
            nesting: Nesting::default(),
            page_requests: cfg.page_requests,
            waiting: WaitingDevices::default(),
            vsmmu: VsmmuObjects::default(),
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
        if self.devices.contains_key(&endpoint) || self.waiting.contains(endpoint) {
            return Err(IommufdError::DuplicateEndpoint(endpoint));
        }
        Ok(())
    }

    /// Whether `endpoint` is a VMM-bound device whose bind has not been seen yet.
    #[must_use]
    pub fn is_waiting(&self, endpoint: u32) -> bool {
        self.waiting.contains(endpoint)
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
    /// unattached default to it.
    fn install(&mut self, endpoint: u32, mut dev: BoundDevice) -> Result<(), IommufdError> {
        dev.probe(endpoint, &self.fd, self.empty, self.master.id())?;
        let apply = self.apply_default(&mut dev);
        self.devices.insert(endpoint, dev);
        apply.map_err(ioctl_err("applying the unattached default"))
    }

    fn apply_default(&self, dev: &mut BoundDevice) -> io::Result<()> {
        if self.unattached_bypass {
            dev.attach(&self.fd, self.master.id(), None).map(|_| ())
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
        self.master.id()
    }

    /// The guest memory regions mapped in the master IOAS.
    #[must_use]
    pub fn guest_mappings(&self) -> &[GuestMapping] {
        self.master.mappings()
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
            .endpoints()
            .into_iter()
            .map(|ep| (ep, vmm_bound::vmm_bound_reserved()));
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
        self.nesting.faults().map(|q| q.file().as_fd())
    }

    /// Allocates the fault queue now (it is otherwise created with the first fault-capable
    /// table), so that a missing kernel feature shows at start-up.
    ///
    /// # Errors
    /// `IOMMU_FAULT_QUEUE_ALLOC` failures (`ENOTTY` before Linux 6.11).
    pub fn alloc_fault_queue(&mut self) -> Result<(), IommufdError> {
        self.nesting
            .fault_queue(&self.fd, &self.events)
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

    /// Number of page-request groups waiting for the guest's answer.
    #[must_use]
    pub fn pending_page_requests(&self) -> usize {
        self.nesting.faults().map_or(0, FaultQueue::pending_groups)
    }

    /// Removes `endpoint`'s device: detached and unbound (its fd closed) or, for a mock,
    /// destroyed. Its pending page requests are dropped.
    pub fn remove_endpoint(&mut self, endpoint: u32) {
        self.waiting.remove(endpoint);
        if let Some(dev) = self.devices.remove(&endpoint) {
            self.release(endpoint, dev);
        }
    }

    fn release(&mut self, endpoint: u32, mut dev: BoundDevice) {
        // A vDEVICE must go before its device is unbound.
        self.vsmmu
            .release_endpoint(&self.fd, &mut self.nesting, endpoint);
        if let Some(q) = self.nesting.faults_mut() {
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

    /// Installs the waiting VMM-bound devices whose bind has happened: all of them, or only
    /// `endpoint`. Returns whether `endpoint` (if given) is ready afterwards.
    fn install_vmm_bound(&mut self, endpoint: Option<u32>) -> bool {
        let eps: Vec<u32> = match endpoint {
            Some(ep) if self.waiting.contains(ep) => vec![ep],
            Some(_) => return true,
            None => self.waiting.endpoints(),
        };
        let mut ready = true;
        for ep in eps {
            let Some(w) = self.waiting.remove(ep) else {
                continue;
            };
            let Some(dev_id) = w.bound_dev_id(ep, self.empty) else {
                self.waiting.insert(ep, w);
                ready = false;
                continue;
            };
            let WaitingDevice { file, what } = w;
            let dev = BoundDevice::new(DeviceKind::Vfio { file, what }, dev_id);
            if let Err(e) = self.install(ep, dev) {
                // `install` keeps the device even when applying the default failed.
                error!("endpoint {ep}: {e}");
            }
            if let Some(d) = self.devices.get(&ep) {
                vmm_bound::warn_late_install(ep, d);
            }
        }
        ready
    }

    /// Installs `endpoint` if it is a VMM-bound device whose bind has happened since.
    ///
    /// # Errors
    /// `Failed` while the VMM has not bound it: the guest asked before the VMM was ready.
    fn ready(&mut self, endpoint: u32) -> Result<(), HostError> {
        if self.install_vmm_bound(Some(endpoint)) {
            Ok(())
        } else {
            error!("endpoint {endpoint}: the VMM has not bound its VFIO device to the shared iommufd; request refused");
            Err(HostError::Failed)
        }
    }

    /// The IOAS nested tables of `parent` hang off: the domain's, or the master for `None`.
    fn parent_ioas(&self, parent: Option<SpaceId>) -> Result<u32, HostError> {
        match parent {
            None => Ok(self.master.id()),
            Some(s) if self.spaces.contains(&s.0) => Ok(s.0),
            Some(_) => Err(HostError::Invalid),
        }
    }

    /// Allocates a nested HWPT for `endpoint` with driver data `data` of `data_type` (e.g.
    /// `IOMMU_HWPT_DATA_VTD_S1`, or the selftest's `0xdead`) over the parent of `parent`'s IOAS
    /// (the master when `None`), armed with the fault queue if `faults`.
    ///
    /// # Errors
    /// `Unsupported` when the host cannot nest, `Invalid` for unknown handles or bad data.
    pub fn alloc_nested(
        &mut self,
        endpoint: u32,
        parent: Option<SpaceId>,
        data_type: u32,
        data: &[u8],
        flags: u32,
        faults: bool,
    ) -> Result<TableId, HostError> {
        let dev_id = self
            .devices
            .get(&endpoint)
            .ok_or(HostError::Invalid)?
            .dev_id;
        let ioas = self.parent_ioas(parent)?;
        self.nesting.alloc(
            &self.fd,
            &self.events,
            dev_id,
            ioas,
            data_type,
            data,
            flags,
            faults,
        )
    }

    /// `IOMMU_HWPT_INVALIDATE` on a nested table with raw entries of `entry_len` bytes.
    /// Returns how many entries the kernel handled.
    ///
    /// # Errors
    /// The error and the number of entries handled before it.
    pub fn invalidate_raw(
        &mut self,
        table: TableId,
        data_type: u32,
        entry_len: u32,
        entries: &[u8],
    ) -> Result<u32, (HostError, u32)> {
        self.nesting
            .invalidate_raw(&self.fd, table.0, data_type, entry_len, entries)
    }

    /// The vIOMMU objects behind `endpoint`'s SMMUv3 tables.
    #[must_use]
    pub fn smmu_ids(&self, endpoint: u32) -> Option<SmmuIds> {
        self.vsmmu.ids(endpoint)
    }
}

impl HostIommu for IommufdHost {
    fn alloc_space(&mut self) -> Result<SpaceId, HostError> {
        let id = sys::ioas_alloc(&self.fd).map_err(|e| host_err("IOMMU_IOAS_ALLOC", &e))?;
        self.spaces.insert(id);
        Ok(SpaceId(id))
    }

    fn destroy_space(&mut self, space: SpaceId) -> Result<(), HostError> {
        if !self.spaces.contains(&space.0) {
            return Err(HostError::Invalid);
        }
        if self.nesting.uses_ioas(space.0) {
            return Err(HostError::Invalid);
        }
        sys::destroy(&self.fd, space.0).map_err(|e| host_err("IOMMU_DESTROY(IOAS)", &e))?;
        self.spaces.remove(&space.0);
        Ok(())
    }

    fn map(
        &mut self,
        space: SpaceId,
        iova: u64,
        last: u64,
        phys: u64,
        perm: Perm,
    ) -> Result<(), HostError> {
        if !self.spaces.contains(&space.0) {
            return Err(HostError::Invalid);
        }
        if perm.contains(Perm::MMIO) {
            // Peer-to-peer MMIO needs dma-buf mappings; not implemented.
            return Err(HostError::Unsupported);
        }
        let len = range_len(iova, last).ok_or(HostError::Invalid)?;
        let flags = map_flags(perm);
        if flags == 0 {
            // iommufd needs R or W; a mapping without either faults every access, as nothing.
            trace!("map {iova:#x}-{last:#x} without permissions: nothing to program");
            return Ok(());
        }
        sys::ioas_copy(&self.fd, space.0, iova, self.master.id(), phys, len, flags)
            .map_err(|e| host_err("IOMMU_IOAS_COPY", &e))
    }

    fn unmap(&mut self, space: SpaceId, iova: u64, last: u64) -> Result<u64, HostError> {
        if !self.spaces.contains(&space.0) {
            return Err(HostError::Invalid);
        }
        // 0..=u64::MAX is iommufd's "everything" (length U64_MAX).
        let len = range_len(iova, last).unwrap_or(u64::MAX);
        match sys::ioas_unmap(&self.fd, space.0, iova, len) {
            Ok(n) => Ok(n),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(0),
            Err(e) => Err(host_err("IOMMU_IOAS_UNMAP", &e)),
        }
    }

    fn attach(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        target: AttachTarget,
    ) -> Result<(), HostError> {
        self.ready(endpoint)?;
        let Some(mut dev) = self.devices.remove(&endpoint) else {
            trace!("attach: endpoint {endpoint} has no host device; nothing to program");
            return Ok(());
        };
        let pt = match target {
            AttachTarget::Space(s) if self.spaces.contains(&s.0) => Some(s.0),
            AttachTarget::Table(t) if self.nesting.get(t.0).is_some() => Some(t.0),
            AttachTarget::Bypass => Some(self.master.id()),
            AttachTarget::Blocked => None,
            AttachTarget::Space(_) | AttachTarget::Table(_) => {
                self.devices.insert(endpoint, dev);
                return Err(HostError::Invalid);
            }
        };
        let r = match pt {
            Some(pt) => dev.attach(&self.fd, pt, pasid).map(|_| ()),
            None => dev.block(&self.fd, pasid, self.empty),
        };
        let r = r.map_err(|e| host_err("VFIO attach", &e));
        if r.is_ok() {
            if pasid.is_none() {
                dev.target = Some(target);
            }
            // iommufd answered the endpoint's pending page requests itself.
            if let Some(q) = self.nesting.faults_mut() {
                q.forget_endpoint(endpoint);
            }
        }
        self.devices.insert(endpoint, dev);
        r
    }

    fn detach(&mut self, endpoint: u32, pasid: Option<u32>) -> Result<(), HostError> {
        self.ready(endpoint)?;
        let Some(mut dev) = self.devices.remove(&endpoint) else {
            return Ok(());
        };
        let r = match pasid {
            Some(_) => dev.block(&self.fd, pasid, self.empty),
            None => self.apply_default(&mut dev),
        };
        let r = r.map_err(|e| host_err("VFIO detach", &e));
        if r.is_ok() {
            if pasid.is_none() {
                dev.target = None;
            }
            if let Some(q) = self.nesting.faults_mut() {
                q.forget_endpoint(endpoint);
            }
        }
        self.devices.insert(endpoint, dev);
        r
    }

    fn writes_logged(&self) -> bool {
        // The devices write guest memory by DMA through the kernel, unseen by the log.
        false
    }

    fn owns_dma(&self, endpoint: u32) -> bool {
        self.devices.contains_key(&endpoint) || self.waiting.contains(endpoint)
    }

    fn set_unattached_bypass(&mut self, bypass: bool) {
        self.unattached_bypass = bypass;
        self.set_default_all();
    }

    fn alloc_table(
        &mut self,
        endpoint: u32,
        parent: Option<SpaceId>,
        desc: &TableDesc,
    ) -> Result<TableId, HostError> {
        self.ready(endpoint)?;
        match *desc {
            TableDesc::Vtd {
                pasid,
                addr_width,
                pgd,
                flags,
            } => {
                let pasid_capable = self.hw_info(endpoint).is_some_and(|h| h.max_pasid_log2 > 0);
                let alloc_flags = if pasid_capable && pasid != 0 {
                    b::iommufd_hwpt_alloc_flags_IOMMU_HWPT_ALLOC_PASID
                } else {
                    0
                };
                let data = vtd_s1_data(pgd, addr_width, flags);
                let faults = self.page_requests;
                self.alloc_nested(
                    endpoint,
                    parent,
                    b::iommu_hwpt_data_type_IOMMU_HWPT_DATA_VTD_S1,
                    &data,
                    alloc_flags,
                    faults,
                )
            }
            TableDesc::ArmSmmuV3 { .. } => {
                let dev = self.devices.get(&endpoint).ok_or(HostError::Invalid)?;
                let ioas = self.parent_ioas(parent);
                self.vsmmu.alloc_table(
                    &self.fd,
                    &self.events,
                    &mut self.nesting,
                    (endpoint, dev),
                    ioas,
                    desc,
                )
            }
        }
    }

    fn destroy_table(&mut self, table: TableId) -> Result<(), HostError> {
        if self.vsmmu.owns(table.0) {
            return self.vsmmu.destroy_table(&self.fd, &mut self.nesting, table);
        }
        self.nesting.destroy(&self.fd, table.0)
    }

    fn invalidate(&mut self, table: TableId, inval: &Invalidate) -> Result<(), HostError> {
        if self.vsmmu.owns(table.0) {
            return self.vsmmu.invalidate(&self.fd, table, inval);
        }
        let t = self.nesting.get(table.0).ok_or(HostError::Invalid)?;
        if t.data_type != b::iommu_hwpt_data_type_IOMMU_HWPT_DATA_VTD_S1 {
            return Err(HostError::Unsupported);
        }
        let entries = vtd_entries(inval)?;
        if entries.is_empty() {
            return Ok(());
        }
        let ty = b::iommu_hwpt_invalidate_data_type_IOMMU_HWPT_INVALIDATE_DATA_VTD_S1;
        self.invalidate_raw(table, ty, 24, &entries)
            .map(|_| ())
            .map_err(|(e, _)| e)
    }

    fn page_response(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        group_id: u16,
        code: PageRespCode,
    ) -> Result<(), HostError> {
        self.nesting
            .faults_mut()
            .ok_or(HostError::Invalid)?
            .respond(endpoint, pasid, group_id, code)
    }

    fn poll_event(&mut self) -> Option<Event> {
        let devices = &self.devices;
        let fault = self.nesting.faults_mut().and_then(|q| {
            q.next_event(|dev_id| {
                devices
                    .iter()
                    .find(|(_, d)| d.dev_id == dev_id)
                    .map(|(e, _)| *e)
            })
        });
        fault.or_else(|| self.vsmmu.poll_event())
    }

    fn set_guest_memory(&mut self, mem: GuestMemoryAtomic<GuestRam>) {
        self.master.map_guest_memory(&self.fd, mem);
        // The VMM binds its devices before it hands over guest memory.
        self.install_vmm_bound(None);
    }
}

impl Drop for IommufdHost {
    fn drop(&mut self) {
        for (ep, dev) in std::mem::take(&mut self.devices) {
            self.release(ep, dev);
        }
        self.nesting.destroy_tables(&self.fd);
        self.vsmmu.destroy_all(&self.fd, &mut self.nesting);
        self.nesting.destroy_rest(&self.fd);
        let ioases = std::mem::take(&mut self.spaces)
            .into_iter()
            .chain([self.empty, self.master.id()]);
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

    #[test]
    fn lengths_and_flags() {
        assert_eq!(range_len(0x1000, 0x1fff), Some(0x1000));
        assert_eq!(range_len(0, u64::MAX), None);
        assert_eq!(range_len(2, 1), None);
        assert_eq!(map_flags(Perm::READ | Perm::WRITE), 6);
        assert_eq!(map_flags(Perm::WRITE), 2);
        assert_eq!(map_flags(Perm::empty()), 0);
    }
}
