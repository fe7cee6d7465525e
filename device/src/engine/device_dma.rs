//! DMA of a simulated endpoint that can wait for page requests, and the engine's side of
//! PAGE_RESP.
//!
//! [`Engine::start_dma`] copies piece by piece through the host's translation. A recoverable
//! stage-1 fault (entry not present, permission, access flag) of an endpoint with page-request
//! capability, with `F_PAGE_REQUEST` negotiated, queues a page request (one group, LAST set)
//! and parks the DMA behind a [`DmaTicket`]. The caller drops the engine lock, lets the queue
//! thread deliver the event and process PAGE_RESP, and calls [`Engine::resume_dma`]:
//! SUCCESS retries the walk from where it stopped, INVALID / FAILURE / timeout fail the DMA with
//! an unrecoverable fault (queued as an event like any other).

use std::collections::BTreeMap;
use std::time::Instant;

use log::{debug, warn};
use virtio_iommu_spec::event::{FaultFlags, FaultReason};
use virtio_iommu_spec::ext::PageRespCode;
use virtio_iommu_spec::request::PageResp;
use virtio_iommu_spec::{Event, FaultEvent, Features, PageRequest, Status};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};

use super::prq::Origin;
use super::Engine;
use crate::host::{Access, DmaAttrs, Fault};

/// Page requests one page of a DMA may raise (the first and the retries after SUCCESS) before
/// the DMA fails with an unrecoverable fault.
pub const PAGE_REQUESTS_PER_PAGE: u32 = 4;

const PAGE_MASK: u64 = 0xfff;

/// What a simulated endpoint does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DmaOp {
    /// Read this many bytes.
    Read(usize),
    /// Write these bytes.
    Write(Vec<u8>),
}

/// A DMA of a simulated endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmaRequest {
    /// Endpoint ID.
    pub endpoint: u32,
    /// PASID, if the DMA carries one.
    pub pasid: Option<u32>,
    /// Input address of the first byte.
    pub iova: u64,
    /// Read or write.
    pub op: DmaOp,
    /// Privileged / exec attributes.
    pub attrs: DmaAttrs,
}

/// Handle of a DMA waiting for a page response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DmaTicket(pub u64);

/// Where a DMA stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DmaOutcome {
    /// Completed: the bytes read (empty for a write).
    Done(Vec<u8>),
    /// Failed with this fault (already queued as an event, unless the endpoint is unknown).
    Fault(FaultEvent),
    /// Waiting for a page response: call [`Engine::resume_dma`] later.
    Pending(DmaTicket),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// The page request of this group is outstanding.
    Group(u16),
    /// The group was completed with this code (by the guest or by the device).
    Answered(PageRespCode),
}

/// A parked DMA.
#[derive(Debug)]
pub(super) struct ParkedDma {
    endpoint: u32,
    pasid: Option<u32>,
    iova: u64,
    write: bool,
    attrs: DmaAttrs,
    buf: Vec<u8>,
    done: usize,
    /// The address whose fault raised the last page request.
    fault_addr: u64,
    /// Page requests raised for `fault_addr`.
    requests: u32,
    wait: Wait,
}

impl ParkedDma {
    fn access(&self) -> Access {
        if self.write {
            Access::Write
        } else {
            Access::Read
        }
    }

    fn flags(&self) -> FaultFlags {
        let mut f = if self.write {
            FaultFlags::WRITE
        } else {
            FaultFlags::READ
        };
        f.set(FaultFlags::EXEC, self.attrs.exec && !self.write);
        f.set(FaultFlags::PRIV, self.attrs.privileged);
        f
    }
}

/// The parked DMAs.
#[derive(Debug, Default)]
pub(super) struct Dmas {
    parked: BTreeMap<u64, ParkedDma>,
    next: u64,
}

impl Dmas {
    /// Parked DMAs.
    pub(super) fn len(&self) -> usize {
        self.parked.len()
    }

    fn answer(&mut self, ticket: u64, code: PageRespCode) {
        if let Some(d) = self.parked.get_mut(&ticket) {
            d.wait = Wait::Answered(code);
        }
    }
}

