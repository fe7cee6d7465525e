//! Helpers shared by the engine's tests: a device on the emulated host, request senders (on
//! the test kit's request builders), and a host wrapper that can be told to fail.

use std::collections::VecDeque;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

use vhost_device_iommu::engine::{EndpointConfig, Engine, EngineConfig};
use vhost_device_iommu::host::{
    Access, AttachTarget, EmulatedHost, Fault, GuestRange, HostError, HostIommu, Perm,
    ReservedRegion, SpaceId,
};
use vhost_device_iommu::GuestRam;
use virtio_iommu_spec::ext::PageRespCode;
use virtio_iommu_spec::probe::ResvMemSubtype;
use virtio_iommu_spec::request::MapFlags;
use virtio_iommu_spec::{Event, Features, Request, Status};
use virtio_iommu_testkit::requests as req;
pub use virtio_iommu_testkit::requests::RW;
use vm_memory::GuestMemoryAtomic;

/// Endpoints `ids` with the given reserved regions.
pub fn eps(ids: RangeInclusive<u32>, reserved: Vec<ReservedRegion>) -> EndpointConfig {
    EndpointConfig {
        ids,
        reserved,
        ..EndpointConfig::default()
    }
}

pub fn resv(start: u64, last: u64) -> ReservedRegion {
    ReservedRegion {
        start,
        last,
        kind: ResvMemSubtype::Reserved,
    }
}

/// Endpoints 0..=15 with the x86 MSI window, boot bypass off.
pub fn small_config() -> EngineConfig {
    EngineConfig {
        endpoints: vec![eps(0..=15, vec![ReservedRegion::x86_msi()])],
        boot_bypass: false,
        ..EngineConfig::default()
    }
}

/// A device on the emulated host with every offered feature negotiated.
pub fn dev(cfg: EngineConfig) -> Engine {
    let mut v = Engine::new(cfg, Box::new(EmulatedHost::new())).unwrap();
    v.negotiate(v.offered_features());
    v
}

/// A device negotiated with `features` only.
pub fn dev_with(cfg: EngineConfig, features: Features) -> Engine {
    let mut v = Engine::new(cfg, Box::new(EmulatedHost::new())).unwrap();
    v.negotiate(features);
    v
}

/// Sends raw readable bytes with a writable part of `wlen` bytes; returns (used, writable).
pub fn raw(v: &mut Engine, readable: &[u8], wlen: usize) -> (usize, Vec<u8>) {
    let mut w = vec![0u8; wlen];
    let n = v.handle_request(readable, &mut w);
    (n, w)
}

/// Sends raw bytes with a 4-byte writable part and returns the status (asserting a full reply).
pub fn raw_status(v: &mut Engine, readable: &[u8]) -> Status {
    let (n, w) = raw(v, readable, 4);
    assert_eq!(n, 4, "expected a reply");
    assert_eq!(&w[1..], &[0, 0, 0], "tail reserved bytes");
    Status::try_from(w[0]).unwrap()
}

/// Sends a request with the writable size the driver would use.
pub fn send(v: &mut Engine, r: Request) -> Status {
    let probe_size = v.config_space().probe_size.get();
    let enc = r.encode();
    let (n, w) = raw(v, enc.as_bytes(), r.writable_len(probe_size));
    assert_eq!(n, w.len(), "{r:?}: used length");
    Status::try_from(w[n - 4]).unwrap()
}

/// ATTACH `endpoint` to `domain`.
pub fn attach(v: &mut Engine, domain: u32, endpoint: u32) -> Status {
    send(v, req::attach(domain, endpoint))
}

/// ATTACH `endpoint` to the bypass domain `domain`.
pub fn attach_bypass(v: &mut Engine, domain: u32, endpoint: u32) -> Status {
    send(v, req::attach_bypass(domain, endpoint))
}

/// DETACH `endpoint` from `domain`.
pub fn detach(v: &mut Engine, domain: u32, endpoint: u32) -> Status {
    send(v, req::detach(domain, endpoint))
}

/// MAP `[start, last]` → `phys` with `flags`.
pub fn map(
    v: &mut Engine,
    domain: u32,
    start: u64,
    last: u64,
    phys: u64,
    flags: MapFlags,
) -> Status {
    send(v, req::map_flags(domain, start, last, phys, flags))
}

/// UNMAP `[start, last]`.
pub fn unmap(v: &mut Engine, domain: u32, start: u64, last: u64) -> Status {
    send(v, req::unmap(domain, start, last))
}

/// PROBE with a properties area of `area` bytes; returns (used, writable).
pub fn probe(v: &mut Engine, endpoint: u32, area: usize) -> (usize, Vec<u8>) {
    raw(v, &req::bytes(&req::probe(endpoint)), area + 4)
}

/// The (start, end, phys, flags) of every mapping of `domain` in the dump.
pub fn mappings(v: &Engine, domain: u32) -> Vec<(u64, u64, u64, u32)> {
    v.dump()
        .domains
        .iter()
        .find(|d| d.id == domain)
        .map(|d| {
            d.mappings
                .iter()
                .map(|m| (m.virt_start, m.virt_last, m.phys_start, m.flags))
                .collect()
        })
        .unwrap_or_default()
}

