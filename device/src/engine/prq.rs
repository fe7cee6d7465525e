//! Outstanding page-request groups: who raised them, when they time out, and the per-endpoint
//! and global bounds. No I/O; [`super::Engine`] acts on what this decides.
//!
//! A group is identified by `(endpoint, group_id)`. Groups the emulated DMA raises get an ID
//! from a device-wide counter, skipping IDs the endpoint still has outstanding; groups a host
//! raised keep the host's ID.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Who waits for a group's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// An emulated DMA (a ticket of [`super::device_dma`]).
    Dma(u64),
    /// The host backend (its fault queue gets the response).
    Host,
}

/// One outstanding group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Group {
    /// PASID of the request, if it had one.
    pub(super) pasid: Option<u32>,
    /// Who waits.
    pub(super) origin: Origin,
    /// When the device gives up and answers FAILURE itself.
    pub(super) deadline: Instant,
}

/// Why a group could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// The endpoint has `max_page_request_groups` outstanding.
    EndpointFull,
    /// All endpoints together have `max_page_request_groups_total` outstanding.
    DeviceFull,
}

/// Page-request counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PageRequestCounters {
    /// Page requests raised by emulated DMA or forwarded from the host.
    pub raised: u64,
    /// PAGE_RESP accepted with SUCCESS.
    pub success: u64,
    /// PAGE_RESP accepted with INVALID.
    pub invalid: u64,
    /// PAGE_RESP accepted with FAILURE.
    pub failure: u64,
    /// Groups the device completed with FAILURE because no response came in time.
    pub timed_out: u64,
    /// Stage-1 faults not turned into page requests although they could have been: group
    /// limits reached, page requests stopped by a FAILURE, or retries exhausted.
    pub refused: u64,
    /// Groups outstanding now.
    pub outstanding: u64,
}

/// The groups.
#[derive(Debug)]
pub(super) struct PageRequests {
    groups: BTreeMap<(u32, u16), Group>,
    per_endpoint: BTreeMap<u32, u32>,
    next_id: u16,
    /// Endpoints that got a FAILURE response: no page requests until a device reset.
    stopped: BTreeSet<u32>,
    max_per_endpoint: u32,
    max_total: usize,
    timeout: Duration,
}

impl PageRequests {
    /// Empty, with the limits of the device configuration.
    pub(super) fn new(max_per_endpoint: u32, max_total: usize, timeout: Duration) -> Self {
        PageRequests {
            groups: BTreeMap::new(),
            per_endpoint: BTreeMap::new(),
            next_id: 0,
            stopped: BTreeSet::new(),
            max_per_endpoint: max_per_endpoint.min(u32::from(u16::MAX)),
            max_total,
            timeout,
        }
    }

    /// The per-endpoint bound PROBE advertises.
    pub(super) fn max_per_endpoint(&self) -> u32 {
        self.max_per_endpoint
    }

    /// The bound on all groups together.
    pub(super) fn max_total(&self) -> usize {
        self.max_total
    }

    fn check(&self, endpoint: u32) -> Result<(), Refused> {
        if self.groups.len() >= self.max_total {
            return Err(Refused::DeviceFull);
        }
        if self.outstanding(endpoint) >= self.max_per_endpoint {
            return Err(Refused::EndpointFull);
        }
        Ok(())
    }

    fn insert(&mut self, endpoint: u32, id: u16, group: Group) {
        self.groups.insert((endpoint, id), group);
        *self.per_endpoint.entry(endpoint).or_insert(0) += 1;
    }

