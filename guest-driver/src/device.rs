//! The driver: initialisation, the request API (blocking, non-blocking, batched) and events.

use alloc::vec::Vec;
use core::fmt;
use core::hint::spin_loop;

use log::{debug, warn};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::Hal;
use virtio_iommu_spec::config::BYPASS_OFFSET;
use virtio_iommu_spec::features::VIRTIO_F_VERSION_1;
use virtio_iommu_spec::request::{
    Attach, AttachFlags, AttachTable, Detach, Invalidate, PageResp, Probe, Request, TableDesc,
    Unmap,
};
use virtio_iommu_spec::{Event, Features, EVENT_QUEUE, REQUEST_QUEUE};

use crate::config::{self, IommuConfig};
use crate::error::Error;
use crate::events::EventQueue;
use crate::mapping::Mapping;
use crate::preflight::{self, MAX_PROBE_SIZE};
use crate::probe::EndpointInfo;
use crate::requestq::{Reply, RequestQueue, Token};
use crate::stats::DriverStats;

/// The device features this driver accepts whenever the device offers them.
pub const SUPPORTED_FEATURES: Features = Features::INPUT_RANGE
    .union(Features::DOMAIN_RANGE)
    .union(Features::MAP_UNMAP)
    .union(Features::PROBE)
    .union(Features::MMIO)
    .union(Features::BYPASS_CONFIG);

/// The extension features the driver accepts only when [`DriverOptions::extensions`] asks.
pub const EXTENSION_FEATURES: Features = Features::ATTACH_TABLE.union(Features::PAGE_REQUEST);

/// How the driver initialises and waits.
///
/// The default waits a bounded time: a device that stops answering makes a blocking call
/// return [`Error::Timeout`], never hang the guest. Waiting forever must be asked for with
/// [`DriverOptions::unbounded`] (or `max_spins: None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverOptions {
    /// Extension features to accept if offered (a subset of [`EXTENSION_FEATURES`]; other bits
    /// are ignored).
    pub extensions: Features,
    /// How many times a blocking call polls the used ring before it gives up with
    /// [`Error::Timeout`]; `None` waits as long as the device takes. Default:
    /// [`DriverOptions::DEFAULT_MAX_SPINS`].
    pub max_spins: Option<u64>,
}

impl DriverOptions {
    /// The default bound on a blocking call's polls of the used ring. A poll that finds
    /// nothing reads the used index, looks the token up and runs a spin-loop hint: about
    /// 110 ns on an x86-64 host (measured against the test device), so about 11 s here, and
    /// longer under TCG, where each poll costs more. A live daemon answers within
    /// microseconds to milliseconds even to a slow TCG guest on a loaded host, so only a
    /// device that stopped answering runs into it.
    pub const DEFAULT_MAX_SPINS: u64 = 100_000_000;

    /// Blocking calls give up after `max_spins` polls of the used ring.
    #[must_use]
    pub const fn bounded(max_spins: u64) -> Self {
        DriverOptions {
            extensions: Features::empty(),
            max_spins: Some(max_spins),
        }
    }

    /// Blocking calls wait for as long as the device takes: only for a device the guest
    /// trusts to answer (`virtio-drivers`' own drivers wait like this).
    #[must_use]
    pub const fn unbounded() -> Self {
        DriverOptions {
            extensions: Features::empty(),
            max_spins: None,
        }
    }

    /// These options, accepting `extensions` if offered.
    #[must_use]
    pub const fn with_extensions(self, extensions: Features) -> Self {
        DriverOptions { extensions, ..self }
    }
}

impl Default for DriverOptions {
    /// No extensions; blocking calls bounded by [`DriverOptions::DEFAULT_MAX_SPINS`].
    fn default() -> Self {
        DriverOptions::bounded(DriverOptions::DEFAULT_MAX_SPINS)
    }
}

