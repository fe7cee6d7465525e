//! The virtio-iommu semantics engine: pure state, no sockets, threads or files.
//!
//! [`Engine`] owns the device state (config space, negotiated features, domains, mappings,
//! pending events) and answers requests byte-for-byte as the virtio specification and
//! `spec/PROTOCOL.md` (§4–§6, §9 for the extensions) require. It drives a [`HostIommu`] so that
//! the host always holds what the guest asked for; a host that keeps the mappings in the shared
//! form ([`HostIommu::mappings`], the emulated host) is their only copy.
//!
//! Status choices where the specification is loose are documented at each check
//! (`domain.rs`); the summary: ranges and alignment → S_RANGE, everything inconsistent →
//! S_INVAL, unknown endpoint or domain → S_NOENT, limits → S_NOMEM with nothing changed,
//! host errors → S_NOMEM (host out of room), S_UNSUPP (host cannot) or S_DEVERR.

mod device_dma;
mod device_translate;
mod domain;
pub mod dump;
pub mod engine_config;
pub mod event_queue;
pub mod footprint;
pub mod invalidation;
mod probe_properties;
mod prq;
mod request_log;
pub mod state;
pub mod stats;
mod tables;

use std::time::Instant;

use log::debug;
use virtio_iommu_spec::config::BYPASS_OFFSET;
use virtio_iommu_spec::request::TAIL_SIZE;
use virtio_iommu_spec::{Config, Event, Features, Request, RequestType, Status};
use vm_memory::GuestMemoryAtomic;
use zerocopy::IntoBytes;

pub use self::device_dma::{
    DeviceDma, DmaOp, DmaOutcome, DmaRequest, DmaTicket, PAGE_REQUESTS_PER_PAGE,
};
pub use self::device_translate::{DeviceTranslate, TranslateAccess, TranslateOutcome};
pub use self::dump::{DomainDump, Dump, MappingDump};
pub use self::engine_config::{
    ConfigError, EndpointConfig, EngineConfig, Limits, DEFAULT_MAX_MAPPINGS_TOTAL,
    DEFAULT_PAGE_REQUEST_GROUPS,
};
pub use self::event_queue::{EventBytes, EventCounters};
pub use self::footprint::Footprint;
pub use self::invalidation::{InvalEndpoints, Invalidation};
pub use self::prq::PageRequestCounters;
pub use self::state::{SavedState, StateError};
pub use self::stats::{RequestCounters, RequestStats, Stats};
pub use crate::host::{Access, DmaAttrs, GuestRange as Translation, ReservedRegion};

use self::device_dma::ParkedDmas;
use self::device_translate::ParkedTranslations;
use self::domain::{Ctx, Domains};
use self::engine_config::EndpointTable;
use self::event_queue::{Delivery, EventQueue};
use self::invalidation::Invalidations;
use self::prq::PageRequests;
use self::request_log::RequestLine;
use crate::host::HostIommu;
use crate::GuestRam;

/// Queues an event for the driver, dropping the oldest if the queue is full; a page request
/// dropped that way is completed by the device with FAILURE.
fn queue_event(
    events: &mut EventQueue,
    prq: &mut PageRequests,
    host: &mut dyn HostIommu,
    e: Event,
) {
    if let Some(old) = events.push(e) {
        // debug, not warn: a misbehaving device can fault at will.
        debug!("event queue full: dropped {old:?}");
        if let Event::PageRequest(p) = old {
            prq.fail_undeliverable(host, &p);
        }
    }
}

/// Size of the config space.
pub const CONFIG_SIZE: usize = core::mem::size_of::<Config>();