impl Engine {
    /// Starts a DMA. Returns `Done` or `Fault` at once, or `Pending` when it waits for a page
    /// response; nothing is parked unless it returns `Pending`.
    pub fn start_dma(&mut self, req: DmaRequest, now: Instant) -> DmaOutcome {
        let (write, buf) = match req.op {
            DmaOp::Read(n) => (false, vec![0u8; n]),
            DmaOp::Write(data) => (true, data),
        };
        let d = ParkedDma {
            endpoint: req.endpoint,
            pasid: req.pasid,
            iova: req.iova,
            write,
            attrs: req.attrs,
            buf,
            done: 0,
            fault_addr: req.iova,
            requests: 0,
            wait: Wait::Answered(PageRespCode::Success),
        };
        if let Err(mut f) = self.known(d.endpoint, d.pasid, d.iova, d.access()) {
            f.access = d.flags();
            return DmaOutcome::Fault(f);
        }
        self.run_dma(d, now)
    }

    /// Moves a parked DMA on: still `Pending` while its group is outstanding and not past its
    /// deadline (past it, the device completes the group with FAILURE itself); after SUCCESS
    /// the DMA continues (and may park again); after INVALID or FAILURE it faults. `None` for a
    /// ticket that is not parked (finished, cancelled, or never issued).
    pub fn resume_dma(&mut self, ticket: DmaTicket, now: Instant) -> Option<DmaOutcome> {
        let d = self.dmas.parked.remove(&ticket.0)?;
        let out = match d.wait {
            Wait::Group(gid) => match self.prq.get(d.endpoint, gid) {
                Some(g) if now < g.deadline => {
                    self.dmas.parked.insert(ticket.0, d);
                    return Some(DmaOutcome::Pending(ticket));
                }
                _ => {
                    self.time_out_group(d.endpoint, gid);
                    self.fail_dma(&d)
                }
            },
            Wait::Answered(PageRespCode::Success) => self.run_dma(d, now),
            Wait::Answered(_) => self.fail_dma(&d),
        };
        self.refresh_gauges();
        Some(out)
    }

    /// Gives up on a parked DMA: its outstanding group, if any, is completed (a later PAGE_RESP
    /// for it is stale) and its page request withdrawn if not yet delivered.
    pub fn cancel_dma(&mut self, ticket: DmaTicket) {
        if let Some(d) = self.dmas.parked.remove(&ticket.0) {
            if let Wait::Group(gid) = d.wait {
                self.prq.take(d.endpoint, gid);
                self.events.remove_page_request(d.endpoint, gid);
            }
        }
        self.refresh_gauges();
    }

    /// Completes with FAILURE every group whose deadline is at or before `now` (the guest
    /// never answered, or the event never found a buffer). DMAs behind them fault when resumed.
    /// Returns how many groups expired.
    pub fn expire_page_requests(&mut self, now: Instant) -> usize {
        let expired = self.prq.expired(now);
        for (ep, gid) in &expired {
            self.time_out_group(*ep, *gid);
        }
        self.refresh_gauges();
        expired.len()
    }

    /// Page-request groups `endpoint` has outstanding.
    #[must_use]
    pub fn outstanding_page_requests(&self, endpoint: u32) -> u32 {
        self.prq.outstanding(endpoint)
    }

    /// DMAs parked behind page requests.
    #[must_use]
    pub fn parked_dmas(&self) -> usize {
        self.dmas.len()
    }

    fn time_out_group(&mut self, endpoint: u32, gid: u16) {
        let Some(g) = self.prq.take(endpoint, gid) else {
            return;
        };
        debug!("page request group {gid} of endpoint {endpoint} timed out");
        self.stats.page_requests.timed_out += 1;
        self.events.remove_page_request(endpoint, gid);
        self.complete_failed(endpoint, gid, g.pasid, g.origin);
    }