/// A virtio-iommu device driven over a `virtio-drivers` transport.
///
/// Requests are checked before they are sent (features, ranges, alignment); each completes
/// with the device's status mapped to [`Error`]. Blocking calls spin on the used ring; the
/// non-blocking [`submit`](Self::submit) / [`poll`](Self::poll) pair and the batched
/// [`map_batch`](Self::map_batch) let a kernel overlap requests.
pub struct VirtIOIommu<H: Hal, T: Transport> {
    transport: T,
    requests: RequestQueue<H>,
    events: EventQueue<H>,
    features: Features,
    config: IommuConfig,
    max_spins: Option<u64>,
    /// Blocking calls that timed out.
    timeouts: u64,
}

impl<H: Hal, T: Transport> fmt::Debug for VirtIOIommu<H, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtIOIommu")
            .field("features", &self.features)
            .field("config", &self.config)
            .field("in_flight", &self.requests.in_flight())
            .finish_non_exhaustive()
    }
}

impl<H: Hal, T: Transport> VirtIOIommu<H, T> {
    /// Initialises the device with the default [`DriverOptions`].
    ///
    /// # Errors
    /// See [`new_with`](Self::new_with).
    pub fn new(transport: T) -> Result<Self, Error> {
        Self::new_with(transport, DriverOptions::default())
    }

    /// Initialises the device: negotiates `VIRTIO_F_VERSION_1` and every supported feature the
    /// device offers, reads the config, sets up both queues and posts the event buffers.
    ///
    /// # Errors
    /// [`Error::WrongDeviceType`], [`Error::NoVersion1`], [`Error::NoMapUnmap`],
    /// [`Error::ZeroPageSizeMask`], [`Error::FeaturesRejected`], [`Error::ConfigUnstable`],
    /// [`Error::BadInputRange`], [`Error::BadDomainRange`] or a queue-setup
    /// [`Error::Transport`]. The device is marked `FAILED` on any of them.
    pub fn new_with(mut transport: T, options: DriverOptions) -> Result<Self, Error> {
        if transport.device_type() != DeviceType::IOMMU {
            return Err(Error::WrongDeviceType);
        }
        match Self::init(&mut transport, options) {
            Ok((features, config, requests, events)) => {
                let mut dev = VirtIOIommu {
                    transport,
                    requests,
                    events,
                    features,
                    config,
                    max_spins: options.max_spins,
                    timeouts: 0,
                };
                dev.transport.finish_init();
                dev.events.kick(&mut dev.transport);
                Ok(dev)
            }
            Err(e) => {
                warn!("virtio-iommu initialisation failed: {e}");
                transport.set_status(DeviceStatus::FAILED);
                Err(e)
            }
        }
    }

    #[allow(clippy::type_complexity)] // a private constructor's parts, named at its one caller
    fn init(
        transport: &mut T,
        options: DriverOptions,
    ) -> Result<(Features, IommuConfig, RequestQueue<H>, EventQueue<H>), Error> {
        transport.set_status(DeviceStatus::empty());
        transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let offered = transport.read_device_features();
        if offered & VIRTIO_F_VERSION_1 == 0 {
            return Err(Error::NoVersion1);
        }
        let device = Features::from_bits_truncate(offered);
        if !device.contains(Features::MAP_UNMAP) {
            return Err(Error::NoMapUnmap);
        }
        // The driver may read (not write) the config before accepting features.
        let raw = config::read_raw(transport)?;
        if raw.page_size_mask.get() == 0 {
            return Err(Error::ZeroPageSizeMask);
        }
        let mut wanted = SUPPORTED_FEATURES | (options.extensions & EXTENSION_FEATURES);
        if device.contains(Features::PROBE) && raw.probe_size.get() > MAX_PROBE_SIZE {
            warn!(
                "probe_size {} exceeds {MAX_PROBE_SIZE}; not accepting F_PROBE",
                raw.probe_size.get()
            );
            wanted.remove(Features::PROBE);
        }
        let features = device & wanted;
        debug!("virtio-iommu: offered {offered:#x}, accepting {features:?}");
        transport.write_driver_features(features.bits() | VIRTIO_F_VERSION_1);
        transport.set_status(
            DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK,
        );
        if !transport.get_status().contains(DeviceStatus::FEATURES_OK) {
            return Err(Error::FeaturesRejected);
        }
        let config = IommuConfig::from_raw(&config::read_raw(transport)?, features);
        config.check()?;
        let requests = RequestQueue::new(transport)?;
        let events = match EventQueue::new(transport) {
            Ok(e) => e,
            Err(e) => {
                transport.queue_unset(REQUEST_QUEUE);
                return Err(e);
            }
        };
        Ok((features, config, requests, events))
    }

