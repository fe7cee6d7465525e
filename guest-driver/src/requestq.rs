//! The request queue: owns the buffers of every request in flight, matches used-ring entries
//! back to them (in any order) and decodes the writable part into a [`Reply`].

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec;
use alloc::vec::Vec;

use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::Transport;
use virtio_drivers::Hal;
use virtio_iommu_spec::request::{ReqTail, Request, TAIL_SIZE};
use virtio_iommu_spec::REQUEST_QUEUE;
use zerocopy::FromBytes;

use crate::error::Error;
use crate::probe::EndpointInfo;
use crate::ratelimit::{limited_warn, RateLimit};

/// Number of descriptors in the request queue.
pub const REQUEST_QUEUE_SIZE: usize = 64;

/// Descriptors one request takes: its readable part and its writable part.
const DESCS_PER_REQUEST: usize = 2;

/// How many requests fit in the request queue at once.
pub const MAX_REQUESTS_IN_FLIGHT: usize = REQUEST_QUEUE_SIZE / DESCS_PER_REQUEST;

/// Names a submitted request until its completion is collected. Tokens are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token(u64);

/// What a successfully completed request returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The device wrote `S_OK`.
    Done,
    /// A PROBE reply with `S_OK`: the decoded properties.
    Probe(EndpointInfo),
}

/// A request the device holds.
struct InFlight {
    token: Token,
    is_probe: bool,
    readable: Vec<u8>,
    writable: Vec<u8>,
}

pub(crate) struct RequestQueue<H: Hal> {
    queue: VirtQueue<H, REQUEST_QUEUE_SIZE>,
    /// Indexed by the head descriptor of the request's chain.
    inflight: Vec<Option<InFlight>>,
    next_token: u64,
    /// Completions not yet collected by their submitter.
    done: BTreeMap<Token, Result<Reply, Error>>,
    /// Requests whose submitter stopped waiting; their completions are discarded. At most
    /// `MAX_REQUESTS_IN_FLIGHT` (each is in `inflight`).
    abandoned: BTreeSet<Token>,
    /// Completions of abandoned requests.
    late_completions: u64,
    /// Used entries naming no request, counted at each sighting.
    bad_used_ids: RateLimit,
    /// PROBE replies refused for malformed properties.
    malformed_probes: u64,
}

impl<H: Hal> RequestQueue<H> {
    pub(crate) fn new<T: Transport>(transport: &mut T) -> Result<Self, Error> {
        Ok(RequestQueue {
            queue: VirtQueue::new(transport, REQUEST_QUEUE, false, false)?,
            inflight: (0..REQUEST_QUEUE_SIZE).map(|_| None).collect(),
            next_token: 0,
            done: BTreeMap::new(),
            abandoned: BTreeSet::new(),
            late_completions: 0,
            bad_used_ids: RateLimit::new(),
            malformed_probes: 0,
        })
    }

    /// Whether one more request fits in the ring.
    pub(crate) fn has_room(&self) -> bool {
        self.queue.available_desc() >= DESCS_PER_REQUEST
    }

    /// Requests the device has not completed yet.
    pub(crate) fn in_flight(&self) -> usize {
        self.inflight.iter().filter(|s| s.is_some()).count()
    }

    /// Places `req` in the ring without notifying the device. `probe_size` sizes the PROBE
    /// properties area (the caller checked it against `MAX_PROBE_SIZE`).
    pub(crate) fn enqueue(&mut self, req: &Request, probe_size: u32) -> Result<Token, Error> {
        if !self.has_room() {
            return Err(Error::QueueFull);
        }
        let is_probe = matches!(req, Request::Probe(_));
        let area = if is_probe {
            usize::try_from(probe_size).map_err(|_| Error::ProbeTooLarge(probe_size))?
        } else {
            0
        };
        let readable = req.encode().as_bytes().to_vec();
        // Readable part = the request without its tail; writable part = [properties] + tail.
        let mut writable = vec![0u8; area + TAIL_SIZE];
        // SAFETY: both buffers are heap allocations moved into `self.inflight` below and neither
        // touched nor freed until `reap` pops this chain (or the device has been reset on drop).
        let head = unsafe {
            self.queue
                .add(&[readable.as_slice()], &mut [writable.as_mut_slice()])?
        };
        let token = Token(self.next_token);
        self.next_token = self.next_token.wrapping_add(1);
        match self.inflight.get_mut(usize::from(head)) {
            Some(slot @ None) => {
                *slot = Some(InFlight {
                    token,
                    is_probe,
                    readable,
                    writable,
                });
                Ok(token)
            }
            // The queue handed out a head that is still in use: its bookkeeping is broken and
            // the buffers must not be freed while the device may write them.
            _ => {
                core::mem::forget((readable, writable));
                Err(Error::Transport(virtio_drivers::Error::WrongToken))
            }
        }
    }

