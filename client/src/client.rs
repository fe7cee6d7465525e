//! The client: one connection at a time (re-opened after the daemon restarts), the requests in
//! flight, the IOTLBs of every endpoint and PASID translated so far, and the reader thread that
//! fills and invalidates them in the order the daemon's messages arrive. A thread waiting for
//! its reply polls for it for `busy_poll` first, handling the replies at the head of the input
//! itself when the reader thread is not reading (it sleeps in the meantime).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use parking_lot::{Condvar, Mutex};
use virtio_iommu_spec::request::MapFlags;
use virtio_iommu_spec::translation::{
    ClientMessage, DaemonMessage, Endpoints, Invalidate, Translate, TranslateFlags, TranslateReply,
    TranslateStatus,
};

use crate::acker::Acker;
use crate::busy_poll::BusyPoll;
use crate::config::ClientConfig;
use crate::endpoint_tlb::{EndpointTlb, TlbKey};
use crate::error::Error;
use crate::limited;
use crate::pending::{Outcome, Pending, Request};
use crate::session::{Session, SessionReader};
use crate::translator::Translator;

/// Counters of what the client did (for tests, benchmarks and logs).
#[derive(Debug, Default)]
pub struct ClientStats {
    /// `TRANSLATE`s sent (IOTLB misses).
    pub translates: AtomicU64,
    /// `INVALIDATE`s handled.
    pub invalidations: AtomicU64,
    /// Connections opened (the first and every reconnection).
    pub connections: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    session: Option<Arc<Session>>,
    generation: u64,
    pending: Pending,
    last_failed_connect: Option<Instant>,
}

/// What the [`Client`] handle and its translators share.
#[derive(Debug)]
pub(crate) struct Inner {
    config: ClientConfig,
    state: Mutex<State>,
    replies: Condvar,
    tlbs: Mutex<HashMap<TlbKey, Arc<EndpointTlb>>>,
    stats: ClientStats,
}

/// A connection to the daemon's translation socket, shared by every [`Translator`] made from
/// it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects (the `HELLO` exchange included).
    ///
    /// # Errors
    /// The daemon cannot be reached or refuses the client.
    pub fn connect(config: ClientConfig) -> Result<Self, Error> {
        let client = Self::new(config);
        client
            .inner
            .ensure_session(&mut client.inner.state.lock())?;
        Ok(client)
    }

    /// A client that connects on its first translation (and again after each disconnection).
    #[must_use]
    pub fn new(config: ClientConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(State::default()),
                replies: Condvar::new(),
                tlbs: Mutex::new(HashMap::new()),
                stats: ClientStats::default(),
            }),
        }
    }

    /// The `vm_memory::Iommu` for `endpoint`'s accesses, with `pasid` or without.
    #[must_use]
    pub fn translator(&self, endpoint: u32, pasid: Option<u32>) -> Translator {
        let key = TlbKey { endpoint, pasid };
        let tlb = self.inner.tlbs.lock().entry(key).or_default().clone();
        Translator::new(self.inner.clone(), key, tlb)
    }

    /// What the client did so far.
    #[must_use]
    pub fn stats(&self) -> &ClientStats {
        &self.inner.stats
    }

    /// Whether a connection is open now.
    #[must_use]
    pub fn connected(&self) -> bool {
        self.inner.state.lock().session.is_some()
    }

    /// Closes the connection (the next translation opens a new one); everything cached is
    /// dropped.
    pub fn disconnect(&self) {
        let session = self.inner.state.lock().session.clone();
        if let Some(s) = session {
            s.close();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(s) = self.state.get_mut().session.take() {
            s.close();
        }
    }
}