    /// Opens a group with a fresh ID.
    pub(super) fn open(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        origin: Origin,
        now: Instant,
    ) -> Result<u16, Refused> {
        self.check(endpoint)?;
        // Terminates within 2^16 steps: the endpoint has fewer than 2^16 IDs in use.
        let id = loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if !self.groups.contains_key(&(endpoint, id)) {
                break id;
            }
        };
        self.insert(endpoint, id, self.group(pasid, origin, now));
        Ok(id)
    }

    /// Records a group whose ID the host chose; a request of a group already open joins it.
    pub(super) fn open_host(
        &mut self,
        endpoint: u32,
        id: u16,
        pasid: Option<u32>,
        now: Instant,
    ) -> Result<(), Refused> {
        if self.groups.contains_key(&(endpoint, id)) {
            return Ok(());
        }
        self.check(endpoint)?;
        self.insert(endpoint, id, self.group(pasid, Origin::Host, now));
        Ok(())
    }

    fn group(&self, pasid: Option<u32>, origin: Origin, now: Instant) -> Group {
        Group {
            pasid,
            origin,
            deadline: now.checked_add(self.timeout).unwrap_or(now),
        }
    }

    /// The outstanding group `(endpoint, id)`.
    pub(super) fn get(&self, endpoint: u32, id: u16) -> Option<Group> {
        self.groups.get(&(endpoint, id)).copied()
    }

    /// Completes a group: it is no longer outstanding.
    pub(super) fn take(&mut self, endpoint: u32, id: u16) -> Option<Group> {
        let g = self.groups.remove(&(endpoint, id))?;
        if let Some(n) = self.per_endpoint.get_mut(&endpoint) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_endpoint.remove(&endpoint);
            }
        }
        Some(g)
    }

    /// Groups of `endpoint` outstanding.
    pub(super) fn outstanding(&self, endpoint: u32) -> u32 {
        self.per_endpoint.get(&endpoint).copied().unwrap_or(0)
    }

    /// Groups outstanding, all endpoints together.
    pub(super) fn total(&self) -> usize {
        self.groups.len()
    }

    /// Groups whose deadline is at or before `now`.
    pub(super) fn expired(&self, now: Instant) -> Vec<(u32, u16)> {
        self.groups
            .iter()
            .filter(|(_, g)| g.deadline <= now)
            .map(|(k, _)| *k)
            .collect()
    }

    /// Every outstanding group, emptying the table (device reset).
    pub(super) fn drain(&mut self) -> Vec<((u32, u16), Group)> {
        self.per_endpoint.clear();
        self.stopped.clear();
        std::mem::take(&mut self.groups).into_iter().collect()
    }

    /// The endpoint got FAILURE: it raises no page requests until a device reset.
    pub(super) fn stop(&mut self, endpoint: u32) {
        self.stopped.insert(endpoint);
    }

    /// Whether the endpoint's page requests are stopped.
    pub(super) fn stopped(&self, endpoint: u32) -> bool {
        self.stopped.contains(&endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_ids_and_deadlines() {
        let t0 = Instant::now();
        let mut p = PageRequests::new(2, 3, Duration::from_millis(10));
        assert_eq!(p.open(1, None, Origin::Host, t0), Ok(0));
        assert_eq!(p.open(1, Some(4), Origin::Dma(9), t0), Ok(1));
        assert_eq!(
            p.open(1, None, Origin::Host, t0),
            Err(Refused::EndpointFull)
        );
        assert_eq!(p.open_host(2, 1, None, t0), Ok(()));
        assert_eq!(p.open_host(2, 1, None, t0), Ok(()));
        assert_eq!(p.open(3, None, Origin::Host, t0), Err(Refused::DeviceFull));
        assert_eq!(p.total(), 3);
        assert_eq!(p.get(1, 1).unwrap().origin, Origin::Dma(9));
        assert_eq!(p.take(1, 0).unwrap().pasid, None);
        assert_eq!(p.take(1, 0), None);
        assert_eq!(p.outstanding(1), 1);
        // The counter moved on; ID 1 is still in use by endpoint 1, 2 is free.
        assert_eq!(p.open(1, None, Origin::Host, t0), Ok(2));
        assert!(p.expired(t0 + Duration::from_millis(9)).is_empty());
        assert_eq!(p.expired(t0 + Duration::from_millis(10)).len(), 3);
        p.stop(1);
        assert!(p.stopped(1));
        assert_eq!(p.drain().len(), 3);
        assert!(!p.stopped(1));
        assert_eq!(p.outstanding(1), 0);
        assert_eq!(
            PageRequests::new(1 << 20, 1, Duration::ZERO).max_per_endpoint(),
            65535
        );
    }
}