    /// A group the device completes with FAILURE itself (timeout, undeliverable, reset).
    fn complete_failed(&mut self, endpoint: u32, gid: u16, pasid: Option<u32>, origin: Origin) {
        match origin {
            Origin::Dma(t) => self.dmas.answer(t, PageRespCode::Failure),
            Origin::Host => {
                if let Err(e) = self
                    .host
                    .page_response(endpoint, pasid, gid, PageRespCode::Failure)
                {
                    warn!("cannot fail page request group {gid} of endpoint {endpoint}: {e}");
                }
            }
        }
    }

    fn page_requests_enabled(&self, endpoint: u32) -> bool {
        self.negotiated.contains(Features::PAGE_REQUEST)
            && self
                .endpoints
                .find(endpoint)
                .is_some_and(|(_, ep)| ep.page_requests)
            && !self.prq.stopped(endpoint)
    }

    /// Copies what can be copied; parks or fails at the first fault.
    fn run_dma(&mut self, mut d: ParkedDma, now: Instant) -> DmaOutcome {
        let mem = self.mem.clone();
        let guard = mem.as_ref().map(GuestAddressSpace::memory);
        let access = d.access();
        while d.done < d.buf.len() {
            let remaining = d.buf.len() - d.done;
            let cur = u64::try_from(d.done)
                .ok()
                .and_then(|off| d.iova.checked_add(off));
            let Some(cur) = cur else {
                // Past the top of the input space there is nothing to translate.
                return self.dma_fault(&d, FaultReason::Mapping, u64::MAX);
            };
            let want = u64::try_from(remaining).unwrap_or(u64::MAX);
            match self
                .host
                .translate_ext(d.endpoint, d.pasid, cur, want, access, d.attrs)
            {
                Ok(piece) => {
                    let n = usize::try_from(piece.len)
                        .unwrap_or(remaining)
                        .min(remaining);
                    let span = d.done..d.done + n;
                    let at = GuestAddress(piece.gpa);
                    let copied = match (&guard, d.write) {
                        (Some(m), true) => m.write(&d.buf[span], at).unwrap_or(0),
                        (Some(m), false) => m.read(&mut d.buf[span], at).unwrap_or(0),
                        (None, _) => 0,
                    };
                    if n == 0 || copied < n {
                        let bad = cur.saturating_add(u64::try_from(copied).unwrap_or(0));
                        return self.dma_fault(&d, FaultReason::Unknown, bad);
                    }
                    d.done += n;
                }
                Err(tf) if tf.recoverable && self.page_requests_enabled(d.endpoint) => {
                    return self.raise_page_request(d, tf.fault, now);
                }
                Err(tf) => {
                    if tf.recoverable && self.prq.stopped(d.endpoint) {
                        self.stats.page_requests.refused += 1;
                    }
                    return self.dma_fault(&d, tf.fault.reason, tf.fault.address);
                }
            }
        }
        DmaOutcome::Done(if d.write { Vec::new() } else { d.buf })
    }

    fn raise_page_request(&mut self, mut d: ParkedDma, fault: Fault, now: Instant) -> DmaOutcome {
        if fault.address != d.fault_addr {
            d.fault_addr = fault.address;
            d.requests = 0;
        }
        if d.requests >= PAGE_REQUESTS_PER_PAGE || self.dmas.len() >= self.prq.max_total() {
            self.stats.page_requests.refused += 1;
            return self.dma_fault(&d, fault.reason, fault.address);
        }
        let ticket = self.dmas.next;
        let gid = match self.prq.open(d.endpoint, d.pasid, Origin::Dma(ticket), now) {
            Ok(g) => g,
            Err(why) => {
                debug!("endpoint {}: page request refused: {why:?}", d.endpoint);
                self.stats.page_requests.refused += 1;
                return self.dma_fault(&d, fault.reason, fault.address);
            }
        };
        self.dmas.next = self.dmas.next.wrapping_add(1);
        d.requests += 1;
        d.wait = Wait::Group(gid);
        let pr = PageRequest {
            endpoint: d.endpoint,
            pasid: d.pasid,
            address: fault.address & !PAGE_MASK,
            access: d.flags(),
            group_id: gid,
            last: true,
            private_data: None,
        };
        self.dmas.parked.insert(ticket, d);
        self.stats.page_requests.raised += 1;
        self.push_event(Event::PageRequest(pr));
        self.refresh_gauges();
        DmaOutcome::Pending(DmaTicket(ticket))
    }