/// Guest RAM: `[(gpa, size)]`.
pub fn guest_memory(ranges: &[(u64, usize)]) -> GuestMemoryAtomic<GuestRam> {
    let r: Vec<_> = ranges
        .iter()
        .map(|&(a, n)| (vm_memory::GuestAddress(a), n))
        .collect();
    GuestMemoryAtomic::new(GuestRam::from_ranges(&r).unwrap())
}

/// What [`TestHost`] should do next, and what it saw.
#[derive(Debug, Default)]
pub struct Knobs {
    pub fail_alloc: Option<HostError>,
    pub fail_map: Option<HostError>,
    pub fail_unmap: Option<HostError>,
    pub fail_attach: Option<HostError>,
    pub fail_detach: Option<HostError>,
    pub events: VecDeque<Event>,
    pub page_responses: Vec<(u32, Option<u32>, u16, PageRespCode)>,
    /// Plays a host whose devices write guest memory by DMA of their own (not logged).
    pub hardware_dma: bool,
}

/// The emulated host with failure injection and an event source, observable from the test.
#[derive(Debug)]
pub struct TestHost {
    pub inner: EmulatedHost,
    pub knobs: Arc<Mutex<Knobs>>,
    pub spaces: Arc<Mutex<usize>>,
}

impl TestHost {
    pub fn new() -> (Self, Arc<Mutex<Knobs>>, Arc<Mutex<usize>>) {
        let knobs = Arc::new(Mutex::new(Knobs::default()));
        let spaces = Arc::new(Mutex::new(0));
        (
            TestHost {
                inner: EmulatedHost::new(),
                knobs: knobs.clone(),
                spaces: spaces.clone(),
            },
            knobs,
            spaces,
        )
    }

    fn sync(&self) {
        *self.spaces.lock().unwrap() = self.inner.space_count();
    }
}

impl HostIommu for TestHost {
    fn alloc_space(&mut self) -> Result<SpaceId, HostError> {
        if let Some(e) = self.knobs.lock().unwrap().fail_alloc.take() {
            return Err(e);
        }
        let r = self.inner.alloc_space();
        self.sync();
        r
    }
    fn destroy_space(&mut self, space: SpaceId) -> Result<(), HostError> {
        let r = self.inner.destroy_space(space);
        self.sync();
        r
    }
    fn map(
        &mut self,
        s: SpaceId,
        iova: u64,
        last: u64,
        phys: u64,
        p: Perm,
    ) -> Result<(), HostError> {
        if let Some(e) = self.knobs.lock().unwrap().fail_map.take() {
            return Err(e);
        }
        self.inner.map(s, iova, last, phys, p)
    }
    fn unmap(&mut self, s: SpaceId, iova: u64, last: u64) -> Result<u64, HostError> {
        if let Some(e) = self.knobs.lock().unwrap().fail_unmap.take() {
            return Err(e);
        }
        self.inner.unmap(s, iova, last)
    }
    fn attach(&mut self, ep: u32, pasid: Option<u32>, t: AttachTarget) -> Result<(), HostError> {
        if let Some(e) = self.knobs.lock().unwrap().fail_attach.take() {
            return Err(e);
        }
        self.inner.attach(ep, pasid, t)
    }
    fn detach(&mut self, ep: u32, pasid: Option<u32>) -> Result<(), HostError> {
        if let Some(e) = self.knobs.lock().unwrap().fail_detach.take() {
            return Err(e);
        }
        self.inner.detach(ep, pasid)
    }
    fn set_unattached_bypass(&mut self, bypass: bool) {
        self.inner.set_unattached_bypass(bypass);
    }
    fn set_reserved_regions(&mut self, eps: RangeInclusive<u32>, regions: &[ReservedRegion]) {
        self.inner.set_reserved_regions(eps, regions);
    }
    fn page_response(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        group_id: u16,
        code: PageRespCode,
    ) -> Result<(), HostError> {
        self.knobs
            .lock()
            .unwrap()
            .page_responses
            .push((endpoint, pasid, group_id, code));
        Ok(())
    }
    fn poll_event(&mut self) -> Option<Event> {
        self.knobs.lock().unwrap().events.pop_front()
    }
    fn writes_logged(&self) -> bool {
        !self.knobs.lock().unwrap().hardware_dma
    }
    fn set_guest_memory(&mut self, mem: GuestMemoryAtomic<GuestRam>) {
        self.inner.set_guest_memory(mem);
    }
    fn translate(
        &mut self,
        ep: u32,
        pasid: Option<u32>,
        iova: u64,
        len: u64,
        access: Access,
    ) -> Result<GuestRange, Fault> {
        self.inner.translate(ep, pasid, iova, len, access)
    }
}

/// A device on a [`TestHost`], everything negotiated.
pub fn test_dev(cfg: EngineConfig) -> (Engine, Arc<Mutex<Knobs>>, Arc<Mutex<usize>>) {
    let (h, knobs, spaces) = TestHost::new();
    let mut v = Engine::new(cfg, Box::new(h)).unwrap();
    v.negotiate(v.offered_features());
    (v, knobs, spaces)
}
