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

pub mod config;
pub mod device;
pub mod error;
pub mod fault;
pub mod ranges;
pub mod selftest;
mod sys;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use iommufd_bindings as b;
use log::{debug, error, info, warn};
use virtio_iommu_spec::ext::{InvalScope, PageRespCode, VtdFlags};
use virtio_iommu_spec::request::{Invalidate, TableDesc};
use virtio_iommu_spec::Event;
use vm_memory::{
    GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

use super::{AttachTarget, HostError, HostIommu, Perm, ReservedRegion, SpaceId, TableId};
pub use config::{VfioEndpoint, VfioSource};
use device::{BoundDevice, DeviceKind};
pub use error::IommufdError;
use fault::FaultQueue;
pub use sys::{HwInfo, RegionInfo};

/// Configuration of the iommufd backend.
#[derive(Debug, Clone, Default)]
pub struct IommufdConfig {
    /// The VFIO devices, one per endpoint.
    pub endpoints: Vec<VfioEndpoint>,
    /// Arm nested tables with a fault queue so page requests reach the guest.
    pub page_requests: bool,
}

/// A nested table: its HWPT, the parent it hangs off and how to invalidate it.
#[derive(Debug, Clone, Copy)]
struct Nested {
    parent_ioas: u32,
    data_type: u32,
}

/// A NEST_PARENT HWPT over an IOAS, shared by the nested tables on that IOAS.
#[derive(Debug, Clone, Copy)]
struct Parent {
    hwpt: u32,
    users: usize,
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
}

fn ioctl_err(op: &'static str) -> impl FnOnce(io::Error) -> IommufdError {
    move |e| IommufdError::ioctl(op, e)
}

/// Logs a failed ioctl and converts it for the engine.
fn host_err(op: &str, e: &io::Error) -> HostError {
    let h = error::host_error(e);
    if h == HostError::Invalid {
        debug!("{op}: {e}");
    } else {
        warn!("{op}: {e}");
    }
    h
}

/// `last - first + 1`, or `None` for an empty or 2^64-byte range.
fn range_len(first: u64, last: u64) -> Option<u64> {
    last.checked_sub(first)?.checked_add(1)
}

impl IommufdHost {
    /// Opens `/dev/iommu`, allocates the master IOAS and binds every configured VFIO device.
    ///
    /// # Errors
    /// A missing `/dev/iommu`, an unusable device or a failed bind, with a hint.
    pub fn open(cfg: &IommufdConfig) -> Result<Self, IommufdError> {
        let fd = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/iommu")
            .map_err(|err| IommufdError::OpenIommufd { err })?;
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
        };
        for ep in &cfg.endpoints {
            host.add_vfio_endpoint(ep)?;
        }
        Ok(host)
    }

    /// Opens and binds one more VFIO device.
    ///
    /// # Errors
    /// As [`IommufdHost::open`]; also a duplicate endpoint.
    pub fn add_vfio_endpoint(&mut self, ep: &VfioEndpoint) -> Result<(), IommufdError> {
        if self.devices.contains_key(&ep.endpoint) {
            return Err(IommufdError::DuplicateEndpoint(ep.endpoint));
        }
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
        if self.devices.contains_key(&endpoint) {
            return Err(IommufdError::DuplicateEndpoint(endpoint));
        }
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
        dev.hw_info = match sys::get_hw_info(&self.fd, dev.dev_id, 256) {
            Ok(h) => Some(h),
            Err(e) => {
                info!("endpoint {endpoint}: IOMMU_GET_HW_INFO: {e} (no host IOMMU details)");
                None
            }
        };
        // The device's reserved ranges show in an IOAS it is attached to; use the empty one.
        dev.attach(&self.fd, self.empty, None)
            .map_err(ioctl_err("attach to an empty IOAS"))?;
        let (allowed, align) = sys::ioas_iova_ranges(&self.fd, self.empty)
            .map_err(ioctl_err("IOMMU_IOAS_IOVA_RANGES"))?;
        dev.reserved = ranges::reserved_from_allowed(&allowed, cfg!(target_arch = "x86_64"));
        dev.iova_alignment = align.max(1);
        dev.no_nesting = self.probe_nesting(dev.dev_id);
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

    /// Every bound endpoint with its host reserved regions (to merge into the device config).
    #[must_use]
    pub fn all_reserved_regions(&self) -> Vec<(u32, Vec<ReservedRegion>)> {
        self.devices
            .iter()
            .map(|(ep, d)| (*ep, d.reserved.clone()))
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

    /// The fault queue fd to poll in the event loop (EPOLLIN: call [`HostIommu::poll_event`]).
    #[must_use]
    pub fn fault_fd(&self) -> Option<BorrowedFd<'_>> {
        self.faults.as_ref().map(|q| q.file().as_fd())
    }

    /// Allocates the fault queue now (it is otherwise created with the first fault-capable
    /// table) and returns a duplicate of its fd for the daemon's epoll set: on EPOLLIN, call
    /// [`HostIommu::poll_event`] (e.g. `Viommu::poll_host`) until it returns `None`. Close the
    /// duplicate before dropping the backend: an open fault fd keeps the object busy.
    ///
    /// # Errors
    /// `IOMMU_FAULT_QUEUE_ALLOC` failures (`ENOTTY` before Linux 6.11), or the dup failing.
    pub fn fault_queue_poll_fd(&mut self) -> Result<File, IommufdError> {
        if self.faults.is_none() {
            let (id, file) =
                sys::fault_queue_alloc(&self.fd).map_err(ioctl_err("IOMMU_FAULT_QUEUE_ALLOC"))?;
            self.faults = Some(FaultQueue::new(id, file));
        }
        let q = self.faults.as_ref().ok_or_else(|| {
            IommufdError::ioctl(
                "IOMMU_FAULT_QUEUE_ALLOC",
                io::Error::from_raw_os_error(libc::ENOENT),
            )
        })?;
        q.file().try_clone().map_err(ioctl_err("dup(fault fd)"))
    }

    /// Number of page-request groups waiting for the guest's answer.
    #[must_use]
    pub fn pending_page_requests(&self) -> usize {
        self.faults.as_ref().map_or(0, FaultQueue::pending_groups)
    }

    /// Removes `endpoint`'s device: detached and unbound (its fd closed) or, for a mock,
    /// destroyed. Its pending page requests are dropped.
    pub fn remove_endpoint(&mut self, endpoint: u32) {
        if let Some(dev) = self.devices.remove(&endpoint) {
            self.release(endpoint, dev);
        }
    }

    fn release(&mut self, endpoint: u32, mut dev: BoundDevice) {
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

    fn fault_queue_id(&mut self) -> Result<u32, HostError> {
        if let Some(q) = &self.faults {
            return Ok(q.id());
        }
        let (id, file) = sys::fault_queue_alloc(&self.fd)
            .map_err(|e| host_err("IOMMU_FAULT_QUEUE_ALLOC", &e))?;
        info!("fault queue {id} allocated: page requests go to the guest");
        self.faults = Some(FaultQueue::new(id, file));
        Ok(id)
    }

    /// The NEST_PARENT HWPT over `ioas` (allocated with `dev_id` on first use).
    fn parent_for(&mut self, dev_id: u32, ioas: u32) -> Result<u32, HostError> {
        if let Some(p) = self.parents.get_mut(&ioas) {
            p.users += 1;
            return Ok(p.hwpt);
        }
        let flags = b::iommufd_hwpt_alloc_flags_IOMMU_HWPT_ALLOC_NEST_PARENT;
        let hwpt = sys::hwpt_alloc(&self.fd, flags, dev_id, ioas, 0, &[], None).map_err(|e| {
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                warn!("host IOMMU cannot nest (NEST_PARENT: EOPNOTSUPP); guest tables stay unavailable, the flat model is used");
            }
            host_err("IOMMU_HWPT_ALLOC(NEST_PARENT)", &e)
        })?;
        self.parents.insert(ioas, Parent { hwpt, users: 1 });
        Ok(hwpt)
    }

    fn put_parent(&mut self, ioas: u32) {
        let Some(p) = self.parents.get_mut(&ioas) else {
            return;
        };
        p.users = p.users.saturating_sub(1);
        if p.users == 0 {
            let hwpt = p.hwpt;
            self.parents.remove(&ioas);
            if let Err(e) = sys::destroy(&self.fd, hwpt) {
                warn!("destroying parent HWPT {hwpt}: {e}");
            }
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
        let ioas = match parent {
            None => self.master,
            Some(s) if self.spaces.contains_key(&s.0) => s.0,
            Some(_) => return Err(HostError::Invalid),
        };
        let fault_id = if faults {
            Some(self.fault_queue_id()?)
        } else {
            None
        };
        let parent_hwpt = self.parent_for(dev_id, ioas)?;
        match sys::hwpt_alloc(
            &self.fd,
            flags,
            dev_id,
            parent_hwpt,
            data_type,
            data,
            fault_id,
        ) {
            Ok(hwpt) => {
                self.tables.insert(
                    hwpt,
                    Nested {
                        parent_ioas: ioas,
                        data_type,
                    },
                );
                Ok(TableId(hwpt))
            }
            Err(e) => {
                self.put_parent(ioas);
                Err(host_err("IOMMU_HWPT_ALLOC(nested)", &e))
            }
        }
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
        if !self.tables.contains_key(&table.0) {
            return Err((HostError::Invalid, 0));
        }
        sys::hwpt_invalidate(&self.fd, table.0, data_type, entry_len, entries)
            .map_err(|(e, n)| (host_err("IOMMU_HWPT_INVALIDATE", &e), n))
    }

    /// The guest memory regions mapped in the master IOAS.
    #[must_use]
    pub fn guest_mappings(&self) -> &[GuestMapping] {
        &self.guest
    }

    /// Maps one region at IOVA = GPA; returns whether the memfd path was used.
    fn map_guest_region(
        &self,
        gpa: u64,
        len: u64,
        region: &vm_memory::GuestRegionMmap,
    ) -> io::Result<bool> {
        let rw = b::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE
            | b::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE;
        if let Some(fo) = region.file_offset() {
            match sys::ioas_map_file(
                &self.fd,
                self.master,
                fo.file().as_raw_fd(),
                fo.start(),
                len,
                gpa,
                rw,
            ) {
                Ok(()) => return Ok(true),
                // Not a memfd, or a kernel before 6.13: map the daemon's mapping instead.
                Err(e) => {
                    debug!("IOMMU_IOAS_MAP_FILE of GPA {gpa:#x}: {e}; falling back to IOAS_MAP");
                }
            }
        }
        let va = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|_| io::Error::from_raw_os_error(libc::EFAULT))?;
        sys::ioas_map_va(&self.fd, self.master, va as usize as u64, len, gpa, rw).map(|()| false)
    }

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

/// VT-d first-stage invalidation entries (`struct iommu_hwpt_vtd_s1_invalidate`) for `inval`.
fn vtd_entries(inval: &Invalidate) -> Result<Vec<u8>, HostError> {
    let (addr, npages) = match inval.scope {
        InvalScope::Domain | InvalScope::Pasid(_) => (0, u64::MAX),
        InvalScope::Range {
            start,
            nr_pages,
            granule,
            ..
        } => {
            let shift = granule.checked_sub(12).ok_or(HostError::Invalid)?;
            let pages = 1u64
                .checked_shl(u32::from(shift))
                .and_then(|p| p.checked_mul(nr_pages))
                .filter(|_| shift < 64);
            match pages {
                Some(n) if n > 0 => (start & !0xfff, n),
                Some(_) => return Ok(Vec::new()),
                // More pages than can be counted: flush everything.
                None => (0, u64::MAX),
            }
        }
    };
    let leaf = if inval.leaf {
        b::iommu_hwpt_vtd_s1_invalidate_flags_IOMMU_VTD_INV_FLAGS_LEAF
    } else {
        0
    };
    let mut e = Vec::with_capacity(24);
    e.extend_from_slice(&addr.to_ne_bytes());
    e.extend_from_slice(&npages.to_ne_bytes());
    e.extend_from_slice(&leaf.to_ne_bytes());
    e.extend_from_slice(&0u32.to_ne_bytes());
    Ok(e)
}

/// `struct iommu_hwpt_vtd_s1` for a VT-d guest table.
fn vtd_s1_data(pgd: u64, addr_width: u32, flags: VtdFlags) -> Vec<u8> {
    let mut f = 0u64;
    if flags.contains(VtdFlags::SRE) {
        f |= u64::from(b::iommu_hwpt_vtd_s1_flags_IOMMU_VTD_S1_SRE);
    }
    if flags.contains(VtdFlags::WPE) {
        f |= u64::from(b::iommu_hwpt_vtd_s1_flags_IOMMU_VTD_S1_WPE);
    }
    let mut d = Vec::with_capacity(24);
    d.extend_from_slice(&f.to_ne_bytes());
    d.extend_from_slice(&pgd.to_ne_bytes());
    d.extend_from_slice(&addr_width.to_ne_bytes());
    d.extend_from_slice(&0u32.to_ne_bytes());
    d
}

impl HostIommu for IommufdHost {
    fn alloc_space(&mut self) -> Result<SpaceId, HostError> {
        let id = sys::ioas_alloc(&self.fd).map_err(|e| host_err("IOMMU_IOAS_ALLOC", &e))?;
        self.spaces.insert(id, ());
        Ok(SpaceId(id))
    }

    fn destroy_space(&mut self, space: SpaceId) -> Result<(), HostError> {
        if !self.spaces.contains_key(&space.0) {
            return Err(HostError::Invalid);
        }
        if self.tables.values().any(|t| t.parent_ioas == space.0) {
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
        if !self.spaces.contains_key(&space.0) {
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
            debug!("map {iova:#x}-{last:#x} without permissions: nothing to program");
            return Ok(());
        }
        sys::ioas_copy(&self.fd, space.0, iova, self.master, phys, len, flags)
            .map_err(|e| host_err("IOMMU_IOAS_COPY", &e))
    }

    fn unmap(&mut self, space: SpaceId, iova: u64, last: u64) -> Result<u64, HostError> {
        if !self.spaces.contains_key(&space.0) {
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
        let Some(mut dev) = self.devices.remove(&endpoint) else {
            debug!("attach: endpoint {endpoint} has no host device; nothing to program");
            return Ok(());
        };
        let pt = match target {
            AttachTarget::Space(s) if self.spaces.contains_key(&s.0) => Some(s.0),
            AttachTarget::Table(t) if self.tables.contains_key(&t.0) => Some(t.0),
            AttachTarget::Bypass => Some(self.master),
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
            if let Some(q) = &mut self.faults {
                q.forget_endpoint(endpoint);
            }
        }
        self.devices.insert(endpoint, dev);
        r
    }

    fn detach(&mut self, endpoint: u32, pasid: Option<u32>) -> Result<(), HostError> {
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
            if let Some(q) = &mut self.faults {
                q.forget_endpoint(endpoint);
            }
        }
        self.devices.insert(endpoint, dev);
        r
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
                // Needs a vIOMMU + vDEVICE per endpoint (IOMMU_VIOMMU_ALLOC); not implemented.
                debug!("ATTACH_TABLE ArmSmmuV3: the vIOMMU path is not implemented");
                Err(HostError::Unsupported)
            }
        }
    }

    fn destroy_table(&mut self, table: TableId) -> Result<(), HostError> {
        let Some(t) = self.tables.get(&table.0).copied() else {
            return Err(HostError::Invalid);
        };
        sys::destroy(&self.fd, table.0).map_err(|e| host_err("IOMMU_DESTROY(nested HWPT)", &e))?;
        self.tables.remove(&table.0);
        self.put_parent(t.parent_ioas);
        Ok(())
    }

    fn invalidate(&mut self, table: TableId, inval: &Invalidate) -> Result<(), HostError> {
        let t = self
            .tables
            .get(&table.0)
            .copied()
            .ok_or(HostError::Invalid)?;
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
        self.faults
            .as_mut()
            .ok_or(HostError::Invalid)?
            .respond(endpoint, pasid, group_id, code)
    }

    fn poll_event(&mut self) -> Option<Event> {
        let devices = &self.devices;
        self.faults.as_mut()?.next_event(|dev_id| {
            devices
                .iter()
                .find(|(_, d)| d.dev_id == dev_id)
                .map(|(e, _)| *e)
        })
    }

    fn set_guest_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) {
        if !self.guest.is_empty() {
            // New memory table: the old pinned pages stay mapped only in domain IOASes that
            // copied them, until the guest unmaps those.
            if let Err(e) = sys::ioas_unmap(&self.fd, self.master, 0, u64::MAX) {
                warn!("unmapping old guest memory from the master IOAS: {e}");
            }
            self.guest.clear();
        }
        let snapshot = mem.memory();
        for region in snapshot.iter() {
            let gpa = region.start_addr().0;
            let len = region.len();
            match self.map_guest_region(gpa, len, region) {
                Ok(by_file) => self.guest.push(GuestMapping { gpa, len, by_file }),
                Err(e) => error!("mapping guest memory GPA {gpa:#x}+{len:#x} into the master IOAS: {e}; DMA there will fault"),
            }
        }
        info!("guest memory mapped at IOVA = GPA: {:x?}", self.guest);
        self.mem = Some(mem);
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
    use virtio_iommu_spec::ext::InvalCaches;

    fn inval(scope: InvalScope, leaf: bool) -> Invalidate {
        Invalidate {
            domain: 1,
            caches: InvalCaches::IOTLB,
            scope,
            archid: None,
            leaf,
        }
    }

    fn entry(addr: u64, npages: u64, flags: u32) -> Vec<u8> {
        let mut v = addr.to_ne_bytes().to_vec();
        v.extend_from_slice(&npages.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&[0; 4]);
        v
    }

    #[test]
    fn vtd_invalidation_entries() {
        assert_eq!(
            vtd_entries(&inval(InvalScope::Domain, false)).unwrap(),
            entry(0, u64::MAX, 0)
        );
        assert_eq!(
            vtd_entries(&inval(InvalScope::Pasid(3), true)).unwrap(),
            entry(0, u64::MAX, 1)
        );
        let range = |start, nr_pages, granule| InvalScope::Range {
            pasid: Some(1),
            start,
            nr_pages,
            granule,
        };
        assert_eq!(
            vtd_entries(&inval(range(0x20_1234, 3, 12), true)).unwrap(),
            entry(0x20_1000, 3, 1)
        );
        assert_eq!(
            vtd_entries(&inval(range(0x4000_0000, 2, 21), false)).unwrap(),
            entry(0x4000_0000, 1024, 0)
        );
        assert_eq!(
            vtd_entries(&inval(range(0, u64::MAX, 30), false)).unwrap(),
            entry(0, u64::MAX, 0)
        );
        assert_eq!(
            vtd_entries(&inval(range(0, 1, 80), false)).unwrap(),
            entry(0, u64::MAX, 0)
        );
        assert!(vtd_entries(&inval(range(0, 0, 12), false))
            .unwrap()
            .is_empty());
        assert_eq!(
            vtd_entries(&inval(range(0, 1, 11), false)),
            Err(HostError::Invalid)
        );
    }

    #[test]
    fn vtd_table_data() {
        let d = vtd_s1_data(0x1234_5000, 48, VtdFlags::SRE | VtdFlags::WPE);
        let mut want = 5u64.to_ne_bytes().to_vec();
        want.extend_from_slice(&0x1234_5000u64.to_ne_bytes());
        want.extend_from_slice(&48u32.to_ne_bytes());
        want.extend_from_slice(&[0; 4]);
        assert_eq!(d, want);
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