/// Why a config-space write was refused. The state is unchanged; the daemon logs and ignores
/// it (a vhost-user SET_CONFIG error would drop the connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigWriteError {
    /// The write is empty or reaches past the 40-byte config space.
    #[error("config write of {len} bytes at {offset} is out of range")]
    OutOfRange {
        /// Offset of the write.
        offset: u32,
        /// Its length.
        len: usize,
    },
    /// The write changes a read-only field (everything but `bypass`).
    #[error("config byte {offset} is read-only")]
    ReadOnly {
        /// Offset of the first such byte.
        offset: usize,
    },
    /// `bypass` may only be 0 or 1.
    #[error("invalid bypass value {0}")]
    InvalidBypass(u8),
    /// `bypass` may only change once BYPASS_CONFIG is negotiated.
    #[error("bypass written without BYPASS_CONFIG negotiated")]
    NotNegotiated,
}

/// The device model.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    endpoints: EndpointTable,
    host: Box<dyn HostIommu>,
    offered: Features,
    negotiated: Features,
    bypass: bool,
    domains: Domains,
    events: EventQueue,
    requests: RequestStats,
    /// Guest memory, for the DMA the engine copies itself ([`DeviceDma::start`]).
    mem: Option<GuestMemoryAtomic<GuestRam>>,
    prq: PageRequests,
    parked: ParkedDmas,
    parked_translations: ParkedTranslations,
    inval: Invalidations,
}

impl Engine {
    /// Validates `cfg` and builds the device in its power-on state, telling `host` the
    /// unattached default and every endpoint's reserved regions.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first problem found.
    pub fn new(mut cfg: EngineConfig, mut host: Box<dyn HostIommu>) -> Result<Self, ConfigError> {
        engine_config::validate(&cfg)?;
        let endpoints = EndpointTable::new(std::mem::take(&mut cfg.endpoints))?;
        let mut offered = Features::MAP_UNMAP
            | Features::INPUT_RANGE
            | Features::DOMAIN_RANGE
            | Features::PROBE
            | Features::BYPASS_CONFIG;
        offered.set(Features::MMIO, cfg.offer_mmio);
        offered.set(Features::ATTACH_TABLE, cfg.offer_attach_table);
        offered.set(Features::PAGE_REQUEST, cfg.offer_page_request);
        let probe_size = usize::try_from(cfg.probe_size).unwrap_or(usize::MAX);
        for ep in endpoints.iter() {
            let need = probe_properties::encoded_len(ep, offered);
            if need > probe_size {
                return Err(ConfigError::ProbeSizeTooSmall {
                    need,
                    probe_size: cfg.probe_size,
                });
            }
            host.set_reserved_regions(ep.ids.clone(), &ep.reserved);
        }
        host.set_unattached_bypass(cfg.boot_bypass);
        let l = &cfg.limits;
        let prq = PageRequests::new(
            l.max_page_request_groups,
            l.max_page_request_groups_total,
            l.page_request_timeout,
        );
        Ok(Engine {
            bypass: cfg.boot_bypass,
            events: EventQueue::new(cfg.limits.max_pending_events),
            mem: None,
            prq,
            parked: ParkedDmas::default(),
            parked_translations: ParkedTranslations::default(),
            inval: Invalidations::default(),
            cfg,
            endpoints,
            host,
            offered,
            negotiated: Features::empty(),
            domains: Domains::default(),
            requests: RequestStats::default(),
        })
    }

    /// The features the device offers. Never the legacy `F_BYPASS` (superseded by
    /// BYPASS_CONFIG, which is always offered).
    #[must_use]
    pub fn offered_features(&self) -> Features {
        self.offered
    }

    /// Records the features the driver accepted (only offered ones are kept).
    pub fn negotiate(&mut self, driver_acked: Features) {
        self.negotiated = driver_acked & self.offered;
        debug!("features negotiated: {:?}", self.negotiated);
    }

    /// The negotiated features.
    #[must_use]
    pub fn negotiated(&self) -> Features {
        self.negotiated
    }