impl Inner {
    pub(crate) fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Opens a connection if there is none, unless the last attempt failed within
    /// `retry_interval`.
    fn ensure_session(self: &Arc<Self>, st: &mut State) -> Result<Arc<Session>, Error> {
        if let Some(s) = &st.session {
            return Ok(s.clone());
        }
        if st
            .last_failed_connect
            .is_some_and(|t| t.elapsed() < self.config.retry_interval)
        {
            return Err(Error::Disconnected);
        }
        let generation = st.generation + 1;
        match Session::open(&self.config, generation) {
            Ok(session) => {
                let session = Arc::new(session);
                let weak = Arc::downgrade(self);
                let s = session.clone();
                let poll = self.config.busy_poll;
                std::thread::Builder::new()
                    .name("viommu-client-reader".into())
                    .spawn(move || read_loop(&weak, &s, poll))
                    .map_err(Error::Io)?;
                st.generation = generation;
                st.session = Some(session.clone());
                st.last_failed_connect = None;
                self.stats.connections.fetch_add(1, Ordering::Relaxed);
                info!(
                    "translation socket {}: connected (granule {:#x}, flags {:?})",
                    self.config.socket.display(),
                    session.granule,
                    session.flags
                );
                Ok(session)
            }
            Err(e) => {
                st.last_failed_connect = Some(Instant::now());
                limited!(
                    Warn,
                    "translation socket {}: {e}",
                    self.config.socket.display()
                );
                Err(e)
            }
        }
    }

    /// One `TRANSLATE` of `len` bytes at `iova` for `key`, `perm` being READ and/or WRITE;
    /// returns once the reply's ranges are cached (or why not).
    pub(crate) fn translate(
        self: &Arc<Self>,
        key: TlbKey,
        iova: u64,
        len: u64,
        perm: MapFlags,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + self.config.reply_timeout;
        let mut st = self.state.lock();
        let session = self.ensure_session(&mut st)?;
        while !st.pending.has_room() {
            if self.replies.wait_until(&mut st, deadline).timed_out() {
                return Err(Error::Timeout(self.config.reply_timeout));
            }
        }
        let tag = st.pending.add(Request {
            key,
            iova,
            perm,
            generation: session.generation,
        });
        drop(st);
        let mut flags = TranslateFlags::empty();
        flags.set(TranslateFlags::READ, perm.contains(MapFlags::READ));
        flags.set(TranslateFlags::WRITE, perm.contains(MapFlags::WRITE));
        flags.set(TranslateFlags::PASID, key.pasid.is_some());
        let msg = ClientMessage::Translate(Translate {
            tag,
            iova,
            len,
            endpoint: key.endpoint,
            pasid: key.pasid.unwrap_or(0),
            flags,
        });
        self.stats.translates.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = session.send(&msg) {
            self.state.lock().pending.forget(tag);
            session.close();
            return Err(e);
        }
        let outcome = match self.poll_reply(&session, tag) {
            Some(o) => o,
            None => {
                let mut st = self.state.lock();
                loop {
                    if let Some(o) = st.pending.take(tag) {
                        break o;
                    }
                    if self.replies.wait_until(&mut st, deadline).timed_out() {
                        st.pending.forget(tag);
                        return Err(Error::Timeout(self.config.reply_timeout));
                    }
                }
            }
        };
        match outcome {
            Outcome::Cached => Ok(()),
            Outcome::Fault(f) => Err(Error::Fault {
                reason: f.reason,
                flags: f.flags,
                address: f.address,
            }),
            Outcome::Invalid => Err(Error::Invalid),
            Outcome::Unsupported => Err(Error::Unsupported),
            Outcome::BadReply(why) => Err(Error::BadReply(why)),
            Outcome::Disconnected => Err(Error::Disconnected),
        }
    }

    /// `tag`'s outcome, polled for without sleeping for `busy_poll`: the replies at the head
    /// of the input are handled here whenever the reader thread is not reading. `None` once
    /// the bound passed (or with polling off).
    fn poll_reply(&self, session: &Session, tag: u64) -> Option<Outcome> {
        let bound = self.config.busy_poll.min(self.config.reply_timeout);
        let mut spell = BusyPoll::new(bound)?;
        loop {
            if let Some(mut reader) = session.try_reader() {
                self.take_replies(session, &mut reader);
            }
            if let Some(o) = self.state.lock().pending.take(tag) {
                return Some(o);
            }
            if !spell.again() {
                return None;
            }
        }
    }