    fn fail_dma(&mut self, d: &ParkedDma) -> DmaOutcome {
        self.dma_fault(d, FaultReason::Mapping, d.fault_addr)
    }

    fn dma_fault(&mut self, d: &ParkedDma, reason: FaultReason, address: u64) -> DmaOutcome {
        let ev = FaultEvent {
            reason,
            access: d.flags(),
            endpoint: d.endpoint,
            address: Some(address),
            pasid: d.pasid,
        };
        self.push_event(Event::Fault(ev));
        DmaOutcome::Fault(ev)
    }

    /// PAGE_RESP: unknown endpoint → S_NOENT; no such outstanding group → S_INVAL; a PASID that
    /// differs from the request's (or one given for a request without PASID) → S_INVAL, the
    /// group stays outstanding. Otherwise the group is completed and S_OK; FAILURE also stops
    /// the endpoint's page requests until a device reset.
    pub(super) fn page_resp(&mut self, r: &PageResp) -> Status {
        if self.endpoints.find(r.endpoint).is_none() {
            return Status::NoEnt;
        }
        let Some(g) = self.prq.get(r.endpoint, r.group_id) else {
            return Status::Inval;
        };
        if r.pasid.is_some() && r.pasid != g.pasid {
            return Status::Inval;
        }
        if let Origin::Host = g.origin {
            if let Err(e) = self
                .host
                .page_response(r.endpoint, g.pasid, r.group_id, r.code)
            {
                return super::domain::host_status("page_response", e);
            }
        }
        self.prq.take(r.endpoint, r.group_id);
        if let Origin::Dma(t) = g.origin {
            self.dmas.answer(t, r.code);
        }
        let c = &mut self.stats.page_requests;
        match r.code {
            PageRespCode::Success => c.success += 1,
            PageRespCode::Invalid => c.invalid += 1,
            PageRespCode::Failure => {
                c.failure += 1;
                self.prq.stop(r.endpoint);
            }
        }
        Status::Ok
    }

    /// The hook for page requests the driver will never see (dropped from a full queue, or no
    /// buffer / feature for the 48-byte record): the device completes the group with FAILURE
    /// itself, once, on its last request.
    pub(super) fn fail_page_request(&mut self, p: &PageRequest) {
        self.stats.events.page_requests_failed += 1;
        match self.prq.get(p.endpoint, p.group_id) {
            Some(g) if matches!(g.origin, Origin::Dma(_)) || p.last => {
                self.prq.take(p.endpoint, p.group_id);
                self.complete_failed(p.endpoint, p.group_id, g.pasid, g.origin);
            }
            Some(_) => {}
            None if p.last => {
                self.complete_failed(p.endpoint, p.group_id, p.pasid, Origin::Host);
            }
            None => {}
        }
    }

    /// Records a page request the host raised as an outstanding group. `false` if it was
    /// refused (limits, or page requests stopped): the device then answered FAILURE itself.
    pub(super) fn register_host_page_request(&mut self, p: &PageRequest) -> bool {
        let refused = if self.prq.stopped(p.endpoint) {
            true
        } else {
            self.prq
                .open_host(p.endpoint, p.group_id, p.pasid, Instant::now())
                .is_err()
        };
        if refused {
            self.stats.page_requests.refused += 1;
            if p.last {
                self.complete_failed(p.endpoint, p.group_id, p.pasid, Origin::Host);
            }
            return false;
        }
        self.stats.page_requests.raised += 1;
        true
    }

    /// Device reset: every outstanding group is completed with FAILURE.
    pub(super) fn fail_all_page_requests(&mut self) {
        for ((ep, gid), g) in self.prq.drain() {
            self.complete_failed(ep, gid, g.pasid, g.origin);
        }
    }
}
