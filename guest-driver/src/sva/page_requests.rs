//! Page requests: answering them (PAGE_RESP) and draining the event queue, one answer per
//! group after its LAST request.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use virtio_drivers::transport::Transport;
use virtio_drivers::Hal;
use virtio_iommu_spec::ext::PageRespCode;
use virtio_iommu_spec::request::PageResp;
use virtio_iommu_spec::{Event, FaultEvent, PageRequest};

use crate::device::VirtIOIommu;
use crate::error::Error;
use crate::ratelimit::{limited_warn, RateLimit};

/// Groups [`PageRequestGroups`] tracks at most (PCIe allows 512 per function).
pub const MAX_PENDING_GROUPS: usize = 1024;
/// Events [`VirtIOIommu::handle_page_requests`] consumes per call at most.
pub const MAX_EVENTS_PER_CALL: usize = 256;

/// The PAGE_RESP answering `req`'s group: same endpoint, group and (if it had one) PASID.
#[must_use]
pub fn response_for(req: &PageRequest, code: PageRespCode) -> PageResp {
    PageResp {
        endpoint: req.endpoint,
        pasid: req.pasid,
        group_id: req.group_id,
        code,
    }
}

/// The worse of two codes: `Failure` over `Invalid` over `Success`.
fn worse(a: PageRespCode, b: PageRespCode) -> PageRespCode {
    if (b as u16) > (a as u16) {
        b
    } else {
        a
    }
}

/// Page-request groups whose LAST request has not arrived yet, with the worst resolution of
/// their requests so far. Keep one per driver and pass it to every
/// [`handle_page_requests`](VirtIOIommu::handle_page_requests) call: a group may span calls.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PageRequestGroups {
    /// By (endpoint, group ID): group IDs are scoped to the endpoint.
    pending: BTreeMap<(u32, u16), PageRespCode>,
    /// Groups not tracked because [`MAX_PENDING_GROUPS`] were pending.
    untracked: RateLimit,
    /// PAGE_RESPs the device refused.
    refused: RateLimit,
}

impl PageRequestGroups {
    /// No pending groups.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Groups waiting for their LAST request.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Warnings about these groups (untracked groups, refused PAGE_RESPs) that the rate
    /// limiter held back: the device decides how often they happen.
    #[must_use]
    pub fn suppressed_warnings(&self) -> u64 {
        self.untracked
            .suppressed()
            .saturating_add(self.refused.suppressed())
    }

    /// Records how `req` was resolved. Returns the group's response once `req` is its LAST
    /// request: the worst code of all its requests. With [`MAX_PENDING_GROUPS`] groups
    /// pending, a new group is not tracked and is answered with its LAST request's code.
    pub fn record(&mut self, req: &PageRequest, code: PageRespCode) -> Option<PageResp> {
        let key = (req.endpoint, req.group_id);
        if req.last {
            let code = self.pending.remove(&key).map_or(code, |c| worse(c, code));
            return Some(response_for(req, code));
        }
        if let Some(c) = self.pending.get_mut(&key) {
            *c = worse(*c, code);
        } else if self.pending.len() < MAX_PENDING_GROUPS {
            self.pending.insert(key, code);
        } else {
            limited_warn!(
                self.untracked,
                "too many pending page-request groups; not tracking group {} of endpoint {}",
                req.group_id,
                req.endpoint
            );
        }
        None
    }
}

/// What one [`handle_page_requests`](VirtIOIommu::handle_page_requests) call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drained {
    /// Unrecoverable faults, in arrival order.
    pub faults: Vec<FaultEvent>,
    /// PAGE_RESPs the device accepted, in the order sent.
    pub responses: Vec<PageResp>,
    /// PAGE_RESPs the device refused (e.g. `S_NOENT` for a group it had already failed).
    pub failed_responses: Vec<(PageResp, Error)>,
    /// Malformed event records dropped ([`Error::MalformedEvent`]; the drain went on).
    pub malformed_events: usize,
    /// The call stopped after [`MAX_EVENTS_PER_CALL`] events: call again.
    pub more: bool,
}

impl<H: Hal, T: Transport> VirtIOIommu<H, T> {
    /// Answers `req`'s page-request group with PAGE_RESP (endpoint, group ID, and the PASID
    /// if the request had one). Answer each group once, after its LAST request.
    ///
    /// # Errors
    /// [`Error::NotNegotiated`] without `F_PAGE_REQUEST`, or the device's status.
    pub fn respond(&mut self, req: &PageRequest, code: PageRespCode) -> Result<(), Error> {
        self.page_response(&response_for(req, code))
    }

    /// Drains the event queue: calls `resolver` on every page request (it may map pages and
    /// send INVALIDATE through the driver it is given, but must not poll events), answers
    /// each group once after its LAST request with the worst code of its requests, and
    /// returns the unrecoverable faults. Stops when the queue is empty or after
    /// [`MAX_EVENTS_PER_CALL`] events ([`Drained::more`]).
    ///
    /// # Errors
    /// Event-queue errors (used-ring corruption). A refused PAGE_RESP is not an error; it
    /// is reported in [`Drained::failed_responses`]. Nor is a malformed record: it is counted
    /// in [`Drained::malformed_events`] and the drain continues.
    pub fn handle_page_requests<F>(
        &mut self,
        groups: &mut PageRequestGroups,
        mut resolver: F,
    ) -> Result<Drained, Error>
    where
        F: FnMut(&mut Self, &PageRequest) -> PageRespCode,
    {
        let mut out = Drained::default();
        for _ in 0..MAX_EVENTS_PER_CALL {
            let event = match self.poll_event() {
                Ok(Some(event)) => event,
                Ok(None) => return Ok(out),
                Err(Error::MalformedEvent { .. }) => {
                    out.malformed_events += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match event {
                Event::Fault(f) => out.faults.push(f),
                Event::PageRequest(req) => {
                    let code = resolver(self, &req);
                    if let Some(resp) = groups.record(&req, code) {
                        match self.page_response(&resp) {
                            Ok(()) => out.responses.push(resp),
                            Err(e) => {
                                limited_warn!(groups.refused, "PAGE_RESP {resp:?} refused: {e}");
                                out.failed_responses.push((resp, e));
                            }
                        }
                    }
                }
            }
        }
        out.more = true;
        Ok(out)
    }
}