    /// Handles the whole `TRANSLATE_REPLY`s at the head of the input as the reader thread
    /// would, each consumed only once handled; stops at anything else, left to the reader.
    fn take_replies(&self, session: &Session, reader: &mut SessionReader) {
        while let Some((reply, len)) = reader.peek_reply() {
            if !self.on_reply(session.generation, &reply, false) {
                return;
            }
            if reader.consume(len).is_err() {
                // Unusable: the reader thread sees the end and drops everything.
                session.close();
                return;
            }
        }
    }

    /// A `TRANSLATE_REPLY`: its ranges go into the request's IOTLB before the next message is
    /// read, so an `INVALIDATE` sent after it drops them (§4.3). Without `wait` only if the
    /// IOTLB's lock is free now (the caller may hold it for an access): `false`, nothing done,
    /// when it is not.
    fn on_reply(&self, generation: u64, reply: &TranslateReply, wait: bool) -> bool {
        let Some(req) = self.state.lock().pending.waiting(reply.tag, generation) else {
            limited!(
                Info,
                "translation socket: reply with tag {} matches no request in flight (ignored)",
                reply.tag
            );
            return true;
        };
        let outcome = match reply.status {
            TranslateStatus::Ok => match check_ranges(&req, reply) {
                Ok(()) => {
                    let tlb = self.tlbs.lock().get(&req.key).cloned();
                    let max = self.config.max_cached_ranges;
                    if let Some(tlb) = tlb {
                        let ranges = reply.ranges.as_slice();
                        if !wait && !tlb.try_insert(ranges, max) {
                            return false;
                        }
                        if wait {
                            for r in ranges {
                                tlb.insert(r, max);
                            }
                        }
                    }
                    Outcome::Cached
                }
                Err(why) => {
                    limited!(Warn, "translation socket: reply {}: {why}", reply.tag);
                    Outcome::BadReply(why)
                }
            },
            TranslateStatus::Fault => match reply.fault {
                Some(f) => Outcome::Fault(f),
                None => Outcome::BadReply("FAULT without a fault"),
            },
            TranslateStatus::Inval => Outcome::Invalid,
            TranslateStatus::Unsupp => Outcome::Unsupported,
        };
        debug!(
            "translate ep {} pasid {:?} iova {:#x}: {}",
            req.key.endpoint,
            req.key.pasid,
            req.iova,
            reply.status.name()
        );
        self.state.lock().pending.complete(reply.tag, outcome);
        self.replies.notify_all();
        true
    }

    /// An `INVALIDATE`: the covered IOTLB entries are dropped (each drop waits for the accesses
    /// using the IOTLB to finish), then acknowledged once the pins on those IOTLBs are gone.
    fn on_invalidate(
        &self,
        session: &Session,
        acker: &Acker,
        inv: &Invalidate,
    ) -> Result<(), Error> {
        let tlbs: Vec<Arc<EndpointTlb>> = self
            .tlbs
            .lock()
            .iter()
            .filter(|(k, _)| inv.covers(k.endpoint, k.pasid, 0, u64::MAX))
            .map(|(_, t)| t.clone())
            .collect();
        for t in &tlbs {
            t.invalidate(inv.first, inv.last);
        }
        self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
        debug!(
            "invalidate seq {} {:?} {:?} {:#x}..={:#x}: {} IOTLB(s)",
            inv.seq,
            inv.endpoints,
            inv.pasids,
            inv.first,
            inv.last,
            tlbs.len()
        );
        acker.ack(session, inv.seq, tlbs)
    }

