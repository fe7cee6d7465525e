//! Events waiting for event-queue buffers: a bounded FIFO that drops the oldest when full, and
//! the choice of record format for the buffer the driver posted.

use std::collections::VecDeque;

use virtio_iommu_spec::event::{EXT_EVENT_SIZE, FAULT_SIZE};
use virtio_iommu_spec::{Event, PageRequest};

/// One encoded event, ready to be copied into an event-queue buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventBytes {
    /// The record; only the first `len` bytes are meaningful.
    pub buf: [u8; EXT_EVENT_SIZE],
    /// 24 (upstream fault) or 48 (extended record).
    pub len: usize,
}

impl EventBytes {
    /// The record.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn legacy(b: [u8; FAULT_SIZE]) -> Self {
        let mut buf = [0; EXT_EVENT_SIZE];
        buf[..FAULT_SIZE].copy_from_slice(&b);
        EventBytes {
            buf,
            len: FAULT_SIZE,
        }
    }

    fn ext(buf: [u8; EXT_EVENT_SIZE]) -> Self {
        EventBytes {
            buf,
            len: EXT_EVENT_SIZE,
        }
    }
}

/// What to do with the event at the head of the queue for a given buffer.
#[derive(Debug)]
pub(super) enum Delivery {
    /// Nothing queued.
    Empty,
    /// Write these bytes.
    Bytes(EventBytes),
    /// The buffer is too small for any record: the event stays queued.
    TooSmall,
    /// A page request that this buffer / feature set cannot carry: the device must complete
    /// it with a failure itself.
    Undeliverable(PageRequest),
}

/// Event counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EventCounters {
    /// Events queued.
    pub queued: u64,
    /// Events written to a driver buffer.
    pub delivered: u64,
    /// Events dropped because the queue was full.
    pub dropped: u64,
    /// Page requests the device completed with a failure because it could not deliver them.
    pub page_requests_failed: u64,
}

/// The bounded queue and its counters.
#[derive(Debug)]
pub(super) struct EventQueue {
    q: VecDeque<Event>,
    cap: usize,
    counters: EventCounters,
}

impl EventQueue {
    /// A queue holding at most `cap` (≥ 1) events.
    pub(super) fn new(cap: usize) -> Self {
        EventQueue {
            q: VecDeque::new(),
            cap: cap.max(1),
            counters: EventCounters::default(),
        }
    }

    /// The counters.
    pub(super) fn counters(&self) -> EventCounters {
        self.counters
    }

    /// Appends an event; returns the dropped oldest one when the queue was full (a dropped
    /// page request is one the device must complete with a failure itself).
    pub(super) fn push(&mut self, e: Event) -> Option<Event> {
        self.counters.queued += 1;
        let dropped = if self.q.len() >= self.cap {
            self.q.pop_front()
        } else {
            None
        };
        self.q.push_back(e);
        if let Some(old) = &dropped {
            self.counters.dropped += 1;
            if matches!(old, Event::PageRequest(_)) {
                self.counters.page_requests_failed += 1;
            }
        }
        dropped
    }