    /// Notifies the device unless it suppressed notifications.
    pub(crate) fn kick<T: Transport>(&mut self, transport: &mut T) {
        if self.queue.should_notify() {
            transport.notify(REQUEST_QUEUE);
        }
    }

    /// Moves every completed request from the used ring to the completion table.
    ///
    /// # Errors
    /// [`Error::BadUsedId`] when the next used entry names no request in flight: it stays
    /// in the ring (popping it would recycle descriptors of a live chain), so the queue is
    /// stuck until the device rewrites it or is reset. An index that runs ahead of the
    /// device's real completions shows up this way too, at the latest after
    /// `MAX_REQUESTS_IN_FLIGHT` entries: each entry before that names a live request, which
    /// the device could have completed just as well.
    pub(crate) fn reap(&mut self) -> Result<(), Error> {
        // Each iteration empties one `inflight` slot or returns, so this loop is bounded.
        while let Some(head) = self.queue.peek_used() {
            let Some(slot) = self.inflight.get_mut(usize::from(head)) else {
                return Err(self.bad_used_id(head));
            };
            let Some(mut req) = slot.take() else {
                return Err(self.bad_used_id(head));
            };
            // SAFETY: these are the buffers `enqueue` added with this head.
            let popped = unsafe {
                self.queue.pop_used(
                    head,
                    &[req.readable.as_slice()],
                    &mut [req.writable.as_mut_slice()],
                )
            };
            let used = match popped {
                // The device rewrote the entry between the peek and the pop.
                Err(virtio_drivers::Error::WrongToken) => {
                    *slot = Some(req);
                    return Err(self.bad_used_id(head));
                }
                // ... or moved its used index back: nothing to collect now.
                Err(virtio_drivers::Error::NotReady) => {
                    *slot = Some(req);
                    return Ok(());
                }
                Err(e) => {
                    *slot = Some(req);
                    return Err(e.into());
                }
                Ok(used) => used,
            };
            if self.abandoned.remove(&req.token) {
                self.late_completions = self.late_completions.saturating_add(1);
            } else {
                let result = decode_reply(&req, used);
                if matches!(result, Err(Error::MalformedProbe { .. })) {
                    self.malformed_probes = self.malformed_probes.saturating_add(1);
                }
                self.done.insert(req.token, result);
            }
        }
        Ok(())
    }

    fn bad_used_id(&mut self, id: u16) -> Error {
        limited_warn!(
            self.bad_used_ids,
            "virtio-iommu: device used request descriptor {id}, which heads no request"
        );
        Error::BadUsedId {
            queue: REQUEST_QUEUE,
            id,
        }
    }

    /// The completion of `token`: `Some` once completed (and then forgotten), `None` while the
    /// device still holds it.
    pub(crate) fn take(&mut self, token: Token) -> Result<Option<Result<Reply, Error>>, Error> {
        if let Some(r) = self.done.remove(&token) {
            return Ok(Some(r));
        }
        if self.is_in_flight(token) && !self.abandoned.contains(&token) {
            Ok(None)
        } else {
            Err(Error::UnknownToken)
        }
    }

    /// Stops tracking `token`: its completion, now or later, is discarded.
    pub(crate) fn abandon(&mut self, token: Token) {
        if self.done.remove(&token).is_none() && self.is_in_flight(token) {
            self.abandoned.insert(token);
        }
    }

    fn is_in_flight(&self, token: Token) -> bool {
        self.inflight.iter().flatten().any(|r| r.token == token)
    }

    /// Requests abandoned while the device holds them.
    pub(crate) fn abandoned_in_flight(&self) -> usize {
        self.abandoned.len()
    }

    /// Completions of abandoned requests so far.
    pub(crate) fn late_completions(&self) -> u64 {
        self.late_completions
    }

    /// The limiter of bad-used-id warnings (its count is the number of sightings).
    pub(crate) fn bad_used_ids(&self) -> &RateLimit {
        &self.bad_used_ids
    }

    /// PROBE replies refused for malformed properties.
    pub(crate) fn malformed_probes(&self) -> u64 {
        self.malformed_probes
    }
}

/// Decodes the writable part: exact used length, then the status in its last 4 bytes.
fn decode_reply(req: &InFlight, used: u32) -> Result<Reply, Error> {
    if used == 0 {
        return Err(Error::NoReply);
    }
    let len = req.writable.len();
    if usize::try_from(used).ok() != Some(len) {
        return Err(Error::UsedLengthMismatch {
            expected: len,
            got: used,
        });
    }
    let (area, tail) = req.writable.split_at(len.saturating_sub(TAIL_SIZE));
    let tail = ReqTail::read_from_bytes(tail).map_err(|_| Error::NoReply)?;
    if let Some(e) = Error::from_status_byte(tail.status) {
        return Err(e);
    }
    Ok(if req.is_probe {
        Reply::Probe(EndpointInfo::parse_checked(area)?)
    } else {
        Reply::Done
    })
}
