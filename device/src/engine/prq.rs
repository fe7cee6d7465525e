//! Outstanding page-request groups: who raised them, when they time out, the per-endpoint
//! and global bounds, and how each ends: PAGE_RESP from the guest, or FAILURE from the device
//! itself (timeout, undeliverable record, reset).
//!
//! A group is identified by `(endpoint, group_id)`. Groups the emulated DMA raises get an ID
//! from a device-wide counter, skipping IDs the endpoint still has outstanding; groups a host
//! raised keep the host's ID. A completed group of an emulated DMA leaves its code for the DMA
//! to pick up ([`PageRequests::take_answer`]); one of the host is answered through the host.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use log::{debug, warn};
use serde::Serialize;
use virtio_iommu_spec::ext::PageRespCode;
use virtio_iommu_spec::request::PageResp;
use virtio_iommu_spec::{PageRequest, Status};

use super::domain::host_status;
use super::event_queue::EventQueue;
use super::state::SavedGroup;
use crate::host::HostIommu;

/// Who waits for a group's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// An emulated DMA (a ticket of [`super::device_dma`]).
    Dma(u64),
    /// The host backend (its fault queue gets the response).
    Host,
    /// Loaded from a saved state: whoever raised it stayed with the source device, so the
    /// response is accepted and counted but goes nowhere (PROTOCOL.md §12.6).
    Restored,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum Refused {
    /// The endpoint has `max_page_request_groups` outstanding.
    #[error("the endpoint has its most page-request groups outstanding")]
    EndpointFull,
    /// All endpoints together have `max_page_request_groups_total` outstanding.
    #[error("the device has its most page-request groups outstanding")]
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
    next_id: u16,
    /// Endpoints that got a FAILURE response: no page requests until a device reset.
    stopped: BTreeSet<u32>,
    /// Completed groups of emulated DMAs, by ticket, until the DMA picks the code up.
    dma_answers: BTreeMap<u64, PageRespCode>,
    /// A PAGE_RESP answered an emulated DMA's group since [`PageRequests::take_answered`].
    answered: bool,
    counters: PageRequestCounters,
    max_per_endpoint: u32,
    max_total: usize,
    timeout: Duration,
}

