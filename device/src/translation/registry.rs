//! Every connected client and every held guest request, behind the hub's lock.
//!
//! Lock order: the engine, then this. Replies to TRANSLATE are queued while the engine lock
//! is still held, and so are the INVALIDATEs of a guest request: a reply computed before a
//! change is therefore queued before that change's INVALIDATE, and one computed after it
//! reflects it (spec/TRANSLATION.md §4.3).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use virtio_iommu_spec::translation::{DaemonMessage, EndpointRange};

use super::hold_id::HoldId;
use super::holds::Holds;
use super::peer::{Backlog, Peer};
use super::scope::scopes;
use super::stats::TranslationStats;
use crate::engine::Invalidation;
use crate::limited;

/// Why a client was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CutReason {
    /// An INVALIDATE was not acknowledged in time.
    Timeout,
    /// Its unsent messages reached the bound.
    Backlog,
}

/// Clients, holds, counters.
#[derive(Debug)]
pub(super) struct Registry {
    peers: BTreeMap<u64, Peer>,
    holds: Holds,
    pub(super) stats: TranslationStats,
    ack_timeout: Duration,
}

impl Registry {
    pub(super) fn new(ack_timeout: Duration) -> Self {
        Registry {
            peers: BTreeMap::new(),
            holds: Holds::default(),
            stats: TranslationStats::default(),
            ack_timeout,
        }
    }

    /// Clients registered now.
    pub(super) fn len(&self) -> usize {
        self.peers.len()
    }

    pub(super) fn add(&mut self, id: u64, peer: Peer) {
        self.peers.insert(id, peer);
        self.stats.clients = self.peers.len() as u64;
    }

    /// Forgets a client (closed); returns whether holds completed.
    pub(super) fn remove(&mut self, id: u64) -> bool {
        self.peers.remove(&id);
        self.stats.clients = self.peers.len() as u64;
        let n = self.holds.drop_client(id);
        self.settled(n)
    }

    pub(super) fn peer_mut(&mut self, id: u64) -> Option<&mut Peer> {
        self.peers.get_mut(&id)
    }

    pub(super) fn peer(&self, id: u64) -> Option<&Peer> {
        self.peers.get(&id)
    }

    pub(super) fn accept_hello(&mut self, id: u64, ranges: Vec<EndpointRange>) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.set_ranges(ranges);
        }
    }

    /// Queues a reply; a client past its backlog is cut off (returns whether holds completed).
    pub(super) fn send(&mut self, id: u64, msg: &DaemonMessage) -> bool {
        match self.peers.get_mut(&id).map(|p| p.send(msg)) {
            Some(Err(Backlog)) => self.cut(id, CutReason::Backlog),
            _ => false,
        }
    }

    fn settled(&mut self, n: usize) -> bool {
        self.stats.released += n as u64;
        n > 0
    }

    /// Sends every client the INVALIDATEs of `records`; the hold waits for their acks.
    /// Returns the hold (`None`: nobody to wait for) and whether other holds completed (a
    /// client cut off for its backlog).
    pub(super) fn invalidate(
        &mut self,
        records: &[Invalidation],
        now: Instant,
    ) -> (Option<HoldId>, bool) {
        let deadline = now.checked_add(self.ack_timeout).unwrap_or(now);
        let mut acks = BTreeMap::new();
        let mut backlogged = Vec::new();
        for (id, p) in &mut self.peers {
            if p.is_cut() || p.ranges().is_empty() {
                continue;
            }
            'records: for r in records {
                for s in scopes(p.ranges(), r) {
                    match p.send_invalidate(&s, deadline) {
                        Ok(seq) => {
                            acks.insert(*id, seq);
                            self.stats.invalidates += 1;
                        }
                        Err(Backlog) => {
                            backlogged.push(*id);
                            break 'records;
                        }
                    }
                }
            }
        }
        let mut released = false;
        for id in backlogged {
            acks.remove(&id);
            released |= self.cut(id, CutReason::Backlog);
        }
        let hold = self.holds.add(acks);
        if hold.is_some() {
            self.stats.held += 1;
        }
        (hold, released)
    }

    /// INVAL_ACK from `id`; returns whether holds completed.
    pub(super) fn ack(&mut self, id: u64, seq: u64) -> bool {
        self.stats.acks += 1;
        let Some(p) = self.peers.get_mut(&id) else {
            return false;
        };
        let seq = p.ack(seq);
        let n = self.holds.ack(id, seq);
        self.settled(n)
    }

    /// Cuts off a client: logged, its holds released. Returns whether holds completed.
    pub(super) fn cut(&mut self, id: u64, why: CutReason) -> bool {
        let Some(p) = self.peers.get_mut(&id) else {
            return false;
        };
        if p.is_cut() {
            return false;
        }
        p.cut();
        match why {
            CutReason::Timeout => {
                self.stats.cut_off_timeout += 1;
                limited!(
                    Warn,
                    "translation client {id}: no INVAL_ACK within {:?}: cut off, its translations refused",
                    self.ack_timeout
                );
            }
            CutReason::Backlog => {
                self.stats.cut_off_backlog += 1;
                limited!(
                    Warn,
                    "translation client {id}: stopped reading its messages: cut off"
                );
            }
        }
        let n = self.holds.drop_client(id);
        self.settled(n)
    }

    /// Cuts off every client whose acknowledgement is overdue at `now`; returns whether holds
    /// completed.
    pub(super) fn cut_overdue(&mut self, now: Instant) -> bool {
        let overdue: Vec<u64> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.is_cut() && p.deadline().is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        let mut released = false;
        for id in overdue {
            released |= self.cut(id, CutReason::Timeout);
        }
        released
    }

    /// The earliest acknowledgement deadline.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.peers
            .values()
            .filter(|p| !p.is_cut())
            .filter_map(Peer::deadline)
            .min()
    }

    /// The counters, with the holds waiting now.
    pub(super) fn stats(&self) -> TranslationStats {
        TranslationStats {
            holding: self.holds.waiting() as u64,
            ..self.stats
        }
    }

    /// Holds completed since the last call.
    pub(super) fn take_completed(&mut self) -> Vec<HoldId> {
        self.holds.take_completed()
    }

    /// Writes what waits for every client; a write error is left to the service thread (it
    /// sees the socket close).
    pub(super) fn flush_all(&mut self) {
        for (id, p) in &mut self.peers {
            // A dead socket shows on the service thread's epoll; nothing to log per write.
            if let Err(e) = p.flush() {
                log::debug!("translation client {id}: write failed: {e}");
            }
        }
    }
}
