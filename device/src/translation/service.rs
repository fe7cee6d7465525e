//! The service thread: accepts clients, reads their messages, answers TRANSLATE from the
//! engine, waits for page responses, enforces the acknowledgement bound and writes what the
//! sockets did not take at once. One thread, one epoll set, level-triggered; after events it
//! polls the set without sleeping for `--translation-poll-us` before it sleeps.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info};
use virtio_iommu_spec::translation::{
    ClientMessage, DaemonMessage, EndpointRange, HelloReply, HelloReplyFlags, HelloStatus,
    Translate, TranslateReply, TranslateStatus, MAX_OUTSTANDING, VERSION,
};
use virtio_iommu_spec::Features;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::busy_poll::BusyPoll;
use super::connection::{Connection, ReadState};
use super::hub::Hub;
use super::translate::{access, count, reply};
use crate::backend::{lock, SharedEngine};
use crate::engine::{DmaTicket, TranslateOutcome};
use crate::limited;

const LISTENER: u64 = 0;
const WAKE: u64 = 1;
const FIRST_CLIENT: u64 = 2;
/// How often TRANSLATEs waiting for a page response look at the engine.
const WAIT_POLL: Duration = Duration::from_millis(1);
/// Pause after a failed accept (e.g. out of fds), so that it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// A message, copied out of the connection's buffer.
enum Incoming {
    Hello {
        status: HelloStatus,
        ranges: Vec<EndpointRange>,
    },
    Translate(Translate),
    Ack(u64),
}

impl From<ClientMessage<'_>> for Incoming {
    fn from(m: ClientMessage<'_>) -> Self {
        match m {
            ClientMessage::Hello(h) => Incoming::Hello {
                status: h.status(),
                ranges: h.endpoint_ranges().collect(),
            },
            ClientMessage::Translate(t) => Incoming::Translate(t),
            ClientMessage::InvalAck(a) => Incoming::Ack(a.seq),
        }
    }
}

/// A TRANSLATE parked behind a page request.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    client: u64,
    tag: u64,
    ticket: DmaTicket,
}

#[derive(Debug)]
struct Client {
    conn: Connection,
    interest: EventSet,
}

/// The thread's state.
#[derive(Debug)]
pub(super) struct Service {
    listener: UnixListener,
    epoll: Epoll,
    hub: Arc<Hub>,
    engine: SharedEngine,
    clients: BTreeMap<u64, Client>,
    waiting: Vec<Waiting>,
    next_id: u64,
}