impl PageRequests {
    /// Empty, with the limits of the device configuration.
    pub(super) fn new(max_per_endpoint: u32, max_total: usize, timeout: Duration) -> Self {
        PageRequests {
            groups: BTreeMap::new(),
            next_id: 0,
            stopped: BTreeSet::new(),
            dma_answers: BTreeMap::new(),
            answered: false,
            counters: PageRequestCounters::default(),
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
        self.groups.remove(&(endpoint, id))
    }

    /// Groups of `endpoint` outstanding (at most `max_per_endpoint`, below 2^16).
    pub(super) fn outstanding(&self, endpoint: u32) -> u32 {
        let n = self
            .groups
            .range((endpoint, 0)..=(endpoint, u16::MAX))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
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
    fn drain(&mut self) -> Vec<((u32, u16), Group)> {
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

    /// The counters, with the groups outstanding now.
    pub(super) fn counters(&self) -> PageRequestCounters {
        PageRequestCounters {
            outstanding: u64::try_from(self.total()).unwrap_or(u64::MAX),
            ..self.counters
        }
    }

    /// Counts a page request raised (by an emulated DMA or the host).
    pub(super) fn count_raised(&mut self) {
        self.counters.raised += 1;
    }

    /// Counts a stage-1 fault that could have been a page request but was not.
    pub(super) fn count_refused(&mut self) {
        self.counters.refused += 1;
    }

    /// The code the group of DMA `ticket` was completed with, if it was; forgets it.
    pub(super) fn take_answer(&mut self, ticket: u64) -> Option<PageRespCode> {
        self.dma_answers.remove(&ticket)
    }

    /// Whether a PAGE_RESP answered an emulated DMA's group since the last call.
    pub(super) fn take_answered(&mut self) -> bool {
        std::mem::take(&mut self.answered)
    }

    /// A group the device completes with FAILURE itself (timeout, undeliverable, reset).
    fn complete_failed(
        &mut self,
        host: &mut dyn HostIommu,
        endpoint: u32,
        gid: u16,
        pasid: Option<u32>,
        origin: Origin,
    ) {
        match origin {
            Origin::Dma(t) => {
                self.dma_answers.insert(t, PageRespCode::Failure);
            }
            Origin::Host => {
                if let Err(e) = host.page_response(endpoint, pasid, gid, PageRespCode::Failure) {
                    warn!("cannot fail page request group {gid} of endpoint {endpoint}: {e}");
                }
            }
            Origin::Restored => {}
        }
    }

    /// The guest never answered group `(endpoint, gid)` in time: completed with FAILURE, its
    /// record withdrawn from `events` if still queued.
    pub(super) fn time_out(
        &mut self,
        host: &mut dyn HostIommu,
        events: &mut EventQueue,
        endpoint: u32,
        gid: u16,
    ) {
        let Some(g) = self.take(endpoint, gid) else {
            return;
        };
        debug!("page request group {gid} of endpoint {endpoint} timed out");
        self.counters.timed_out += 1;
        events.remove_page_request(endpoint, gid);
        self.complete_failed(host, endpoint, gid, g.pasid, g.origin);
    }

    /// Completes with FAILURE every group whose deadline is at or before `now`. Returns how
    /// many expired.
    pub(super) fn expire(
        &mut self,
        host: &mut dyn HostIommu,
        events: &mut EventQueue,
        now: Instant,
    ) -> usize {
        let expired = self.expired(now);
        for (ep, gid) in &expired {
            self.time_out(host, events, *ep, *gid);
        }
        expired.len()
    }

    /// PAGE_RESP of a known endpoint: no such outstanding group → S_INVAL; a PASID that
    /// differs from the request's (or one given for a request without PASID) → S_INVAL, the
    /// group stays outstanding. Otherwise the group is completed and S_OK; FAILURE also stops
    /// the endpoint's page requests until a device reset.
    pub(super) fn respond(&mut self, host: &mut dyn HostIommu, r: &PageResp) -> Status {
        let Some(g) = self.get(r.endpoint, r.group_id) else {
            return Status::Inval;
        };
        if r.pasid.is_some() && r.pasid != g.pasid {
            return Status::Inval;
        }
        if let Origin::Host = g.origin {
            if let Err(e) = host.page_response(r.endpoint, g.pasid, r.group_id, r.code) {
                return host_status("page_response", e);
            }
        }
        self.take(r.endpoint, r.group_id);
        if let Origin::Dma(t) = g.origin {
            self.dma_answers.insert(t, r.code);
            self.answered = true;
        }
        let c = &mut self.counters;
        match r.code {
            PageRespCode::Success => c.success += 1,
            PageRespCode::Invalid => c.invalid += 1,
            PageRespCode::Failure => {
                c.failure += 1;
                self.stop(r.endpoint);
            }
        }
        Status::Ok
    }

    /// A page request the driver will never see (dropped from a full queue, or no buffer /
    /// feature for the 48-byte record): the device completes the group with FAILURE itself,
    /// once, on its last request.
    pub(super) fn fail_undeliverable(&mut self, host: &mut dyn HostIommu, p: &PageRequest) {
        match self.get(p.endpoint, p.group_id) {
            Some(g) if matches!(g.origin, Origin::Dma(_)) || p.last => {
                self.take(p.endpoint, p.group_id);
                self.complete_failed(host, p.endpoint, p.group_id, g.pasid, g.origin);
            }
            Some(_) => {}
            None if p.last => {
                self.complete_failed(host, p.endpoint, p.group_id, p.pasid, Origin::Host);
            }
            None => {}
        }
    }

    /// Records a page request the host raised as an outstanding group. `false` if it was
    /// refused (limits, or page requests stopped): the device then answered FAILURE itself.
    pub(super) fn register_host(
        &mut self,
        host: &mut dyn HostIommu,
        p: &PageRequest,
        now: Instant,
    ) -> bool {
        let refused = self.stopped(p.endpoint)
            || self
                .open_host(p.endpoint, p.group_id, p.pasid, now)
                .is_err();
        if refused {
            self.counters.refused += 1;
            if p.last {
                self.complete_failed(host, p.endpoint, p.group_id, p.pasid, Origin::Host);
            }
            return false;
        }
        self.counters.raised += 1;
        true
    }

    /// The state a saved device carries (PROTOCOL.md §12.6): the next group ID, the stopped
    /// endpoints, and every outstanding group with the time it has left at `now`.
    pub(super) fn snapshot(&self, now: Instant) -> (u16, Vec<u32>, Vec<SavedGroup>) {
        let groups = self
            .groups
            .iter()
            .map(|(&(endpoint, group_id), g)| SavedGroup {
                endpoint,
                group_id,
                pasid: g.pasid,
                remaining: g.deadline.saturating_duration_since(now),
            })
            .collect();
        (self.next_id, self.stopped.iter().copied().collect(), groups)
    }

    /// Replaces the groups, the stopped endpoints, the next ID and the counters with a saved
    /// state's (checked against the limits by the caller). Restored groups wait for their
    /// PAGE_RESP as long as they had left; nobody on this side waits for their answer.
    pub(super) fn restore(
        &mut self,
        next_id: u16,
        stopped: &[u32],
        groups: &[SavedGroup],
        counters: PageRequestCounters,
        now: Instant,
    ) {
        self.next_id = next_id;
        self.stopped = stopped.iter().copied().collect();
        self.groups = groups
            .iter()
            .map(|g| {
                (
                    (g.endpoint, g.group_id),
                    Group {
                        pasid: g.pasid,
                        origin: Origin::Restored,
                        deadline: now.checked_add(g.remaining).unwrap_or(now),
                    },
                )
            })
            .collect();
        self.dma_answers.clear();
        self.counters = PageRequestCounters {
            outstanding: 0,
            ..counters
        };
    }

    /// Device reset: every outstanding group is completed with FAILURE and stopped endpoints
    /// may raise page requests again.
    pub(super) fn fail_all(&mut self, host: &mut dyn HostIommu) {
        for ((ep, gid), g) in self.drain() {
            self.complete_failed(host, ep, gid, g.pasid, g.origin);
        }
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

    #[test]
    fn an_answered_dma_group_is_reported_once() {
        let t0 = Instant::now();
        let mut host = crate::host::emulated::EmulatedHost::new();
        let mut p = PageRequests::new(4, 8, Duration::from_secs(1));
        let gid = p.open(1, Some(1), Origin::Dma(7), t0).unwrap();
        assert!(!p.take_answered());
        let resp = |group_id| PageResp {
            endpoint: 1,
            pasid: Some(1),
            group_id,
            code: PageRespCode::Success,
        };
        // An unknown group answers nothing.
        assert_eq!(p.respond(&mut host, &resp(gid + 1)), Status::Inval);
        assert!(!p.take_answered());
        assert_eq!(p.respond(&mut host, &resp(gid)), Status::Ok);
        assert!(p.take_answered());
        assert!(!p.take_answered());
        assert_eq!(p.take_answer(7), Some(PageRespCode::Success));
    }
}
