//! The vhost-user backend: two virtqueues, the config space, and the rules for telling a guest
//! reset from a VM pause.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_iommu_spec::features::{
    VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};
use virtio_iommu_spec::{Features, EVENT_QUEUE, REQUEST_QUEUE};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use crate::queue::{self, Scratch};
use crate::viommu::Viommu;

/// Number of virtqueues: requestq and eventq.
pub const NUM_QUEUES: usize = 2;
/// `handle_event` ID of the "events pending" wake-up eventfd (IDs up to NUM_QUEUES are the
/// library's).
pub const WAKE_EVENT: u16 = 3;
/// `handle_event` ID of the page-request timer (expires groups the guest never answered).
pub const TIMER_EVENT: u16 = 4;
/// `handle_event` ID of the host's own event source (iommufd fault queue).
pub const HOST_EVENT: u16 = 5;
/// Period of the page-request timer.
const TIMER_PERIOD: Duration = Duration::from_millis(100);

/// The engine shared by the backend (queue thread) and the control socket.
pub type SharedViommu = Arc<Mutex<Viommu>>;

/// Locks the engine; a poisoned lock (a panic elsewhere) still yields the state.
pub fn lock(v: &SharedViommu) -> MutexGuard<'_, Viommu> {
    v.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One vhost-user connection's backend. The engine outlives it: the serve loop creates a
/// backend per connection around the same [`SharedViommu`].
#[derive(Debug)]
pub struct IommuBackend {
    viommu: SharedViommu,
    queue_size: u16,
    event_idx: bool,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    /// Written by the control socket when it queued an event, so the queue thread delivers it.
    wake: Arc<EventFd>,
    /// Periodic while page requests are offered: groups past their deadline are completed
    /// with FAILURE even when nothing else happens on the device.
    timer: TimerFd,
    /// Consumer fds handed to the library by `exit_event`; it never closes them (it keeps
    /// only the raw number), so the serve loop closes them after the connection's threads end.
    handed_out: Mutex<Vec<RawFd>>,
    /// Set by SET_FEATURES (QEMU sends it on every device start); the next queue event decides
    /// whether that start followed a guest reset.
    restart_pending: bool,
    /// `next_avail` of each ring when we last left it: what a VM pause resumes from.
    last_avail: [u16; NUM_QUEUES],
    /// Ring addresses (descriptor table, avail, used) at the last start.
    ring_addrs: Option<[[u64; 3]; NUM_QUEUES]>,
    scratch: Scratch,
}

impl IommuBackend {
    /// A backend for a new connection.
    ///
    /// # Errors
    /// The wake eventfd cannot be created.
    pub fn new(viommu: SharedViommu, queue_size: u16) -> io::Result<Self> {
        let mut timer = TimerFd::new()?;
        if lock(&viommu)
            .offered_features()
            .contains(Features::PAGE_REQUEST)
        {
            timer.reset(TIMER_PERIOD, Some(TIMER_PERIOD))?;
        }
        Ok(IommuBackend {
            timer,
            viommu,
            queue_size,
            event_idx: false,
            mem: None,
            wake: Arc::new(EventFd::new(EFD_NONBLOCK)?),
            handed_out: Mutex::new(Vec::new()),
            restart_pending: false,
            last_avail: [0; NUM_QUEUES],
            ring_addrs: None,
            scratch: Scratch::default(),
        })
    }

    /// The eventfd to write when an event was queued outside the queue thread.
    #[must_use]
    pub fn wake_fd(&self) -> Arc<EventFd> {
        self.wake.clone()
    }