    /// The bound on a blocking call's polls of the used ring (`None`: unbounded), from
    /// [`DriverOptions::max_spins`].
    #[must_use]
    pub fn max_spins(&self) -> Option<u64> {
        self.max_spins
    }

    /// The negotiated device features (transport bits excluded).
    #[must_use]
    pub fn features(&self) -> Features {
        self.features
    }

    /// The config read at initialisation (and updated by [`set_bypass`](Self::set_bypass) and
    /// [`read_config`](Self::read_config)).
    #[must_use]
    pub fn config(&self) -> &IommuConfig {
        &self.config
    }

    /// Re-reads the config space (e.g. after a configuration-change interrupt).
    ///
    /// # Errors
    /// [`Error::ConfigUnstable`], a value [`IommuConfig::check`] refuses, or a transport
    /// error; the previous snapshot is kept then. (A `probe_size` above [`MAX_PROBE_SIZE`] is
    /// kept: PROBE then fails its pre-flight check with [`Error::ProbeTooLarge`].)
    pub fn read_config(&mut self) -> Result<IommuConfig, Error> {
        let config = IommuConfig::from_raw(&config::read_raw(&self.transport)?, self.features);
        config.check()?;
        self.config = config;
        Ok(config)
    }

    /// Acknowledges the device's interrupt and says which kinds were pending.
    pub fn ack_interrupt(&mut self) -> InterruptStatus {
        self.transport.ack_interrupt()
    }

    // ---- Non-blocking requests ------------------------------------------------------------

    /// Checks `req` and places it in the request queue without notifying the device; follow
    /// with [`notify`](Self::notify). Use this to send several requests with one notification.
    ///
    /// # Errors
    /// A pre-flight error, or [`Error::QueueFull`] when the ring has no room (collect
    /// completions with [`poll`](Self::poll) first).
    pub fn enqueue(&mut self, req: &Request) -> Result<Token, Error> {
        preflight::check(req, self.features, &self.config)?;
        self.requests.enqueue(req, self.config.probe_size)
    }

    /// Notifies the device of enqueued requests (unless it suppressed notifications).
    pub fn notify(&mut self) {
        self.requests.kick(&mut self.transport);
    }

    /// [`enqueue`](Self::enqueue) then [`notify`](Self::notify).
    ///
    /// Collect every token with [`poll`](Self::poll) or [`wait`](Self::wait): completions are
    /// kept until their token is collected.
    ///
    /// # Errors
    /// As [`enqueue`](Self::enqueue).
    pub fn submit(&mut self, req: &Request) -> Result<Token, Error> {
        let token = self.enqueue(req)?;
        self.notify();
        Ok(token)
    }

    /// Whether another request fits in the ring right now.
    #[must_use]
    pub fn has_room(&self) -> bool {
        self.requests.has_room()
    }

    /// The completion of `token`: `Ok(None)` while the device holds it; once complete, its
    /// reply or error (after which the token is spent).
    ///
    /// # Errors
    /// The request's own error, [`Error::UnknownToken`] for a spent or foreign token, or a
    /// used-ring error.
    pub fn poll(&mut self, token: Token) -> Result<Option<Reply>, Error> {
        // A completion collected before a bad used entry is still returned.
        let reaped = self.requests.reap();
        let taken = self.requests.take(token);
        if let Ok(Some(result)) = taken {
            return result.map(Some);
        }
        reaped?;
        taken?;
        Ok(None)
    }