    /// The connection ended: every cached translation is dropped before anything else, then the
    /// requests in flight fail and the next translation reconnects.
    fn on_closed(&self, session: &Arc<Session>, why: &Error) {
        session.close();
        let tlbs: Vec<Arc<EndpointTlb>> = self.tlbs.lock().values().cloned().collect();
        for t in &tlbs {
            t.clear();
        }
        let mut st = self.state.lock();
        if st.session.as_ref().is_some_and(|s| Arc::ptr_eq(s, session)) {
            st.session = None;
        }
        st.pending.disconnect(session.generation);
        drop(st);
        self.replies.notify_all();
        match why {
            Error::Disconnected => info!("translation socket: the daemon closed the connection"),
            e => warn!("translation socket: connection closed: {e}"),
        }
    }
}

/// A reply's ranges must start at the address asked for and permit the access (§2.4).
fn check_ranges(req: &Request, reply: &TranslateReply) -> Result<(), &'static str> {
    let ranges = reply.ranges.as_slice();
    if !ranges.first().is_some_and(|r| r.contains(req.iova)) {
        return Err("the first range does not contain the address asked for");
    }
    if ranges.iter().any(|r| !r.perm.contains(req.perm)) {
        return Err("a range does not permit the access asked for");
    }
    Ok(())
}

/// The reader thread of one connection: handles the daemon's messages in order until the
/// connection ends or the client is gone. After each it polls for `poll` without sleeping.
fn read_loop(inner: &Weak<Inner>, session: &Arc<Session>, poll: Duration) {
    let acker = match Acker::spawn(session.clone()) {
        Ok(a) => a,
        Err(e) => {
            session.close();
            if let Some(inner) = inner.upgrade() {
                inner.on_closed(session, &e);
            }
            return;
        }
    };
    let mut after_message = false;
    let why = loop {
        if let Err(e) = wait_for_input(session, poll, after_message) {
            break e;
        }
        // Held while the message is handled: a translating thread takes a reply only when
        // the messages before it were handled.
        let mut reader = session.reader();
        if !reader.has_input() {
            // A thread waiting for its reply took what woke this one.
            after_message = false;
            continue;
        }
        after_message = true;
        let msg = match reader.next() {
            Ok(m) => m,
            Err(e) => break e,
        };
        let Some(inner) = inner.upgrade() else {
            session.close();
            return;
        };
        let r = match msg {
            DaemonMessage::TranslateReply(reply) => {
                inner.on_reply(session.generation, &reply, true);
                Ok(())
            }
            DaemonMessage::Invalidate(inv) => {
                if ours(inner.config(), &inv) {
                    inner.on_invalidate(session, &acker, &inv)
                } else {
                    // Not one of our endpoints: nothing cached, still acknowledged (in order).
                    acker.ack(session, inv.seq, Vec::new())
                }
            }
            DaemonMessage::HelloReply(_) => Err(Error::BadReply("a second HELLO_REPLY")),
        };
        if let Err(e) = r {
            break e;
        }
    };
    if let Some(inner) = inner.upgrade() {
        inner.on_closed(session, &why);
    }
}

/// Returns once input is there: polled for without sleeping for `poll` when `after_message`
/// (more often follows soon), then slept for.
fn wait_for_input(session: &Session, poll: Duration, after_message: bool) -> Result<(), Error> {
    if let Some(mut spell) = BusyPoll::new(poll).filter(|_| after_message) {
        loop {
            if session.wait_input(0)? {
                return Ok(());
            }
            if !spell.again() {
                break;
            }
        }
    }
    while !session.wait_input(-1)? {}
    Ok(())
}

/// Whether `inv` can concern an endpoint this client serves.
fn ours(config: &ClientConfig, inv: &Invalidate) -> bool {
    match inv.endpoints {
        Endpoints::All => true,
        Endpoints::One(e) => config.endpoints.iter().any(|r| r.contains(e)),
    }
}
