//! DMA of a simulated device through the IOMMU: the control socket's `translate`,
//! `dma-read` and `dma-write`, and the tests' simulated endpoints. Shipped (the control socket
//! documents it) but apart from the request path: nothing here runs for a guest request.
//!
//! [`DeviceDma::start`] copies piece by piece through the host's translation. A recoverable
//! stage-1 fault (entry not present, permission, access flag) of an endpoint with page-request
//! capability, with `F_PAGE_REQUEST` negotiated, queues a page request (one group, LAST set)
//! and parks the DMA behind a [`DmaTicket`]. The caller drops the engine lock, lets the queue
//! thread deliver the event and process PAGE_RESP, and calls [`DeviceDma::resume`]: SUCCESS
//! retries the walk from where it stopped, INVALID / FAILURE / timeout fail the DMA with an
//! unrecoverable fault (queued as an event like any other).

use std::collections::BTreeMap;
use std::time::Instant;

use log::debug;
use virtio_iommu_spec::event::{FaultFlags, FaultReason};
use virtio_iommu_spec::ext::PageRespCode;
use virtio_iommu_spec::{Event, FaultEvent, Features, PageRequest};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic};

use super::engine_config::EndpointTable;
use super::event_queue::EventQueue;
use super::prq::{Origin, PageRequests};
use super::queue_event;
use crate::host::{Access, DmaAttrs, Fault, GuestRange, HostIommu};
use crate::GuestRam;

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
    /// Waiting for a page response: call [`DeviceDma::resume`] later.
    Pending(DmaTicket),
}

/// A parked DMA.
#[derive(Debug)]
struct ParkedDma {
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
    /// The page-request group it waits on (once parked).
    group: u16,
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

/// The DMAs parked behind page requests, by ticket.
#[derive(Debug, Default)]
pub(super) struct ParkedDmas {
    parked: BTreeMap<u64, ParkedDma>,
    next: u64,
}

impl ParkedDmas {
    /// A fresh ticket. Parked translations draw from the same counter, so that the
    /// page-request groups' answers (keyed by ticket) never mix the two up.
    pub(super) fn next_ticket(&mut self) -> u64 {
        let t = self.next;
        self.next = self.next.wrapping_add(1);
        t
    }
}

/// The engine as a simulated device sees it: the parked DMAs and what a DMA goes through
/// (the host's translation, guest memory, the page-request groups and the event queue).
/// Made by [`super::Engine::device_dma`].
#[derive(Debug)]
pub struct DeviceDma<'a> {
    pub(super) parked: &'a mut ParkedDmas,
    pub(super) host: &'a mut dyn HostIommu,
    pub(super) mem: Option<&'a GuestMemoryAtomic<GuestRam>>,
    pub(super) prq: &'a mut PageRequests,
    pub(super) events: &'a mut EventQueue,
    pub(super) endpoints: &'a EndpointTable,
    pub(super) negotiated: Features,
}

fn fault_event(endpoint: u32, pasid: Option<u32>, access: Access, f: Fault) -> FaultEvent {
    FaultEvent {
        reason: f.reason,
        access: match access {
            Access::Read => FaultFlags::READ,
            Access::Write => FaultFlags::WRITE,
        },
        endpoint,
        address: Some(f.address),
        pasid,
    }
}

