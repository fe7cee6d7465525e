//! The event queue: pre-posted 48-byte buffers, decoded into typed events and re-posted.

use alloc::vec;
use alloc::vec::Vec;

use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::Transport;
use virtio_drivers::Hal;
use virtio_iommu_spec::event::EXT_EVENT_SIZE;
use virtio_iommu_spec::{Event, EVENT_QUEUE};

use crate::error::Error;
use crate::ratelimit::{limited_warn, RateLimit};

/// Number of buffers posted on the event queue.
pub const EVENT_QUEUE_SIZE: usize = 16;

/// Size of each event buffer: room for the extended record; 24-byte legacy faults fit too.
pub const EVENT_BUFFER_SIZE: usize = EXT_EVENT_SIZE;

pub(crate) struct EventQueue<H: Hal> {
    queue: VirtQueue<H, EVENT_QUEUE_SIZE>,
    /// Indexed by the descriptor the buffer was posted with.
    buffers: Vec<Option<Vec<u8>>>,
    /// Malformed records, counted and their warnings limited.
    malformed: RateLimit,
    /// Used entries naming no posted buffer, counted at each sighting.
    bad_used_ids: RateLimit,
}

impl<H: Hal> EventQueue<H> {
    /// Creates the queue and posts every buffer (the caller notifies after `DRIVER_OK`).
    pub(crate) fn new<T: Transport>(transport: &mut T) -> Result<Self, Error> {
        let mut q = EventQueue {
            queue: VirtQueue::new(transport, EVENT_QUEUE, false, false)?,
            buffers: (0..EVENT_QUEUE_SIZE).map(|_| None).collect(),
            malformed: RateLimit::new(),
            bad_used_ids: RateLimit::new(),
        };
        for _ in 0..EVENT_QUEUE_SIZE {
            q.post(vec![0u8; EVENT_BUFFER_SIZE])?;
        }
        Ok(q)
    }

    fn post(&mut self, mut buf: Vec<u8>) -> Result<(), Error> {
        // SAFETY: the buffer is moved into `self.buffers` and not touched until `poll` pops it.
        let token = unsafe { self.queue.add(&[], &mut [buf.as_mut_slice()])? };
        match self.buffers.get_mut(usize::from(token)) {
            Some(slot @ None) => {
                *slot = Some(buf);
                Ok(())
            }
            _ => {
                // Never free a buffer the device may still write.
                core::mem::forget(buf);
                Err(Error::Transport(virtio_drivers::Error::WrongToken))
            }
        }
    }

    /// Notifies the device of posted buffers unless it suppressed notifications.
    pub(crate) fn kick<T: Transport>(&mut self, transport: &mut T) {
        if self.queue.should_notify() {
            transport.notify(EVENT_QUEUE);
        }
    }

    /// Returns the next event, re-posting the buffer it consumes.
    ///
    /// # Errors
    /// [`Error::MalformedEvent`] for a record that does not parse (dropped, as the
    /// specification requires, with its buffer re-posted: the next call continues with the
    /// next record); [`Error::BadUsedId`] when the next used entry names no posted buffer
    /// (it stays in the ring, see `RequestQueue::reap`).
    pub(crate) fn poll<T: Transport>(&mut self, transport: &mut T) -> Result<Option<Event>, Error> {
        let Some(token) = self.queue.peek_used() else {
            return Ok(None);
        };
        let Some(slot) = self.buffers.get_mut(usize::from(token)) else {
            return Err(self.bad_used_id(token));
        };
        let Some(mut buf) = slot.take() else {
            return Err(self.bad_used_id(token));
        };
        // SAFETY: `buf` is the buffer posted with this token.
        let used = match unsafe { self.queue.pop_used(token, &[], &mut [buf.as_mut_slice()]) } {
            Ok(used) => used,
            Err(e) => {
                *slot = Some(buf);
                return match e {
                    // The device rewrote the entry between the peek and the pop ...
                    virtio_drivers::Error::WrongToken => Err(self.bad_used_id(token)),
                    // ... or moved its used index back.
                    virtio_drivers::Error::NotReady => Ok(None),
                    e => Err(e.into()),
                };
            }
        };
        let parsed = usize::try_from(used)
            .ok()
            .and_then(|n| buf.get(..n))
            .map(Event::parse);
        buf.fill(0);
        self.post(buf)?;
        self.kick(transport);
        match parsed {
            Some(Ok(event)) => return Ok(Some(event)),
            Some(Err(e)) => limited_warn!(
                self.malformed,
                "virtio-iommu: dropping malformed event ({used} bytes): {e}"
            ),
            None => limited_warn!(
                self.malformed,
                "virtio-iommu: dropping event with used length {used} > {EVENT_BUFFER_SIZE}"
            ),
        }
        Err(Error::MalformedEvent { used_len: used })
    }

    fn bad_used_id(&mut self, id: u16) -> Error {
        limited_warn!(
            self.bad_used_ids,
            "virtio-iommu: device used event descriptor {id}, which holds no buffer"
        );
        Error::BadUsedId {
            queue: EVENT_QUEUE,
            id,
        }
    }

    /// The limiter of malformed-record warnings (its count is the number of records).
    pub(crate) fn malformed(&self) -> &RateLimit {
        &self.malformed
    }

    /// The limiter of bad-used-id warnings (its count is the number of sightings).
    pub(crate) fn bad_used_ids(&self) -> &RateLimit {
        &self.bad_used_ids
    }
}