    /// Whether nothing is queued.
    pub(super) fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Withdraws the queued page requests of group `(endpoint, group_id)` (the device
    /// completed the group itself). Returns whether one was queued.
    pub(super) fn remove_page_request(&mut self, endpoint: u32, group_id: u16) -> bool {
        let before = self.q.len();
        self.q.retain(
            |e| !matches!(e, Event::PageRequest(p) if p.endpoint == endpoint && p.group_id == group_id),
        );
        self.q.len() != before
    }

    /// Events queued.
    pub(super) fn len(&self) -> usize {
        self.q.len()
    }

    /// The queued events, oldest first (a saved state carries them).
    pub(super) fn snapshot(&self) -> Vec<Event> {
        self.q.iter().copied().collect()
    }

    /// Replaces the queue and the counters with a saved state's (at most `cap` events, checked
    /// by the caller; any beyond are dropped oldest first).
    pub(super) fn restore(&mut self, events: &[Event], counters: EventCounters) {
        let skip = events.len().saturating_sub(self.cap);
        self.q = events[skip..].iter().copied().collect();
        self.counters = counters;
    }

    /// Drops everything (device reset).
    pub(super) fn clear(&mut self) {
        self.q.clear();
    }

    /// Takes the head event if it can be written to a buffer of `buf_len` bytes: the 48-byte
    /// record when `extended` (PAGE_REQUEST negotiated) and the buffer holds it, else the
    /// 24-byte upstream fault. Page requests exist only as 48-byte records.
    pub(super) fn pop(&mut self, buf_len: usize, extended: bool) -> Delivery {
        let Some(head) = self.q.front() else {
            return Delivery::Empty;
        };
        let ext_fits = extended && buf_len >= EXT_EVENT_SIZE;
        let out = match head {
            Event::Fault(f) if ext_fits => Delivery::Bytes(EventBytes::ext(f.encode_ext())),
            Event::Fault(f) if buf_len >= FAULT_SIZE => {
                Delivery::Bytes(EventBytes::legacy(f.encode_legacy()))
            }
            Event::Fault(_) => return Delivery::TooSmall,
            Event::PageRequest(p) if ext_fits => Delivery::Bytes(EventBytes::ext(p.encode())),
            Event::PageRequest(p) => {
                self.counters.page_requests_failed += 1;
                Delivery::Undeliverable(*p)
            }
        };
        if let Delivery::Bytes(_) = out {
            self.counters.delivered += 1;
        }
        self.q.pop_front();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_iommu_spec::event::{FaultFlags, FaultReason};
    use virtio_iommu_spec::FaultEvent;

    fn fault(endpoint: u32) -> Event {
        Event::Fault(FaultEvent {
            reason: FaultReason::Mapping,
            access: FaultFlags::WRITE,
            endpoint,
            address: Some(0x1000),
            pasid: Some(3),
        })
    }

    fn pr() -> PageRequest {
        PageRequest {
            endpoint: 1,
            pasid: Some(2),
            address: 0x4000,
            access: FaultFlags::READ,
            group_id: 9,
            last: true,
            private_data: None,
        }
    }

    #[test]
    fn drop_oldest() {
        let mut q = EventQueue::new(2);
        assert_eq!(q.push(fault(1)), None);
        assert_eq!(q.push(fault(2)), None);
        assert_eq!(q.push(fault(3)), Some(fault(1)));
        let Delivery::Bytes(b) = q.pop(24, false) else {
            panic!("expected bytes")
        };
        assert_eq!(Event::parse(b.as_bytes()).unwrap(), {
            let Event::Fault(mut f) = fault(2) else {
                unreachable!()
            };
            f.pasid = None; // the upstream record has no PASID
            Event::Fault(f)
        });
    }

    #[test]
    fn format_choice() {
        let mut q = EventQueue::new(8);
        q.push(fault(1));
        assert!(matches!(q.pop(23, true), Delivery::TooSmall));
        // Extended only with the feature and a big enough buffer.
        assert!(matches!(q.pop(47, true), Delivery::Bytes(b) if b.len == 24));
        q.push(fault(1));
        assert!(matches!(q.pop(64, false), Delivery::Bytes(b) if b.len == 24));
        q.push(fault(1));
        let Delivery::Bytes(b) = q.pop(48, true) else {
            panic!("expected bytes")
        };
        assert_eq!(b.len, 48);
        assert_eq!(Event::parse(b.as_bytes()).unwrap(), fault(1));
        q.push(Event::PageRequest(pr()));
        assert!(matches!(q.pop(48, false), Delivery::Undeliverable(p) if p == pr()));
        q.push(Event::PageRequest(pr()));
        assert!(matches!(q.pop(24, true), Delivery::Undeliverable(_)));
        q.push(Event::PageRequest(pr()));
        let Delivery::Bytes(b) = q.pop(48, true) else {
            panic!("expected bytes")
        };
        assert_eq!(
            Event::parse(b.as_bytes()).unwrap(),
            Event::PageRequest(pr())
        );
        assert!(matches!(q.pop(48, true), Delivery::Empty));
        assert!(q.is_empty());
    }
}