impl Service {
    /// Registers the listener and the hub's wake-up in a new epoll set.
    pub(super) fn new(
        listener: UnixListener,
        hub: Arc<Hub>,
        engine: SharedEngine,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            hub.service_wake.as_raw_fd(),
            EpollEvent::new(EventSet::IN, WAKE),
        )?;
        Ok(Service {
            listener,
            epoll,
            hub,
            engine,
            clients: BTreeMap::new(),
            waiting: Vec::new(),
            next_id: FIRST_CLIENT,
        })
    }

    /// Serves for the life of the process.
    pub(super) fn run(mut self) {
        let mut events = vec![EpollEvent::default(); 32];
        let mut n = 0;
        loop {
            // After work more is likely soon (a reply read, the next TRANSLATE, an ack): poll
            // for the bound before sleeping. Only after events, so an idle service sleeps.
            n = match self.busy_poll(n > 0, &mut events) {
                Some(n) => n,
                None => self.wait(&mut events),
            };
            for ev in &events[..n] {
                match ev.data() {
                    LISTENER => self.accept(),
                    WAKE => {
                        let _ = self.hub.service_wake.read();
                    }
                    id => self.on_client(id, ev.event_set()),
                }
            }
            self.poll_waiting();
            if self.hub.registry.lock().cut_overdue(Instant::now()) {
                self.hub.wake_queue();
            }
            self.reap();
            self.hub.registry.lock().flush_all();
            self.update_interest();
        }
    }

    /// Waits for events, sleeping until the next timeout.
    fn wait(&self, events: &mut [EpollEvent]) -> usize {
        match self.epoll.wait(self.timeout_ms(), events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => {
                limited!(Warn, "translation socket: epoll wait: {e}");
                std::thread::sleep(ACCEPT_BACKOFF);
                0
            }
        }
    }

    /// When `after_work` and polling is on: events found by polling without sleeping, for at
    /// most the configured bound; `None` when nothing came (or polling is off).
    fn busy_poll(&self, after_work: bool, events: &mut [EpollEvent]) -> Option<usize> {
        if !after_work {
            return None;
        }
        let mut spell = BusyPoll::new(self.hub.config.busy_poll)?;
        loop {
            match self.epoll.wait(0, events) {
                Ok(0) => {}
                Ok(n) => return Some(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The sleeping wait reports it.
                Err(_) => return None,
            }
            if !spell.again() {
                return None;
            }
        }
    }

    /// Until the next thing to do without a socket event: a waiting TRANSLATE's poll, or
    /// the earliest acknowledgement deadline.
    fn timeout_ms(&self) -> i32 {
        if !self.waiting.is_empty() {
            return i32::try_from(WAIT_POLL.as_millis()).unwrap_or(1);
        }
        match self.hub.registry.lock().next_deadline() {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Rounded up: waking before the deadline would only wait again.
                i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX)
            }
        }
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    limited!(Warn, "translation socket accept: {e}");
                    std::thread::sleep(ACCEPT_BACKOFF);
                    return;
                }
            };
            let max = self.hub.config.max_clients;
            let mut reg = self.hub.registry.lock();
            if reg.len() >= max {
                reg.stats.refused += 1;
                drop(reg);
                limited!(
                    Warn,
                    "translation socket: {max} clients already connected, closing one more"
                );
                continue;
            }
            let writer = match stream
                .set_nonblocking(true)
                .and_then(|()| stream.try_clone())
            {
                Ok(w) => w,
                Err(e) => {
                    limited!(Warn, "translation socket: cannot set up a client: {e}");
                    continue;
                }
            };
            let id = self.next_id;
            self.next_id += 1;
            if let Err(e) = self.epoll.ctl(
                ControlOperation::Add,
                stream.as_raw_fd(),
                EpollEvent::new(EventSet::IN, id),
            ) {
                limited!(Warn, "translation socket: cannot watch a client: {e}");
                continue;
            }
            reg.add(id, super::peer::Peer::new(writer));
            reg.stats.accepted += 1;
            drop(reg);
            debug!("translation client {id} connected");
            self.clients.insert(
                id,
                Client {
                    conn: Connection::new(stream),
                    interest: EventSet::IN,
                },
            );
        }
    }

    fn on_client(&mut self, id: u64, set: EventSet) {
        if set.contains(EventSet::OUT) {
            if let Some(p) = self.hub.registry.lock().peer_mut(id) {
                let _ = p.flush();
            }
        }
        if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
            let Some(c) = self.clients.get_mut(&id) else {
                return;
            };
            match c.conn.fill() {
                Ok(ReadState::Open) => self.process(id),
                Ok(ReadState::Closed) | Err(_) => {
                    // What was read before the end is still answered (it may be an ack).
                    self.process(id);
                    self.close(id, "closed by the client");
                }
            }
        }
    }

    /// Handles the buffered messages of `id` while it has fewer than 64 TRANSLATEs waiting.
    fn process(&mut self, id: u64) {
        loop {
            let Some(c) = self.clients.get_mut(&id) else {
                return;
            };
            if c.conn.waiting >= MAX_OUTSTANDING {
                return;
            }
            let msg = match c.conn.next_message() {
                Ok(Some(m)) => Incoming::from(m),
                Ok(None) => return,
                Err(e) => return self.protocol_error(id, &e.to_string()),
            };
            let hello_done = c.conn.hello_done;
            match msg {
                Incoming::Hello { .. } if hello_done => {
                    return self.protocol_error(id, "second HELLO");
                }
                Incoming::Hello { status, ranges } => {
                    if !self.hello(id, status, ranges) {
                        return;
                    }
                }
                _ if !hello_done => return self.protocol_error(id, "message before HELLO"),
                Incoming::Translate(t) => self.translate(id, &t),
                Incoming::Ack(seq) => {
                    debug!("translation client {id}: INVAL_ACK {seq}");
                    if self.hub.registry.lock().ack(id, seq) {
                        self.hub.wake_queue();
                    }
                }
            }
        }
    }

    /// Answers HELLO; `false` when the connection was closed (status not 0).
    fn hello(&mut self, id: u64, status: HelloStatus, ranges: Vec<EndpointRange>) -> bool {
        let (mask, offered) = {
            let e = lock(&self.engine);
            (
                e.config_space().page_size_mask.get(),
                e.offered_features().contains(Features::PAGE_REQUEST)
                    && e.host().walks_guest_tables(),
            )
        };
        let mut flags = HelloReplyFlags::empty();
        flags.set(HelloReplyFlags::PAGE_REQUESTS, offered);
        let msg = DaemonMessage::HelloReply(HelloReply {
            version: VERSION,
            status,
            page_size_mask: mask,
            flags,
        });
        debug!("translation client {id}: HELLO {ranges:x?}: {status:?}");
        let mut reg = self.hub.registry.lock();
        reg.send(id, &msg);
        if status != HelloStatus::Accepted {
            reg.stats.hello_rejected += 1;
            drop(reg);
            self.close(id, "HELLO refused");
            return false;
        }
        reg.accept_hello(id, ranges);
        drop(reg);
        if let Some(c) = self.clients.get_mut(&id) {
            c.conn.hello_done = true;
        }
        true
    }

    fn translate(&mut self, id: u64, t: &Translate) {
        let serves = self
            .hub
            .registry
            .lock()
            .peer(id)
            .is_some_and(|p| p.serves(t.endpoint));
        let Some(acc) = access(t).filter(|_| serves) else {
            let r = TranslateReply::refused(t.tag, TranslateStatus::Inval);
            self.log_translate(id, t, TranslateStatus::Inval.name());
            let mut reg = self.hub.registry.lock();
            count(&mut reg.stats, &r);
            if reg.send(id, &DaemonMessage::TranslateReply(r)) {
                self.hub.wake_queue();
            }
            return;
        };
        let mut engine = lock(&self.engine);
        let had_events = engine.pending_events();
        let outcome = engine.device_translate().start(acc, Instant::now());
        let queued = engine.pending_events() != had_events;
        match reply(t.tag, &outcome) {
            Some(r) => {
                self.log_translate(id, t, r.status.name());
                // Queued while the engine is still locked: see registry.rs.
                let mut reg = self.hub.registry.lock();
                count(&mut reg.stats, &r);
                let released = reg.send(id, &DaemonMessage::TranslateReply(r));
                drop(reg);
                drop(engine);
                if released || queued {
                    self.hub.wake_queue();
                }
            }
            None => {
                drop(engine);
                if let TranslateOutcome::Pending(ticket) = outcome {
                    self.log_translate(id, t, "waiting for a page response");
                    self.hub.registry.lock().stats.translate_waited += 1;
                    self.waiting.push(Waiting {
                        client: id,
                        tag: t.tag,
                        ticket,
                    });
                    if let Some(c) = self.clients.get_mut(&id) {
                        c.conn.waiting += 1;
                    }
                    // The page request is queued: the queue thread delivers it.
                    self.hub.wake_queue();
                }
            }
        }
    }

    fn log_translate(&self, id: u64, t: &Translate, status: &str) {
        debug!(
            "translation client {id}: TRANSLATE tag {} endpoint {} pasid {:?} iova {:#x} len {:#x} flags {:#x}: {status}",
            t.tag,
            t.endpoint,
            t.pasid(),
            t.iova,
            t.len,
            t.flags.bits()
        );
    }

    /// Moves the TRANSLATEs waiting for page responses on; replies to those that finished.
    fn poll_waiting(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut engine = lock(&self.engine);
        let mut finished = Vec::new();
        let mut changed = false;
        self.waiting.retain(|w| {
            let out = engine
                .device_translate()
                .resume(w.ticket, now)
                // Only this thread resumes or cancels its tickets; a lost one is answered.
                .unwrap_or(TranslateOutcome::Unsupported);
            match out {
                TranslateOutcome::Pending(t) if t == w.ticket => true,
                TranslateOutcome::Pending(t) => {
                    // Walked again after SUCCESS and parked on a new page request.
                    finished.push((*w, None, Some(t)));
                    changed = true;
                    false
                }
                other => {
                    finished.push((*w, reply(w.tag, &other), None));
                    changed = true;
                    false
                }
            }
        });
        if finished.is_empty() {
            return;
        }
        let mut released = false;
        let mut reg = self.hub.registry.lock();
        let mut again = Vec::new();
        for (w, r, reparked) in finished {
            if let Some(t) = reparked {
                again.push(Waiting { ticket: t, ..w });
                continue;
            }
            if let Some(c) = self.clients.get_mut(&w.client) {
                c.conn.waiting = c.conn.waiting.saturating_sub(1);
            }
            if let Some(r) = r {
                debug!(
                    "translation client {}: TRANSLATE tag {} after its page request: {}",
                    w.client,
                    w.tag,
                    r.status.name()
                );
                count(&mut reg.stats, &r);
                released |= reg.send(w.client, &DaemonMessage::TranslateReply(r));
            }
        }
        drop(reg);
        drop(engine);
        self.waiting.extend(again);
        if released || changed {
            self.hub.wake_queue();
        }
        // Throttled clients may read again.
        let ids: Vec<u64> = self.clients.keys().copied().collect();
        for id in ids {
            if self.clients.get(&id).is_some_and(|c| c.conn.has_input()) {
                self.process(id);
            }
        }
    }

    fn protocol_error(&mut self, id: u64, why: &str) {
        limited!(
            Warn,
            "translation client {id}: protocol error ({why}): connection closed"
        );
        self.hub.registry.lock().stats.protocol_errors += 1;
        self.close(id, "protocol error");
    }

    /// Closes a connection: its waiting TRANSLATEs are cancelled, nothing waits for its acks.
    fn close(&mut self, id: u64, why: &str) {
        let Some(c) = self.clients.remove(&id) else {
            return;
        };
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            c.conn.stream().as_raw_fd(),
            EpollEvent::default(),
        );
        let mine: Vec<DmaTicket> = self
            .waiting
            .iter()
            .filter(|w| w.client == id)
            .map(|w| w.ticket)
            .collect();
        if !mine.is_empty() {
            let mut engine = lock(&self.engine);
            for t in mine {
                engine.device_translate().cancel(t);
            }
            self.waiting.retain(|w| w.client != id);
        }
        if self.hub.registry.lock().remove(id) {
            self.hub.wake_queue();
        }
        debug!("translation client {id}: {why}");
    }

    /// Closes the connections of clients cut off (by either thread).
    fn reap(&mut self) {
        let cut: Vec<u64> = {
            let reg = self.hub.registry.lock();
            self.clients
                .keys()
                .copied()
                .filter(|id| reg.peer(*id).is_none_or(super::peer::Peer::is_cut))
                .collect()
        };
        for id in cut {
            self.close(id, "cut off");
        }
    }

    /// Reads from clients with room for more TRANSLATEs; watches for room to write where
    /// output waits.
    fn update_interest(&mut self) {
        let reg = self.hub.registry.lock();
        for (id, c) in &mut self.clients {
            let mut want = EventSet::empty();
            if c.conn.waiting < MAX_OUTSTANDING {
                want |= EventSet::IN;
            }
            if reg.peer(*id).is_some_and(super::peer::Peer::has_output) {
                want |= EventSet::OUT;
            }
            if want != c.interest {
                let ev = EpollEvent::new(want, *id);
                if self
                    .epoll
                    .ctl(ControlOperation::Modify, c.conn.stream().as_raw_fd(), ev)
                    .is_ok()
                {
                    c.interest = want;
                }
            }
        }
    }
}

/// Logs the service's start.
pub(super) fn announce(path: &std::path::Path) {
    info!("translation socket on {}", path.display());
}