    /// The current config space. Ranges are reported whether or not their feature is
    /// negotiated: the device enforces them either way.
    #[must_use]
    pub fn config_space(&self) -> Config {
        Config {
            page_size_mask: self.cfg.page_size_mask.into(),
            input_range_start: self.cfg.input_range.0.into(),
            input_range_end: self.cfg.input_range.1.into(),
            domain_range_start: self.cfg.domain_range.0.into(),
            domain_range_end: self.cfg.domain_range.1.into(),
            probe_size: self.cfg.probe_size.into(),
            bypass: u8::from(self.bypass),
            reserved: [0; 3],
        }
    }

    /// A driver write to the config space. Only `bypass` is writable, only with 0 or 1, only
    /// once BYPASS_CONFIG is negotiated (as QEMU). A write may cover other bytes as long as it
    /// leaves them unchanged (vhost-user frontends may write the whole space back).
    ///
    /// # Errors
    /// A [`ConfigWriteError`]; nothing changes then.
    pub fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), ConfigWriteError> {
        let out_of_range = ConfigWriteError::OutOfRange {
            offset,
            len: data.len(),
        };
        let start = usize::try_from(offset).map_err(|_| out_of_range)?;
        match start.checked_add(data.len()) {
            Some(end) if end <= CONFIG_SIZE && !data.is_empty() => {}
            _ => return Err(out_of_range),
        }
        let current = self.config_space();
        let mut new_bypass = None;
        for (pos, (b, cur)) in data
            .iter()
            .zip(&current.as_bytes()[start..])
            .enumerate()
            .map(|(i, x)| (start + i, x))
        {
            if pos == BYPASS_OFFSET {
                new_bypass = Some(*b);
            } else if b != cur {
                return Err(ConfigWriteError::ReadOnly { offset: pos });
            }
        }
        let Some(v) = new_bypass else {
            return Ok(());
        };
        if v > 1 {
            return Err(ConfigWriteError::InvalidBypass(v));
        }
        let bypass = v == 1;
        if bypass != self.bypass {
            if !self.negotiated.contains(Features::BYPASS_CONFIG) {
                return Err(ConfigWriteError::NotNegotiated);
            }
            debug!("config: bypass {} -> {}", self.bypass, bypass);
            self.bypass = bypass;
            self.host.set_unattached_bypass(bypass);
            self.inval.record(Invalidation::everything());
        }
        Ok(())
    }

    /// Virtio device reset: every endpoint detached, every domain, mapping and bound table gone
    /// (host mirrors torn down), outstanding page requests completed with FAILURE, pending
    /// events dropped. `bypass` keeps its value (spec §1.3) and the
    /// negotiated features stay until the transport negotiates again (vhost-user sends
    /// SET_FEATURES around a reset in no fixed order). Counters are cumulative and stay.
    pub fn reset(&mut self) {
        self.domains.clear(self.host.as_mut());
        self.prq.fail_all(self.host.as_mut());
        self.events.clear();
        self.host.set_unattached_bypass(self.bypass);
        self.inval.record(Invalidation::everything());
    }

    /// Ends the device's use of its host: every domain is destroyed through it (as on reset),
    /// then it is swapped for `replacement` and returned, for the caller to drop (an iommufd
    /// host then destroys its remaining objects and detaches its devices).
    pub fn replace_host(&mut self, replacement: Box<dyn HostIommu>) -> Box<dyn HostIommu> {
        self.reset();
        std::mem::replace(&mut self.host, replacement)
    }

    /// System reset: [`Engine::reset`] and `bypass` back to its boot value.
    pub fn system_reset(&mut self) {
        self.reset();
        self.bypass = self.cfg.boot_bypass;
        self.host.set_unattached_bypass(self.bypass);
    }

    /// Starts or stops recording what a translation-service client may have cached and must
    /// drop (spec/TRANSLATION.md §4.1). Off by default.
    pub fn track_invalidations(&mut self, on: bool) {
        self.inval.set_enabled(on);
    }

    /// Whether a PAGE_RESP completed the group of a parked device translation or DMA since the
    /// last call: what waits for it (the translation service) should resume it now rather than
    /// at its next poll.
    pub fn take_page_answers(&mut self) -> bool {
        self.prq.take_answered()
    }

    /// The changes recorded since the last call, oldest first (empty unless tracking is on).
    pub fn take_invalidations(&mut self) -> Vec<Invalidation> {
        self.inval.take()
    }

    /// Handles one request. `readable` is the device-readable part (gathered across
    /// descriptors), `writable` a buffer as large as the device-writable part. Returns the
    /// used length: 0 with nothing written when the request cannot be answered (writable part
    /// under 4 bytes, unreadable or unknown type, feature not negotiated); otherwise
    /// `writable.len()`, with the status in the last 4 bytes, PROBE properties (if any) at the
    /// start and zeros everywhere else.
    pub fn handle_request(&mut self, readable: &[u8], writable: &mut [u8]) -> usize {
        let ty = Request::peek_type(readable).ok();
        let Some(tail_at) = writable.len().checked_sub(TAIL_SIZE) else {
            match ty {
                Some(ty) => debug!("{ty}: writable part under 4 bytes: no reply"),
                None => debug!("request of unknown type: writable part under 4 bytes: no reply"),
            }
            self.requests.no_reply(ty);
            return 0;
        };
        let Some(ty) = ty else {
            debug!("request with unknown type {:?}: no reply", readable.first());
            self.requests.no_reply(None);
            return 0;
        };
        if !self.type_allowed(ty) {
            debug!("{ty} without its feature negotiated: no reply");
            self.requests.no_reply(Some(ty));
            return 0;
        }
        writable.fill(0);
        let (area, tail) = writable.split_at_mut(tail_at);
        let status = match Request::parse(readable) {
            Ok(req) => {
                let status = self.dispatch(&req, area);
                debug!("{}: S_{status}", RequestLine(&req));
                status
            }
            Err(e) => match e.status() {
                Some(s) => {
                    debug!("{ty} (malformed: {e}): S_{s}");
                    s
                }
                None => {
                    debug!("{ty}: {e}: no reply");
                    self.requests.no_reply(Some(ty));
                    return 0;
                }
            },
        };
        tail[0] = status as u8;
        self.requests.replied(ty, status);
        writable.len()
    }

    fn type_allowed(&self, ty: RequestType) -> bool {
        let needs = match ty {
            RequestType::Attach | RequestType::Detach => Features::empty(),
            RequestType::Map | RequestType::Unmap => Features::MAP_UNMAP,
            RequestType::Probe => Features::PROBE,
            RequestType::AttachTable | RequestType::Invalidate => Features::ATTACH_TABLE,
            RequestType::PageResp => Features::PAGE_REQUEST,
        };
        self.negotiated.contains(needs)
    }

    fn split(&mut self) -> (&mut Domains, Ctx<'_>) {
        (
            &mut self.domains,
            Ctx {
                cfg: &self.cfg,
                endpoints: &self.endpoints,
                negotiated: self.negotiated,
                host: self.host.as_mut(),
                inval: &mut self.inval,
            },
        )
    }

    fn dispatch(&mut self, req: &Request, area: &mut [u8]) -> Status {
        match req {
            Request::Attach(a) => {
                let (d, mut ctx) = self.split();
                d.attach(&mut ctx, a)
            }
            Request::Detach(x) => {
                let (d, mut ctx) = self.split();
                d.detach(&mut ctx, x)
            }
            Request::Map(m) => {
                let (d, mut ctx) = self.split();
                d.map(&mut ctx, m)
            }
            Request::Unmap(u) => {
                let (d, mut ctx) = self.split();
                d.unmap(&mut ctx, u)
            }
            Request::Probe(p) => self.probe(p.endpoint, area),
            Request::AttachTable(a) => {
                let (d, mut ctx) = self.split();
                d.attach_table(&mut ctx, a)
            }
            Request::Invalidate(i) => {
                let (d, mut ctx) = self.split();
                d.invalidate(&mut ctx, i)
            }
            Request::PageResp(p) => {
                if self.endpoints.find(p.endpoint).is_none() {
                    Status::NoEnt
                } else {
                    self.prq.respond(self.host.as_mut(), p)
                }
            }
        }
    }

    /// PROBE. The area check comes first: a driver that supplies less than `probe_size` gets
    /// S_INVAL and nothing else, whatever the endpoint.
    fn probe(&mut self, endpoint: u32, area: &mut [u8]) -> Status {
        let probe_size = usize::try_from(self.cfg.probe_size).unwrap_or(usize::MAX);
        if area.len() < probe_size {
            return Status::Inval;
        }
        let Some((_, ep)) = self.endpoints.find(endpoint) else {
            return Status::NoEnt;
        };
        if probe_properties::write(ep, self.offered, self.prq.max_per_endpoint(), area).is_err() {
            // Cannot happen: `new` checked that every endpoint's properties fit probe_size.
            area.fill(0);
            return Status::DevErr;
        }
        Status::Ok
    }

    /// Queues an event for the driver, dropping the oldest if the queue is full.
    pub fn push_event(&mut self, e: Event) {
        queue_event(&mut self.events, &mut self.prq, self.host.as_mut(), e);
    }

    /// Moves the events the host raised on its own into the queue (at most one queue's worth
    /// per call, so a runaway host cannot stall the caller). Page requests become outstanding
    /// groups; one beyond the group limits is answered FAILURE at once and not queued. Returns
    /// how many events were taken from the host.
    pub fn poll_host(&mut self) -> usize {
        let mut n = 0;
        while n < self.cfg.limits.max_pending_events {
            let Some(e) = self.host.poll_event() else {
                break;
            };
            n += 1;
            if let Event::PageRequest(p) = &e {
                if !self
                    .prq
                    .register_host(self.host.as_mut(), p, Instant::now())
                {
                    continue;
                }
            }
            self.push_event(e);
        }
        n
    }

    /// Events waiting for a buffer (at most `limits.max_pending_events`).
    #[must_use]
    pub fn pending_events(&self) -> usize {
        self.events.len()
    }

    /// Whether an event is waiting for a buffer.
    #[must_use]
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The next pending event, encoded for a driver buffer of `buf_len` bytes: the 48-byte
    /// extended record if PAGE_REQUEST is negotiated and the buffer holds it, else the 24-byte
    /// upstream fault. `None` if nothing is pending or the buffer is under 24 bytes (the event
    /// then stays queued). A page request that cannot be delivered is completed by the device
    /// with a failure and skipped.
    pub fn pop_event(&mut self, buf_len: usize) -> Option<EventBytes> {
        let extended = self.negotiated.contains(Features::PAGE_REQUEST);
        loop {
            match self.events.pop(buf_len, extended) {
                Delivery::Empty | Delivery::TooSmall => return None,
                Delivery::Bytes(b) => return Some(b),
                Delivery::Undeliverable(p) => self.prq.fail_undeliverable(self.host.as_mut(), &p),
            }
        }
    }

    /// Counters, and the size of the state now.
    #[must_use]
    pub fn stats(&self) -> Stats {
        let n = |x: usize| u64::try_from(x).unwrap_or(u64::MAX);
        Stats {
            requests: self.requests.clone(),
            events: self.events.counters(),
            page_requests: self.prq.counters(),
            domains: n(self.domains.domain_count()),
            mappings: n(self.domains.mapping_count()),
            attached_endpoints: n(self.domains.attached_count()),
            tables: n(self.domains.table_count()),
        }
    }

    /// The engine as a simulated device sees it: DMA, translation and page requests through
    /// the IOMMU (the control socket's `translate`, `dma-read` and `dma-write`).
    pub fn device_dma(&mut self) -> DeviceDma<'_> {
        DeviceDma {
            parked: &mut self.parked,
            host: self.host.as_mut(),
            mem: self.mem.as_ref(),
            prq: &mut self.prq,
            events: &mut self.events,
            endpoints: &self.endpoints,
            negotiated: self.negotiated,
        }
    }

    /// The engine as a translation-service client sees it (spec/TRANSLATION.md §3): TRANSLATE
    /// answered from the engine's state and the host's walk of guest tables, parked behind
    /// page requests like [`Engine::device_dma`]'s DMA.
    pub fn device_translate(&mut self) -> DeviceTranslate<'_> {
        DeviceTranslate {
            parked: &mut self.parked,
            translations: &mut self.parked_translations,
            domains: &self.domains,
            host: self.host.as_mut(),
            prq: &mut self.prq,
            events: &mut self.events,
            endpoints: &self.endpoints,
            negotiated: self.negotiated,
            bypass: self.bypass,
        }
    }

    /// Completes with FAILURE every page-request group whose deadline is at or before `now`
    /// (the guest never answered, or the event never found a buffer). DMAs behind them fault
    /// when resumed. Returns how many groups expired.
    pub fn expire_page_requests(&mut self, now: Instant) -> usize {
        self.prq.expire(self.host.as_mut(), &mut self.events, now)
    }

    /// Page-request groups `endpoint` has outstanding.
    #[must_use]
    pub fn outstanding_page_requests(&self, endpoint: u32) -> u32 {
        self.prq.outstanding(endpoint)
    }

    /// Domains → endpoints → mappings, and the bypass flag.
    #[must_use]
    pub fn dump(&self) -> Dump {
        Dump {
            bypass: self.bypass,
            domains: self.domains.dump(&*self.host),
        }
    }

    /// The domain `endpoint` is attached to, if any.
    #[must_use]
    pub fn domain_of(&self, endpoint: u32) -> Option<u32> {
        self.domains.domain_of(endpoint)
    }

    /// The host backend.
    #[must_use]
    pub fn host(&self) -> &dyn HostIommu {
        self.host.as_ref()
    }

    /// The host backend, mutable (e.g. to poll it from the daemon's event loop).
    pub fn host_mut(&mut self) -> &mut dyn HostIommu {
        self.host.as_mut()
    }

    /// Everything the guest can observe, and the counters, as a saved state (PROTOCOL.md §12);
    /// page-request deadlines become the time left at `now`.
    #[must_use]
    pub fn saved_state(&self, now: Instant) -> SavedState {
        state::snapshot(self, now)
    }

    /// [`Engine::saved_state`] as the stream of PROTOCOL.md §12.
    #[must_use]
    pub fn save_state(&self, now: Instant) -> Vec<u8> {
        self.saved_state(now).encode()
    }

    /// Decodes a stream and checks that it fits this device (the same configuration, and a
    /// state a guest could have built on it). Changes nothing.
    ///
    /// # Errors
    /// A [`StateError`] naming the first problem or difference.
    pub fn check_state(&self, bytes: &[u8]) -> Result<SavedState, StateError> {
        let s = SavedState::decode(bytes)?;
        state::check(self, &s)?;
        Ok(s)
    }

    /// Replaces the device's state with a saved one: checked first (a refusal changes
    /// nothing), then the old state is reset away and the saved one rebuilt through the host.
    /// Restored page-request groups time out `now` plus the time they had left.
    ///
    /// # Errors
    /// A [`StateError`]; only [`StateError::Rebuild`] (the host refused) comes after the
    /// device changed, and leaves it reset.
    pub fn restore_state(&mut self, s: &SavedState, now: Instant) -> Result<(), StateError> {
        state::check(self, s)?;
        state::apply(self, s, now)
    }

    /// [`Engine::check_state`], then [`Engine::restore_state`].
    ///
    /// # Errors
    /// As those.
    pub fn load_state(&mut self, bytes: &[u8], now: Instant) -> Result<(), StateError> {
        let s = SavedState::decode(bytes)?;
        self.restore_state(&s, now)
    }

    /// Hands guest memory to the host (DMA emulation, host mappings).
    pub fn set_guest_memory(&mut self, mem: GuestMemoryAtomic<GuestRam>) {
        self.mem = Some(mem.clone());
        self.host.set_guest_memory(mem);
    }
}