    /// The page-request timer's fd, for the serve loop to register.
    #[must_use]
    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// Takes the exit-event consumer fds the library leaked, for the serve loop to close.
    pub fn take_handed_out_fds(&self) -> Vec<RawFd> {
        std::mem::take(
            &mut *self
                .handed_out
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// After a restart of the rings, decides between a guest reset and a VM pause (QEMU signals
    /// nothing else). Every ring back at 0 means a reset if a ring had made progress, or — for
    /// the rare case where a ring's index wrapped to exactly 0 — if the rings moved to new
    /// addresses (a re-initialising driver allocates new rings; a paused VM keeps its own).
    /// Rings resuming at their saved bases mean a pause, which keeps all state.
    fn check_restart(&mut self, vrings: &[VringRwLock]) {
        if !std::mem::replace(&mut self.restart_pending, false) {
            return;
        }
        let mut now = [0u16; NUM_QUEUES];
        let mut addrs = [[0u64; 3]; NUM_QUEUES];
        for (i, v) in vrings.iter().take(NUM_QUEUES).enumerate() {
            let state = v.get_ref();
            let q = state.get_queue();
            now[i] = q.next_avail();
            addrs[i] = [q.desc_table(), q.avail_ring(), q.used_ring()];
        }
        let progressed = self.last_avail.iter().any(|a| *a != 0);
        let moved = self.ring_addrs.is_some_and(|old| old != addrs);
        if now.iter().all(|a| *a == 0) && (progressed || moved) {
            info!(
                "rings restarted at 0 (were at {:?}): guest reset, resetting the device",
                self.last_avail
            );
            lock(&self.viommu).reset();
        } else {
            debug!(
                "rings resumed at {now:?} (were {:?}): state kept",
                self.last_avail
            );
        }
        self.last_avail = now;
        self.ring_addrs = Some(addrs);
    }

    fn process_requests(&mut self, vring: &VringRwLock) {
        let Some(mem) = self.mem.as_ref().map(GuestMemoryAtomic::memory) else {
            return;
        };
        let mut viommu = lock(&self.viommu);
        let mut state = vring.get_mut();
        loop {
            if self.event_idx {
                // A not-ready ring (stopped by GET_VRING_BASE) has nothing to do.
                if state.disable_notification().is_err() {
                    return;
                }
            }
            let mut any = false;
            while let Some(chain) = state.get_queue_mut().pop_descriptor_chain(mem.clone()) {
                any = true;
                let head = chain.head_index();
                let used = queue::process_request(&*mem, chain, &mut viommu, &mut self.scratch);
                if let Err(e) = state.add_used(head, used) {
                    warn!("requestq: add_used failed: {e}");
                    break;
                }
            }
            if any {
                Self::notify(&mut state, "requestq");
            }
            if !self.event_idx || !matches!(state.enable_notification(), Ok(true)) {
                break;
            }
        }
        self.last_avail[usize::from(REQUEST_QUEUE)] = state.get_queue().next_avail();
    }

    fn deliver_events(&mut self, vring: &VringRwLock) {
        let Some(mem) = self.mem.as_ref().map(GuestMemoryAtomic::memory) else {
            return;
        };
        let mut viommu = lock(&self.viommu);
        let mut state = vring.get_mut();
        let mut any = false;
        while viommu.has_events() {
            let Some(chain) = state.get_queue_mut().pop_descriptor_chain(mem.clone()) else {
                break; // No buffer: the event waits in the engine's bounded queue.
            };
            any = true;
            let head = chain.head_index();
            let used = queue::deliver_event(&*mem, chain, &mut viommu, &mut self.scratch);
            if let Err(e) = state.add_used(head, used) {
                warn!("eventq: add_used failed: {e}");
                break;
            }
        }
        if any {
            Self::notify(&mut state, "eventq");
        }
        self.last_avail[usize::from(EVENT_QUEUE)] = state.get_queue().next_avail();
    }

    fn notify(
        state: &mut vhost_user_backend::VringState<GuestMemoryAtomic<GuestMemoryMmap>>,
        q: &str,
    ) {
        if matches!(state.needs_notification(), Ok(false)) {
            return;
        }
        if let Err(e) = state.signal_used_queue() {
            warn!("{q}: call eventfd: {e}");
        }
    }
}

impl VhostUserBackendMut for IommuBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.queue_size)
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | VIRTIO_F_RING_EVENT_IDX
            | VIRTIO_F_RING_INDIRECT_DESC
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            | lock(&self.viommu).offered_features().bits()
    }

    fn acked_features(&mut self, features: u64) {
        let device = Features::from_bits_truncate(features);
        info!("driver features {features:#x} (device: {device:?})");
        lock(&self.viommu).negotiate(device);
        self.restart_pending = true;
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // Bytes past the 40-byte space read as zero (some frontends ask for more than the
        // device has, and fail hard on an empty reply); absurd sizes get nothing.
        const MAX_CONFIG_READ: u32 = 256;
        if size > MAX_CONFIG_READ || offset > MAX_CONFIG_READ {
            warn!("GET_CONFIG offset {offset} size {size} is outside any config space");
            return Vec::new();
        }
        let cfg = lock(&self.viommu).config_space();
        let bytes = zerocopy::IntoBytes::as_bytes(&cfg);
        let (start, len) = (offset as usize, size as usize);
        let mut out = vec![0u8; len];
        if let Some(src) = bytes.get(start..) {
            let n = src.len().min(len);
            out[..n].copy_from_slice(&src[..n]);
        }
        out
    }

    fn set_config(&mut self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // Never fail: an error here makes the library drop the whole connection, and the value
        // comes from the guest.
        if let Err(e) = lock(&self.viommu).write_config(offset, buf) {
            warn!("ignored config write at offset {offset} ({buf:02x?}): {e}");
        }
        Ok(())
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        lock(&self.viommu).set_guest_memory(mem.clone());
        self.mem = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK) {
            Ok((consumer, notifier)) => {
                self.handed_out
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(consumer.as_raw_fd());
                Some((consumer, notifier))
            }
            Err(e) => {
                warn!("cannot create the exit eventfd: {e}");
                None
            }
        }
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        // Never return an error: the library ends the queue thread on one.
        if evset != EventSet::IN {
            warn!("unexpected event set {evset:?} for event {device_event}");
            return Ok(());
        }
        self.check_restart(vrings);
        match device_event {
            REQUEST_QUEUE => {
                if let Some(v) = vrings.get(usize::from(REQUEST_QUEUE)) {
                    self.process_requests(v);
                }
            }
            EVENT_QUEUE => {}
            WAKE_EVENT => {
                // Non-blocking read; EAGAIN only means another wake-up already drained it.
                let _ = self.wake.read();
            }
            TIMER_EVENT => {
                let _ = self.timer.wait();
                let n = lock(&self.viommu).expire_page_requests(Instant::now());
                if n > 0 {
                    info!("{n} page-request group(s) timed out, completed with FAILURE");
                }
            }
            HOST_EVENT => {
                lock(&self.viommu).poll_host();
            }
            other => warn!("unknown device event {other}"),
        }
        if let Some(v) = vrings.get(usize::from(EVENT_QUEUE)) {
            self.deliver_events(v);
        }
        Ok(())
    }
}
