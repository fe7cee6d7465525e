//! The event queue: pre-posted 48-byte buffers, decoded into typed events and re-posted.

use alloc::vec;
use alloc::vec::Vec;

use log::warn;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::Transport;
use virtio_drivers::Hal;
use virtio_iommu_spec::event::EXT_EVENT_SIZE;
use virtio_iommu_spec::{Event, EVENT_QUEUE};

use crate::error::Error;

/// Number of buffers posted on the event queue.
pub const EVENT_QUEUE_SIZE: usize = 16;

/// Size of each event buffer: room for the extended record; 24-byte legacy faults fit too.
pub const EVENT_BUFFER_SIZE: usize = EXT_EVENT_SIZE;

pub(crate) struct EventQueue<H: Hal> {
    queue: VirtQueue<H, EVENT_QUEUE_SIZE>,
    /// Indexed by the descriptor the buffer was posted with.
    buffers: Vec<Option<Vec<u8>>>,
    dropped: u64,
}

impl<H: Hal> EventQueue<H> {
    /// Creates the queue and posts every buffer (the caller notifies after `DRIVER_OK`).
    pub(crate) fn new<T: Transport>(transport: &mut T) -> Result<Self, Error> {
        let mut q = EventQueue {
            queue: VirtQueue::new(transport, EVENT_QUEUE, false, false)?,
            buffers: (0..EVENT_QUEUE_SIZE).map(|_| None).collect(),
            dropped: 0,
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

    /// Returns the next well-formed event, re-posting every buffer it consumes. Malformed
    /// records are dropped (and counted), as the specification requires; at most one ring's
    /// worth of records is examined per call.
    pub(crate) fn poll<T: Transport>(&mut self, transport: &mut T) -> Result<Option<Event>, Error> {
        for _ in 0..EVENT_QUEUE_SIZE {
            let Some(token) = self.queue.peek_used() else {
                return Ok(None);
            };
            let Some(mut buf) = self
                .buffers
                .get_mut(usize::from(token))
                .and_then(Option::take)
            else {
                warn!("device used event descriptor {token}, which holds no buffer");
                return Err(Error::Transport(virtio_drivers::Error::WrongToken));
            };
            // SAFETY: `buf` is the buffer posted with this token.
            let used = match unsafe { self.queue.pop_used(token, &[], &mut [buf.as_mut_slice()]) } {
                Ok(used) => used,
                Err(e) => {
                    if let Some(slot) = self.buffers.get_mut(usize::from(token)) {
                        *slot = Some(buf);
                    }
                    return Err(e.into());
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
                Some(Err(e)) => warn!("dropping malformed event ({used} bytes): {e}"),
                None => warn!("dropping event with used length {used} > {EVENT_BUFFER_SIZE}"),
            }
            self.dropped = self.dropped.saturating_add(1);
        }
        Ok(None)
    }

    /// How many malformed event records were dropped so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }
}