    /// Waits for `token` to complete.
    ///
    /// # Errors
    /// As [`poll`](Self::poll), plus [`Error::Timeout`] after `max_spins` polls. After any
    /// error but the request's own the token is spent, but the request stays in flight: its buffers and ring slots are held until
    /// the device returns it, and that late completion is recognised by its descriptor and
    /// discarded (see [`DriverStats`]); dropping the driver resets the device instead.
    pub fn wait(&mut self, token: Token) -> Result<Reply, Error> {
        self.wait_inner(token)?
    }

    /// Outer error: the wait itself failed (timeout, used ring); inner: the request's result.
    fn wait_inner(&mut self, token: Token) -> Result<Result<Reply, Error>, Error> {
        let mut spins: u64 = 0;
        loop {
            let reaped = self.requests.reap();
            match self.requests.take(token) {
                Ok(Some(result)) => return Ok(result),
                Ok(None) => {}
                Err(e) => return Err(reaped.err().unwrap_or(e)),
            }
            if let Err(e) = reaped {
                // The ring is broken past this request's reply, if it has one.
                self.requests.abandon(token);
                return Err(e);
            }
            if self.max_spins.is_some_and(|max| spins >= max) {
                self.requests.abandon(token);
                self.timeouts = self.timeouts.saturating_add(1);
                return Err(Error::Timeout);
            }
            spins = spins.saturating_add(1);
            spin_loop();
        }
    }

    /// Waits until the ring has room for one more request.
    fn wait_for_room(&mut self) -> Result<(), Error> {
        let mut spins: u64 = 0;
        loop {
            self.requests.reap()?;
            if self.requests.has_room() {
                return Ok(());
            }
            if self.max_spins.is_some_and(|max| spins >= max) {
                self.timeouts = self.timeouts.saturating_add(1);
                return Err(Error::Timeout);
            }
            spins = spins.saturating_add(1);
            spin_loop();
        }
    }

    // ---- Blocking requests ----------------------------------------------------------------

    /// Sends any request and waits for its reply.
    ///
    /// # Errors
    /// A pre-flight error, the device's status, a bad used length, or a wait error.
    pub fn request(&mut self, req: &Request) -> Result<Reply, Error> {
        preflight::check(req, self.features, &self.config)?;
        if !self.requests.has_room() {
            self.wait_for_room()?;
        }
        let token = self.submit(req)?;
        self.wait(token)
    }

    fn request_done(&mut self, req: &Request) -> Result<(), Error> {
        self.request(req).map(|_| ())
    }

    /// ATTACH `endpoint` to `domain` (created by the device if new). With
    /// [`AttachFlags::BYPASS`] the domain is an identity domain (needs `F_BYPASS_CONFIG`).
    ///
    /// # Errors
    /// See [`request`](Self::request).
    pub fn attach(&mut self, domain: u32, endpoint: u32, flags: AttachFlags) -> Result<(), Error> {
        self.request_done(&Request::Attach(Attach {
            domain,
            endpoint,
            flags,
        }))
    }

    /// DETACH `endpoint` from `domain`.
    ///
    /// # Errors
    /// See [`request`](Self::request).
    pub fn detach(&mut self, domain: u32, endpoint: u32) -> Result<(), Error> {
        self.request_done(&Request::Detach(Detach { domain, endpoint }))
    }

    /// MAP one range.
    ///
    /// # Errors
    /// See [`request`](Self::request); [`Error::EmptyRange`] for a zero or wrapping size.
    pub fn map(&mut self, mapping: &Mapping) -> Result<(), Error> {
        self.request_done(&mapping.to_request()?)
    }

    /// UNMAP `[iova, iova + size)`: removes every mapping wholly inside it (the device answers
    /// `S_RANGE` if the range would split one).
    ///
    /// # Errors
    /// See [`request`](Self::request); [`Error::EmptyRange`] for a zero or wrapping size.
    pub fn unmap(&mut self, domain: u32, iova: u64, size: u64) -> Result<(), Error> {
        let virt_end = size
            .checked_sub(1)
            .and_then(|s| iova.checked_add(s))
            .ok_or(Error::EmptyRange)?;
        self.request_done(&Request::Unmap(Unmap {
            domain,
            virt_start: iova,
            virt_end,
        }))
    }

