//! The vhost-user backend: two virtqueues, the config space, and the rules for telling a guest
//! reset from a VM pause (and a device start from a migration's dirty-logging switch).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use parking_lot::MutexGuard;
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserProtocolFeatures,
    VhostUserVirtioFeatures,
};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_iommu_spec::features::{
    VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};
use virtio_iommu_spec::{Features, EVENT_QUEUE, REQUEST_QUEUE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use crate::engine::Engine;
use crate::journal::{RingMarks, SharedJournal};
use crate::limited;
use crate::log_bitmap::LogBitmap;
use crate::queue::{self, Scratch};
use crate::ring::{RingError, RingView};
use crate::state_transfer::{Finished, StateTransfer};
use crate::translation::busy_poll::BusyPoll;
use crate::translation::{HeldReplies, HeldReply, Hub};
use crate::GuestRam;

/// Number of virtqueues: requestq and eventq.
pub const NUM_QUEUES: usize = 2;
/// `handle_event` ID of the "events pending" wake-up eventfd (IDs up to NUM_QUEUES are the
/// library's).
pub const WAKE_EVENT: u16 = 3;
/// `handle_event` ID of the page-request timer (expires groups the guest never answered).
pub const TIMER_EVENT: u16 = 4;
/// `handle_event` ID of the host's own event source (iommufd fault queue).
pub const HOST_EVENT: u16 = 5;
/// `VHOST_F_LOG_ALL`: the frontend logs dirty pages (a migration) and asks the backend to set
/// the bit of every page it writes, in the log SET_LOG_BASE handed over.
const LOG_ALL: u64 = VhostUserVirtioFeatures::LOG_ALL.bits();
/// Period of the page-request timer.
const TIMER_PERIOD: Duration = Duration::from_millis(100);
/// How long a ring stop waits for held replies past the ack bound (the service thread cuts
/// a silent client at its deadline; this covers its wake-up).
const STOP_MARGIN: Duration = Duration::from_millis(500);
/// The poll period of that wait (acks arrive on the service thread).
const STOP_POLL: Duration = Duration::from_millis(1);

/// Request chains served per hold of the engine lock.
pub const CHAINS_PER_LOCK: u16 = 32;
/// Spells of polling after a wake-up (each one ended by finding work) before the queue thread
/// goes back to its epoll wait.
const POLL_ROUNDS: u32 = 16;
/// Request chains served per queue-thread wake-up before the other event sources get a turn.
pub const CHAINS_PER_WAKE: u16 = 256;

/// One virtqueue as the library hands it to this backend (over [`GuestRam`]).
pub type QueueRing = VringRwLock<GuestMemoryAtomic<GuestRam>>;

/// The engine shared by the backend (queue thread) and the control socket.
pub type SharedEngine = Arc<parking_lot::Mutex<Engine>>;

/// Locks the engine.
pub fn lock(v: &SharedEngine) -> MutexGuard<'_, Engine> {
    v.lock()
}

/// One vhost-user connection's backend. The engine outlives it: the serve loop creates a
/// backend per connection around the same [`SharedEngine`].
#[derive(Debug)]
pub struct IommuBackend {
    engine: SharedEngine,
    queue_size: u16,
    event_idx: bool,
    mem: Option<GuestMemoryAtomic<GuestRam>>,
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
    /// Set by a completed SAVE, cleared by the next device start ([`IommuBackend::handed_off`]).
    handed_off: AtomicBool,
    /// The last SET_FEATURES of this connection: with `ring_stopped`, tells a device start from
    /// the frontend turning dirty logging on or off on running rings.
    acked: Option<u64>,
    /// A ring was stopped (GET_VRING_BASE) since the last SET_FEATURES.
    ring_stopped: bool,
    /// `next_avail` of each ring when we last left it: what a VM pause resumes from.
    last_avail: [u16; NUM_QUEUES],
    /// Ring addresses (descriptor table, avail, used) at the last start.
    ring_addrs: Option<[[u64; 3]; NUM_QUEUES]>,
    scratch: Scratch,
    /// Queues whose driver broke the ring's invariants: not served until the device restarts.
    broken: [bool; NUM_QUEUES],
    /// The last request drain stopped at its budget; the wake-up it queued resumes it.
    requests_deferred: bool,
    /// A device-state transfer between SET_DEVICE_STATE_FD and CHECK_DEVICE_STATE.
    transfer: StateTransfer,
    /// The translation service: told of every change clients may have cached.
    hub: Option<Arc<Hub>>,
    /// Requests whose used-ring entry waits for the service's clients (spec/TRANSLATION.md
    /// §4.2); released on the wake-up the service sends when their acks are in.
    held: HeldReplies,
    /// The request ring the held replies go to, for a ring stop that must finish them.
    held_ring: Option<HeldRing>,
    /// The state file (`--state-file`): every change is journaled before the guest sees it.
    journal: Option<SharedJournal>,
    /// How long to watch the request ring for the next request after serving it.
    request_poll: Duration,
}