impl DeviceDma<'_> {
    /// Translates a DMA access of `endpoint`: the guest-physical range the first bytes reach
    /// (cut at the end of the mapping). A failure is also queued as a fault event.
    ///
    /// # Errors
    /// The fault: DOMAIN (unattached, not in bypass), MAPPING (no mapping, wrong permission,
    /// RESERVED region), UNKNOWN (not translatable for another reason).
    pub fn translate(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        iova: u64,
        len: u64,
        access: Access,
    ) -> Result<GuestRange, FaultEvent> {
        self.known(endpoint, pasid, iova, access)?;
        self.host
            .translate(endpoint, pasid, iova, len, access)
            .map_err(|f| self.fault(endpoint, pasid, access, f))
    }

    /// DMA read through the IOMMU into `buf`.
    ///
    /// # Errors
    /// As [`DeviceDma::translate`], for the first byte that failed; a translated address
    /// outside guest RAM faults with reason UNKNOWN. The fault is queued as an event.
    pub fn read(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        iova: u64,
        buf: &mut [u8],
    ) -> Result<(), FaultEvent> {
        self.known(endpoint, pasid, iova, Access::Read)?;
        self.host
            .dma_read(endpoint, pasid, iova, buf)
            .map_err(|f| self.fault(endpoint, pasid, Access::Read, f))
    }

    /// DMA write of `data` through the IOMMU.
    ///
    /// # Errors
    /// As [`DeviceDma::read`].
    pub fn write(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        iova: u64,
        data: &[u8],
    ) -> Result<(), FaultEvent> {
        self.known(endpoint, pasid, iova, Access::Write)?;
        self.host
            .dma_write(endpoint, pasid, iova, data)
            .map_err(|f| self.fault(endpoint, pasid, Access::Write, f))
    }

    /// Starts a DMA that may wait for page requests. Returns `Done` or `Fault` at once, or
    /// `Pending` when it waits for a page response; nothing is parked unless it returns
    /// `Pending`.
    pub fn start(&mut self, req: DmaRequest, now: Instant) -> DmaOutcome {
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
            group: 0,
        };
        if let Err(mut f) = self.known(d.endpoint, d.pasid, d.iova, d.access()) {
            f.access = d.flags();
            return DmaOutcome::Fault(f);
        }
        self.run(d, now)
    }

    /// Moves a parked DMA on: still `Pending` while its group is outstanding and not past its
    /// deadline (past it, the device completes the group with FAILURE itself); after SUCCESS
    /// the DMA continues (and may park again); after INVALID or FAILURE it faults. `None` for a
    /// ticket that is not parked (finished, cancelled, or never issued).
    pub fn resume(&mut self, ticket: DmaTicket, now: Instant) -> Option<DmaOutcome> {
        let d = self.parked.parked.remove(&ticket.0)?;
        Some(match self.prq.take_answer(ticket.0) {
            Some(PageRespCode::Success) => self.run(d, now),
            Some(_) => self.fail(&d),
            None => match self.prq.get(d.endpoint, d.group) {
                Some(g) if now < g.deadline => {
                    self.parked.parked.insert(ticket.0, d);
                    DmaOutcome::Pending(ticket)
                }
                _ => {
                    self.prq
                        .time_out(self.host, self.events, d.endpoint, d.group);
                    self.prq.take_answer(ticket.0);
                    self.fail(&d)
                }
            },
        })
    }

    /// Gives up on a parked DMA: its outstanding group, if any, is completed (a later PAGE_RESP
    /// for it is stale) and its page request withdrawn if not yet delivered.
    pub fn cancel(&mut self, ticket: DmaTicket) {
        if let Some(d) = self.parked.parked.remove(&ticket.0) {
            // Without an answer the group is still outstanding.
            if self.prq.take_answer(ticket.0).is_none() {
                self.prq.take(d.endpoint, d.group);
                self.events.remove_page_request(d.endpoint, d.group);
            }
        }
    }

    /// DMAs parked behind page requests.
    #[must_use]
    pub fn parked(&self) -> usize {
        self.parked.parked.len()
    }

    /// Queues a fault of this DMA for the driver.
    fn fault(&mut self, endpoint: u32, pasid: Option<u32>, access: Access, f: Fault) -> FaultEvent {
        let ev = fault_event(endpoint, pasid, access, f);
        self.push(Event::Fault(ev));
        ev
    }

    fn push(&mut self, e: Event) {
        queue_event(self.events, self.prq, self.host, e);
    }

    /// Checks an endpoint ID before DMA. An ID outside the configured endpoints is not behind
    /// this IOMMU: the access fails with reason UNKNOWN and no event is queued (the driver
    /// could not name the endpoint anyway).
    fn known(
        &self,
        endpoint: u32,
        pasid: Option<u32>,
        iova: u64,
        access: Access,
    ) -> Result<(), FaultEvent> {
        if self.endpoints.find(endpoint).is_some() {
            return Ok(());
        }
        let f = Fault {
            reason: FaultReason::Unknown,
            address: iova,
        };
        Err(fault_event(endpoint, pasid, access, f))
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
    fn run(&mut self, mut d: ParkedDma, now: Instant) -> DmaOutcome {
        let guard = self.mem.map(GuestAddressSpace::memory);
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
                        self.prq.count_refused();
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
        if d.requests >= PAGE_REQUESTS_PER_PAGE || self.parked() >= self.prq.max_total() {
            self.prq.count_refused();
            return self.dma_fault(&d, fault.reason, fault.address);
        }
        let ticket = self.parked.next;
        let gid = match self.prq.open(d.endpoint, d.pasid, Origin::Dma(ticket), now) {
            Ok(g) => g,
            Err(why) => {
                debug!("endpoint {}: page request refused: {why}", d.endpoint);
                self.prq.count_refused();
                return self.dma_fault(&d, fault.reason, fault.address);
            }
        };
        self.parked.next = self.parked.next.wrapping_add(1);
        d.requests += 1;
        d.group = gid;
        let pr = PageRequest {
            endpoint: d.endpoint,
            pasid: d.pasid,
            address: fault.address & !PAGE_MASK,
            access: d.flags(),
            group_id: gid,
            last: true,
            private_data: None,
        };
        self.parked.parked.insert(ticket, d);
        self.prq.count_raised();
        self.push(Event::PageRequest(pr));
        DmaOutcome::Pending(DmaTicket(ticket))
    }

    fn fail(&mut self, d: &ParkedDma) -> DmaOutcome {
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
        self.push(Event::Fault(ev));
        DmaOutcome::Fault(ev)
    }
}