    /// PROBE `endpoint`: its reserved regions and (with the extensions) its capabilities.
    ///
    /// # Errors
    /// See [`request`](Self::request); [`Error::NotNegotiated`] without `F_PROBE`.
    pub fn probe(&mut self, endpoint: u32) -> Result<EndpointInfo, Error> {
        match self.request(&Request::Probe(Probe { endpoint }))? {
            Reply::Probe(info) => Ok(info),
            Reply::Done => Ok(EndpointInfo::default()),
        }
    }

    /// Sets the boot-bypass config byte: whether unattached endpoints bypass the IOMMU.
    ///
    /// The byte is read back: a device must keep what the driver wrote.
    ///
    /// # Errors
    /// [`Error::NotNegotiated`] without `F_BYPASS_CONFIG`, [`Error::BypassNotKept`] when the
    /// read-back differs (the config then holds what the device shows), or a transport error.
    pub fn set_bypass(&mut self, bypass: bool) -> Result<(), Error> {
        if !self.features.contains(Features::BYPASS_CONFIG) {
            return Err(Error::NotNegotiated(Features::BYPASS_CONFIG));
        }
        self.transport
            .write_config_space::<u8>(BYPASS_OFFSET, u8::from(bypass))?;
        // Only bit 0 has a meaning, as in `IommuConfig::from_raw`.
        let kept = self.transport.read_config_space::<u8>(BYPASS_OFFSET)? & 1 == 1;
        self.config.bypass = Some(kept);
        if kept == bypass {
            Ok(())
        } else {
            Err(Error::BypassNotKept { wanted: bypass })
        }
    }

    /// ATTACH_TABLE (extension): binds a guest-owned table to `endpoint`, its output addresses
    /// translated by `domain`.
    ///
    /// # Errors
    /// See [`request`](Self::request); [`Error::NotNegotiated`] without `F_ATTACH_TABLE`.
    pub fn attach_table(
        &mut self,
        domain: u32,
        endpoint: u32,
        table: TableDesc,
    ) -> Result<(), Error> {
        self.request_done(&Request::AttachTable(AttachTable {
            domain,
            endpoint,
            table,
        }))
    }

    /// INVALIDATE (extension): drops cached translations or table entries.
    ///
    /// # Errors
    /// See [`request`](Self::request); [`Error::NotNegotiated`] without `F_ATTACH_TABLE`.
    pub fn invalidate(&mut self, inv: &Invalidate) -> Result<(), Error> {
        self.request_done(&Request::Invalidate(*inv))
    }

    /// PAGE_RESP (extension): answers a page request group.
    ///
    /// # Errors
    /// See [`request`](Self::request); [`Error::NotNegotiated`] without `F_PAGE_REQUEST`.
    pub fn page_response(&mut self, resp: &PageResp) -> Result<(), Error> {
        self.request_done(&Request::PageResp(*resp))
    }

    // ---- Batches ----------------------------------------------------------------------------

    /// Sends many requests with as few notifications as the ring allows: it is filled, the
    /// device notified once, and the chunk collected before the next; requests failing their
    /// pre-flight check are not sent. Results come back in input order.
    ///
    /// # Errors
    /// The outer error aborts the batch (timeout or used-ring failure); per-request errors
    /// are in the vector.
    pub fn batch(&mut self, reqs: &[Request]) -> Result<Vec<Result<Reply, Error>>, Error> {
        let prepared: Vec<Result<Request, Error>> = reqs.iter().copied().map(Ok).collect();
        self.run_batch(&prepared)
    }

    /// MAP many ranges with one notification per ring-full (Linux's `sync_map` model).
    ///
    /// # Errors
    /// As [`batch`](Self::batch).
    pub fn map_batch(&mut self, mappings: &[Mapping]) -> Result<Vec<Result<(), Error>>, Error> {
        let prepared: Vec<Result<Request, Error>> =
            mappings.iter().map(Mapping::to_request).collect();
        Ok(self
            .run_batch(&prepared)?
            .into_iter()
            .map(|r| r.map(|_| ()))
            .collect())
    }