/// The request ring held replies go to (`VringRwLock` has no `Debug`).
#[derive(Clone)]
struct HeldRing(QueueRing);

impl std::fmt::Debug for HeldRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeldRing")
    }
}

impl IommuBackend {
    /// A backend for a new connection.
    ///
    /// # Errors
    /// The wake eventfd cannot be created.
    pub fn new(
        engine: SharedEngine,
        queue_size: u16,
        hub: Option<Arc<Hub>>,
        journal: Option<SharedJournal>,
    ) -> io::Result<Self> {
        let mut timer = TimerFd::new()?;
        if lock(&engine)
            .offered_features()
            .contains(Features::PAGE_REQUEST)
        {
            timer.reset(TIMER_PERIOD, Some(TIMER_PERIOD))?;
        }
        // Where the rings were under the last connection (or the last daemon), so that this
        // connection's first start is told apart as a resume or a guest reset.
        let marks = journal
            .as_ref()
            .map(|j| j.lock().marks())
            .unwrap_or_default();
        Ok(IommuBackend {
            timer,
            engine,
            queue_size,
            event_idx: false,
            mem: None,
            wake: Arc::new(EventFd::new(EFD_NONBLOCK)?),
            handed_out: Mutex::new(Vec::new()),
            restart_pending: false,
            handed_off: AtomicBool::new(false),
            acked: None,
            ring_stopped: false,
            last_avail: marks.next_avail,
            ring_addrs: marks.addrs,
            scratch: Scratch::default(),
            broken: [false; NUM_QUEUES],
            requests_deferred: false,
            transfer: StateTransfer::default(),
            hub,
            held: HeldReplies::default(),
            held_ring: None,
            journal,
            request_poll: Duration::ZERO,
        })
    }

    /// Watches the request ring `bound` long after serving it (`--request-poll-us`; zero:
    /// not at all, the default of [`IommuBackend::new`]).
    #[must_use]
    pub fn with_request_poll(mut self, bound: Duration) -> Self {
        self.request_poll = bound;
        self
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

    /// Whether the state was saved for a migration (SAVE checked) and no device start
    /// followed: when the frontend then goes away, the guest runs on the destination.
    #[must_use]
    pub fn handed_off(&self) -> bool {
        self.handed_off.load(Ordering::Acquire)
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
    fn check_restart(&mut self, vrings: &[QueueRing]) {
        if !std::mem::replace(&mut self.restart_pending, false) {
            return;
        }
        // A device start re-initialises every ring: broken ones are served again.
        self.broken = [false; NUM_QUEUES];
        let mut now = [0u16; NUM_QUEUES];
        let mut addrs = [[0u64; 3]; NUM_QUEUES];
        for (i, v) in vrings.iter().take(NUM_QUEUES).enumerate() {
            let state = v.get_ref();
            let q = state.get_queue();
            now[i] = q.next_avail();
            addrs[i] = [q.desc_table(), q.avail_ring(), q.used_ring()];
        }
        let marks = RingMarks {
            next_avail: now,
            addrs: Some(addrs),
        };
        let progressed = self.last_avail.iter().any(|a| *a != 0);
        let moved = self.ring_addrs.is_some_and(|old| old != addrs);
        if now.iter().all(|a| *a == 0) && (progressed || moved) {
            info!(
                "rings restarted at 0 (were at {:?}): guest reset, resetting the device",
                self.last_avail
            );
            let mut engine = lock(&self.engine);
            engine.reset();
            if let Some(j) = &self.journal {
                let mut j = j.lock();
                j.reset();
                j.rings(marks, false);
            }
            self.flush_invalidations(&mut engine);
            drop(engine);
            let dropped = self.held.clear();
            self.held_ring = None;
            if dropped > 0 {
                info!("{dropped} held request(s) dropped with the rings");
            }
        } else {
            debug!(
                "rings resumed at {now:?} (were {:?}): state kept",
                self.last_avail
            );
            if let Some(j) = &self.journal {
                let _engine = lock(&self.engine);
                j.lock().rings(marks, true);
            }
        }
        self.last_avail = now;
        self.ring_addrs = Some(addrs);
    }

    /// Serves the request queue: at most [`CHAINS_PER_LOCK`] chains per hold of the engine
    /// lock (handed fairly to a waiting control client in between) and [`CHAINS_PER_WAKE`] per
    /// call. Past that the queue thread wakes itself, so the page-request timer and host events
    /// on the same thread are served in between however fast the guest refills the ring.
    fn process_requests(&mut self, vring: &QueueRing) {
        self.requests_deferred = false;
        let q = usize::from(REQUEST_QUEUE);
        if self.broken[q] {
            return;
        }
        let Some(mem) = self.mem.as_ref().map(GuestMemoryAtomic::memory) else {
            return;
        };
        let mut budget = CHAINS_PER_WAKE;
        loop {
            let mut engine = lock(&self.engine);
            let mut state = vring.get_mut();
            if !state.get_queue().ready() {
                return; // Stopped by GET_VRING_BASE: nothing to do.
            }
            if self.event_idx && state.disable_notification().is_err() {
                return;
            }
            let mut ready = match available(state.get_queue(), &mem) {
                Ok(n) => n,
                Err(why) => return break_queue(&mut self.broken, q, why),
            };
            if ready == 0 && self.event_idx {
                // Re-arm, then look once more for chains published meanwhile.
                if !matches!(state.enable_notification(), Ok(true)) {
                    break;
                }
                ready = match available(state.get_queue(), &mem) {
                    Ok(n) => n,
                    Err(why) => return break_queue(&mut self.broken, q, why),
                };
            }
            if ready == 0 {
                break;
            }
            let batch = ready.min(CHAINS_PER_LOCK).min(budget);
            let queue = state.get_queue_mut();
            let view = match RingView::new(&*mem, queue) {
                Ok(v) => v,
                Err(e) => return break_queue(&mut self.broken, q, &e.to_string()),
            };
            let (mut next_avail, old_used) = (queue.next_avail(), queue.next_used());
            let mut next_used = old_used;
            let mut broke = None;
            for _ in 0..batch {
                let head = match view.avail_head(next_avail) {
                    Ok(h) => h,
                    Err(e) => {
                        broke = Some(e);
                        break;
                    }
                };
                let pos = next_avail;
                next_avail = next_avail.wrapping_add(1);
                let mut journal = self.journal.as_ref().map(|j| j.lock());
                // Answered by the daemon before a restart: the same answer, not applied twice.
                let replayed = journal
                    .as_mut()
                    .and_then(|j| j.replayed(pos, head))
                    .and_then(|a| {
                        let chain = view.chain(head);
                        queue::replay_answer(&*mem, chain, a.used, a.status, &mut self.scratch)
                    });
                let used = if let Some(used) = replayed {
                    used
                } else {
                    let used = queue::process_request(
                        &*mem,
                        view.chain(head),
                        &mut engine,
                        &mut self.scratch,
                    );
                    if let Some(j) = journal.as_mut() {
                        j.request(pos, head, self.scratch.readable(), self.scratch.reply(used));
                    }
                    used
                };
                drop(journal);
                // Told while the engine is still locked (see translation/registry.rs).
                let hold = self
                    .hub
                    .as_ref()
                    .and_then(|h| h.invalidate(engine.take_invalidations()));
                // Held for acks, or behind a held reply (replies leave in ring order).
                if hold.is_some() || !self.held.is_empty() {
                    self.held.push(HeldReply { hold, head, used });
                    if self.held_ring.is_none() {
                        self.held_ring = Some(HeldRing(vring.clone()));
                    }
                    continue;
                }
                if let Err(e) = view.put_used(next_used, head, used) {
                    broke = Some(e);
                    break;
                }
                next_used = next_used.wrapping_add(1);
            }
            queue.set_next_avail(next_avail);
            // In the file before the guest can see an answer (the used index below).
            if let Some(j) = &self.journal {
                let mut j = j.lock();
                j.flush();
                if j.wants_compaction() && self.held.is_empty() {
                    j.compact(&engine);
                }
            }
            if let Some(h) = &self.hub {
                if engine.take_page_answers() {
                    // A parked TRANSLATE may go on: the service resumes it at once.
                    h.wake_service();
                }
            }
            let published = publish(&view, queue, old_used, next_used, self.event_idx);
            match (broke, published) {
                (None, Ok(notify)) => {
                    if notify {
                        Self::signal(&state, "requestq");
                    }
                }
                (Some(e), _) | (None, Err(e)) => {
                    return break_queue(&mut self.broken, q, &e.to_string());
                }
            }
            self.last_avail[q] = state.get_queue().next_avail();
            budget -= batch;
            drop(state);
            MutexGuard::unlock_fair(engine);
            if budget == 0 {
                // More may be waiting: come back after the other event sources had a turn.
                self.requests_deferred = true;
                if let Err(e) = self.wake.write(1) {
                    warn!("requestq: cannot re-arm the queue thread: {e}");
                }
                return;
            }
        }
        self.last_avail[q] = vring.get_ref().get_queue().next_avail();
    }

    /// Tells the translation service of changes made outside a request (reset, config write);
    /// nothing waits for them.
    fn flush_invalidations(&self, engine: &mut Engine) {
        if let Some(h) = &self.hub {
            h.notify(engine.take_invalidations());
        }
    }

    /// The wake-up: acks came in, or requests were deferred.
    fn on_wake(&mut self, vrings: &[QueueRing]) {
        let Some(v) = vrings.get(usize::from(REQUEST_QUEUE)) else {
            return;
        };
        self.release_held(v);
        if self.requests_deferred {
            self.process_requests(v);
        }
    }

    /// Looks for more work without sleeping, since waking this thread from its epoll wait
    /// costs tens of microseconds on an idle vCPU: while replies are held, for the service's
    /// wake-up (the acks usually come within microseconds) for `--translation-poll-us`; and for
    /// the guest's next request for `--request-poll-us`. Each find starts a new spell, up to
    /// [`POLL_ROUNDS`] of them, so a busy guest still lets the thread's other events in.
    fn poll_for_more(&mut self, vrings: &[QueueRing]) {
        let Some(requests) = vrings.get(usize::from(REQUEST_QUEUE)) else {
            return;
        };
        for _ in 0..POLL_ROUNDS {
            let held = if self.held.is_empty() {
                Duration::ZERO
            } else {
                self.hub.as_deref().map_or(Duration::ZERO, Hub::busy_poll)
            };
            let Some(mut spell) = BusyPoll::new(held.max(self.request_poll)) else {
                return;
            };
            let found = loop {
                if !spell.again() {
                    break false;
                }
                if !self.held.is_empty() && self.wake.read().is_ok() {
                    self.on_wake(vrings);
                    break true;
                }
                if !self.request_poll.is_zero() && self.requests_waiting(requests) {
                    self.process_requests(requests);
                    break true;
                }
            };
            if !found {
                return;
            }
        }
    }

    /// Whether the driver published requests the queue thread has not taken, on a ring the
    /// library would pass kicks of (started and enabled).
    fn requests_waiting(&self, vring: &QueueRing) -> bool {
        let q = usize::from(REQUEST_QUEUE);
        let Some(mem) = self.mem.as_ref().map(GuestMemoryAtomic::memory) else {
            return false;
        };
        let state = vring.get_ref();
        let queue = state.get_queue();
        !self.broken[q]
            && state.is_enabled()
            && queue.ready()
            && queue
                .avail_idx(&*mem, Ordering::Acquire)
                .is_ok_and(|i| i.0 != queue.next_avail())
    }

    /// Returns the held requests whose acknowledgements are all in.
    fn release_held(&mut self, vring: &QueueRing) {
        self.release_held_to(vring, false);
    }

    /// GET_VRING_BASE of the request ring: the held requests were taken from the ring, so
    /// their replies must be in it before the base is reported, or a paused or migrated guest
    /// would wait for them forever. Waits for their acks within the service's bound (a silent
    /// client is cut off at its deadline, which completes its holds), then publishes them on
    /// the ring that is already marked stopped.
    fn finish_held(&mut self) {
        let (Some(HeldRing(vring)), Some(hub)) = (self.held_ring.clone(), self.hub.clone()) else {
            return;
        };
        let deadline = Instant::now() + hub.ack_timeout() + STOP_MARGIN;
        loop {
            self.release_held_to(&vring, true);
            if self.held.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(STOP_POLL);
        }
        let dropped = self.held.clear();
        limited!(
            Warn,
            "requestq stopped with {dropped} held request(s) past the ack bound: dropped"
        );
    }

    /// Publishes the held requests whose acknowledgements are all in; `stopping`: also on a
    /// ring the frontend is stopping (GET_VRING_BASE), whose memory is still mapped.
    fn release_held_to(&mut self, vring: &QueueRing, stopping: bool) {
        let Some(hub) = &self.hub else {
            return;
        };
        let ready = self.held.release(&hub.take_completed());
        if ready.is_empty() {
            return;
        }
        let q = usize::from(REQUEST_QUEUE);
        let mut state = vring.get_mut();
        if self.broken[q] || !(stopping || state.get_queue().ready()) {
            debug!("{} held request(s) released on a stopped ring", ready.len());
            return;
        }
        let Some(mem) = self.mem.as_ref().map(GuestMemoryAtomic::memory) else {
            return;
        };
        let queue = state.get_queue_mut();
        let view = match RingView::new(&*mem, queue) {
            Ok(v) => v,
            Err(e) => return break_queue(&mut self.broken, q, &e.to_string()),
        };
        let old_used = queue.next_used();
        let mut next_used = old_used;
        let mut broke = None;
        for r in ready {
            if let Err(e) = view.put_used(next_used, r.head, r.used) {
                broke = Some(e);
                break;
            }
            next_used = next_used.wrapping_add(1);
        }
        let published = publish(&view, queue, old_used, next_used, self.event_idx);
        match (broke, published) {
            (None, Ok(notify)) => {
                if notify {
                    Self::signal(&state, "requestq");
                }
            }
            (Some(e), _) | (None, Err(e)) => break_queue(&mut self.broken, q, &e.to_string()),
        }
    }

    fn deliver_events(&mut self, vring: &QueueRing) {
        let q = usize::from(EVENT_QUEUE);
        if self.broken[q] {
            return;
        }
        let Some(mem) = self.mem.as_ref().map(GuestMemoryAtomic::memory) else {
            return;
        };
        let mut engine = lock(&self.engine);
        if !engine.has_events() {
            return;
        }
        let mut state = vring.get_mut();
        if !state.get_queue().ready() {
            return;
        }
        let ready = match available(state.get_queue(), &mem) {
            Ok(n) => n,
            Err(why) => return break_queue(&mut self.broken, q, why),
        };
        let mut any = false;
        // Each buffer takes one event; without buffers the events wait in the engine's
        // bounded queue.
        for _ in 0..ready {
            if !engine.has_events() {
                break;
            }
            let Some(chain) = state.get_queue_mut().pop_descriptor_chain(mem.clone()) else {
                return break_queue(&mut self.broken, q, "an avail ring entry cannot be read");
            };
            let head = chain.head_index();
            if head >= state.get_queue().size() {
                return break_queue(
                    &mut self.broken,
                    q,
                    "a chain head is outside the descriptor table",
                );
            }
            any = true;
            let used = queue::deliver_event(&*mem, chain, &mut engine, &mut self.scratch);
            if let Err(e) = state.add_used(head, used) {
                return break_queue(
                    &mut self.broken,
                    q,
                    &format!("the used ring cannot be written ({e})"),
                );
            }
        }
        if any {
            Self::notify(&mut state, &mem, self.event_idx, "eventq");
        }
        self.last_avail[q] = state.get_queue().next_avail();
    }

    /// Signals the driver (the caller decided it asked for it).
    fn signal(state: &vhost_user_backend::VringState<GuestMemoryAtomic<GuestRam>>, q: &str) {
        if let Err(e) = state.signal_used_queue() {
            warn!("{q}: call eventfd: {e}");
        }
    }

    /// Signals the driver of a queue the library added used entries to, if it asked for it:
    /// virtio-queue decides with EVENT_IDX, but without it ignores
    /// `VIRTQ_AVAIL_F_NO_INTERRUPT`, which the ring view reads.
    fn notify(
        state: &mut vhost_user_backend::VringState<GuestMemoryAtomic<GuestRam>>,
        mem: &GuestRam,
        event_idx: bool,
        q: &str,
    ) {
        let wanted = if event_idx {
            !matches!(state.needs_notification(), Ok(false))
        } else {
            RingView::new(mem, state.get_queue())
                .and_then(|v| v.wants_interrupts())
                .unwrap_or(true)
        };
        if wanted {
            Self::signal(state, q);
        }
    }
}

/// Stops serving queue `q` until the device is restarted: the driver broke the ring's
/// invariants, and going on would mean guessing what it meant. vhost-user gives a backend no
/// way to set NEEDS_RESET (the frontend owns the status byte), so the ring just stops; the
/// next device start (a guest reset or a new connection) serves it again. Logged once per
/// breakage, as serving stops with it.
fn break_queue(broken: &mut [bool; NUM_QUEUES], q: usize, why: &str) {
    warn!("queue {q}: {why}; the queue is stopped until the device is reset");
    broken[q] = true;
}

/// Publishes the used entries `[old, next)` once (nothing when there are none) and records
/// the new index in `queue`; returns whether the driver asked to be notified.
fn publish(
    view: &RingView<'_, GuestRam>,
    queue: &mut Queue,
    old: u16,
    next: u16,
    event_idx: bool,
) -> Result<bool, RingError> {
    if next == old {
        return Ok(false);
    }
    queue.set_next_used(next);
    view.publish_used(old, next, event_idx)
}

/// Chains the driver has published and the device not yet taken. More than the ring holds is
/// impossible for a correct driver: the ring is broken (virtio-queue would refuse every pop
/// and report work forever, a busy loop).
fn available(q: &Queue, mem: &GuestRam) -> Result<u16, &'static str> {
    let avail = q
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|_| "the avail index cannot be read")?;
    let ready = avail.0.wrapping_sub(q.next_avail());
    if ready > q.size() {
        return Err("the driver published more chains than the ring holds");
    }
    Ok(ready)
}