    fn run_batch(
        &mut self,
        reqs: &[Result<Request, Error>],
    ) -> Result<Vec<Result<Reply, Error>>, Error> {
        let mut results: Vec<Option<Result<Reply, Error>>> = reqs.iter().map(|_| None).collect();
        let mut chunk: Vec<(usize, Token)> = Vec::new();
        for (i, req) in reqs.iter().enumerate() {
            let req = match req
                .and_then(|r| preflight::check(&r, self.features, &self.config).map(|()| r))
            {
                Ok(r) => r,
                Err(e) => {
                    results[i] = Some(Err(e));
                    continue;
                }
            };
            if !self.requests.has_room() {
                self.flush(&mut chunk, &mut results)?;
                if !self.requests.has_room() {
                    // Requests submitted outside this batch still occupy the ring.
                    self.wait_for_room()?;
                }
            }
            let token = match self.requests.enqueue(&req, self.config.probe_size) {
                Ok(t) => t,
                Err(e) => {
                    self.abandon_all(&chunk);
                    return Err(e);
                }
            };
            chunk.push((i, token));
        }
        self.flush(&mut chunk, &mut results)?;
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or(Err(Error::NoReply)))
            .collect())
    }

    /// Notifies once for the chunk and collects all of it.
    fn flush(
        &mut self,
        chunk: &mut Vec<(usize, Token)>,
        results: &mut [Option<Result<Reply, Error>>],
    ) -> Result<(), Error> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.notify();
        for n in 0..chunk.len() {
            let (i, token) = chunk[n];
            match self.wait_inner(token) {
                Ok(r) => {
                    if let Some(slot) = results.get_mut(i) {
                        *slot = Some(r);
                    }
                }
                Err(e) => {
                    self.abandon_all(&chunk[n..]);
                    chunk.clear();
                    return Err(e);
                }
            }
        }
        chunk.clear();
        Ok(())
    }

    fn abandon_all(&mut self, tokens: &[(usize, Token)]) {
        for (_, t) in tokens {
            self.requests.abandon(*t);
        }
    }

    // ---- Events -------------------------------------------------------------------------------

    /// The next fault or page request, if the device reported one. The buffer is re-posted
    /// before returning.
    ///
    /// # Errors
    /// [`Error::MalformedEvent`] for a record that does not parse: it is dropped and counted
    /// ([`dropped_events`](Self::dropped_events)), and the next call returns the next record,
    /// so an interrupt handler keeps polling past it. [`Error::BadUsedId`] (the event queue
    /// is stuck) or another queue error.
    pub fn poll_event(&mut self) -> Result<Option<Event>, Error> {
        self.events.poll(&mut self.transport)
    }

    /// How many malformed event records were dropped.
    #[must_use]
    pub fn dropped_events(&self) -> u64 {
        self.events.malformed().seen()
    }

    /// What the driver counted of the device's misbehaviour, and the warnings it held back.
    #[must_use]
    pub fn stats(&self) -> DriverStats {
        let (rq, eq) = (&self.requests, &self.events);
        DriverStats {
            timeouts: self.timeouts,
            abandoned_in_flight: u64::try_from(rq.abandoned_in_flight()).unwrap_or(u64::MAX),
            late_completions: rq.late_completions(),
            bad_used_ids: rq
                .bad_used_ids()
                .seen()
                .saturating_add(eq.bad_used_ids().seen()),
            malformed_events: eq.malformed().seen(),
            malformed_probes: rq.malformed_probes(),
            suppressed_warnings: rq
                .bad_used_ids()
                .suppressed()
                .saturating_add(eq.bad_used_ids().suppressed())
                .saturating_add(eq.malformed().suppressed()),
        }
    }
}

impl<H: Hal, T: Transport> Drop for VirtIOIommu<H, T> {
    fn drop(&mut self) {
        // Reset first so the device stops using the rings and buffers freed after this.
        self.transport.set_status(DeviceStatus::empty());
        self.transport.queue_unset(REQUEST_QUEUE);
        self.transport.queue_unset(EVENT_QUEUE);
    }
}