impl VhostUserBackendMut for IommuBackend {
    type Bitmap = LogBitmap;
    type Vring = QueueRing;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.queue_size)
    }

    fn features(&self) -> u64 {
        let engine = lock(&self.engine);
        let log = if engine.host().writes_logged() {
            LOG_ALL
        } else {
            0
        };
        VIRTIO_F_VERSION_1
            | VIRTIO_F_RING_EVENT_IDX
            | VIRTIO_F_RING_INDIRECT_DESC
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            | log
            | engine.offered_features().bits()
    }

    fn acked_features(&mut self, features: u64) {
        // QEMU sets and clears LOG_ALL around a migration while the rings run: that is no
        // device start, and nothing of the device may change (the log itself is the
        // library's, set by SET_LOG_BASE).
        let log_toggle =
            !self.ring_stopped && self.acked.is_some_and(|old| old ^ features == LOG_ALL);
        self.acked = Some(features);
        self.ring_stopped = false;
        if log_toggle {
            let on = features & LOG_ALL != 0;
            info!("dirty-page logging {}", if on { "on" } else { "off" });
            return;
        }
        // A device start after a SAVE: the migration failed and the guest runs here again.
        self.handed_off.store(false, Ordering::Release);
        // Not a device feature: never reaches the engine (nor the journal's record).
        let device = Features::from_bits_truncate(features & !LOG_ALL);
        info!("driver features {features:#x} (device: {device:?})");
        let mut engine = lock(&self.engine);
        engine.negotiate(device);
        if let Some(j) = &self.journal {
            j.lock().features(engine.negotiated());
        }
        drop(engine);
        self.restart_pending = true;
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        let base = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::DEVICE_STATE;
        // SET_LOG_BASE with the log's memfd: only where LOG_ALL is offered.
        if lock(&self.engine).host().writes_logged() {
            base | VhostUserProtocolFeatures::LOG_SHMFD
        } else {
            base
        }
    }

    fn set_device_state_fd(
        &mut self,
        direction: VhostTransferStateDirection,
        phase: VhostTransferStatePhase,
        file: std::fs::File,
    ) -> io::Result<Option<std::fs::File>> {
        if phase != VhostTransferStatePhase::STOPPED {
            return Err(io::Error::other("device state moves only while stopped"));
        }
        match direction {
            VhostTransferStateDirection::SAVE => self.transfer.start_save(&self.engine, file)?,
            VhostTransferStateDirection::LOAD => {
                // The rings' history is the source's now: their next start (at the bases the
                // frontend carried) is a resume, whatever this connection did before.
                self.last_avail = [0; NUM_QUEUES];
                self.ring_addrs = None;
                self.transfer.start_load(file)?;
            }
        }
        Ok(None)
    }

    fn check_device_state(&self) -> io::Result<()> {
        match self.transfer.finish(&self.engine)? {
            Finished::Loaded => {
                if let Some(j) = &self.journal {
                    // The loaded state replaces everything the file held.
                    let engine = lock(&self.engine);
                    j.lock().compact(&engine);
                }
            }
            Finished::Saved => self.handed_off.store(true, Ordering::Release),
        }
        Ok(())
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn stop_vring(&mut self, queue_index: u32) -> io::Result<()> {
        self.ring_stopped = true;
        if queue_index == u32::from(REQUEST_QUEUE) {
            self.finish_held();
        }
        Ok(())
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // Bytes past the 40-byte space read as zero (some frontends ask for more than the
        // device has, and fail hard on an empty reply); absurd sizes get nothing.
        const MAX_CONFIG_READ: u32 = 256;
        if size > MAX_CONFIG_READ || offset > MAX_CONFIG_READ {
            limited!(
                Warn,
                "GET_CONFIG offset {offset} size {size} is outside any config space"
            );
            return Vec::new();
        }
        let cfg = lock(&self.engine).config_space();
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
        let mut engine = lock(&self.engine);
        match engine.write_config(offset, buf) {
            Ok(()) => {
                if let Some(j) = &self.journal {
                    j.lock().config(offset, buf);
                }
            }
            Err(e) => limited!(
                Warn,
                "ignored config write at offset {offset} ({buf:02x?}): {e}"
            ),
        }
        self.flush_invalidations(&mut engine);
        Ok(())
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestRam>) -> io::Result<()> {
        lock(&self.engine).set_guest_memory(mem.clone());
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
        vrings: &[QueueRing],
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
                self.on_wake(vrings);
            }
            TIMER_EVENT => {
                let _ = self.timer.wait();
                let n = lock(&self.engine).expire_page_requests(Instant::now());
                if n > 0 {
                    info!("{n} page-request group(s) timed out, completed with FAILURE");
                }
            }
            HOST_EVENT => {
                lock(&self.engine).poll_host();
            }
            other => warn!("unknown device event {other}"),
        }
        self.poll_for_more(vrings);
        if let Some(v) = vrings.get(usize::from(EVENT_QUEUE)) {
            self.deliver_events(v);
        }
        Ok(())
    }
}
