//! TRANSLATE of the translation service (spec/TRANSLATION.md §3): what a device backend's
//! access to an endpoint's IOVA reaches, as ranges it may cache.
//!
//! Requests without PASID are answered from the engine's own state (the domain's mappings,
//! bypass, the endpoint's reserved regions), so they work whatever the host, and each range is
//! a whole mapping. PASID spaces, and endpoints whose requests without PASID go through an
//! SMMUv3 CD table, need the host's walk of the guest tables (the emulated host); a range is
//! then one stage-1 page. A recoverable stage-1 fault raises a page request and parks the
//! translation behind a [`DmaTicket`], exactly as [`super::DeviceDma`] parks a DMA; the
//! caller polls [`DeviceTranslate::resume`] without the engine lock.

use std::collections::BTreeMap;
use std::time::Instant;

use virtio_iommu_spec::event::{FaultFlags, FaultReason};
use virtio_iommu_spec::ext::PageRespCode;
use virtio_iommu_spec::probe::ResvMemSubtype;
use virtio_iommu_spec::request::MapFlags;
use virtio_iommu_spec::translation::{TranslatedRange, TranslatedRanges};
use virtio_iommu_spec::{Event, FaultEvent, Features, PageRequest};

use super::device_dma::{ParkedDmas, PAGE_REQUESTS_PER_PAGE};
use super::domain::{Domains, Route};
use super::engine_config::{EndpointConfig, EndpointTable};
use super::event_queue::EventQueue;
use super::prq::{Origin, PageRequests};
use super::queue_event;
use super::DmaTicket;
use crate::host::{Access, DmaAttrs, HostIommu, TranslateFault};

/// The smallest stage-1 page: PASID ranges start and end on it.
const PAGE_MASK: u64 = 0xfff;

/// One access to translate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TranslateAccess {
    /// Endpoint ID.
    pub endpoint: u32,
    /// PASID, if the access carries one.
    pub pasid: Option<u32>,
    /// First byte.
    pub iova: u64,
    /// Last byte, inclusive (at least `iova`).
    pub last: u64,
    /// The access reads.
    pub read: bool,
    /// The access writes.
    pub write: bool,
    /// Privileged / exec attributes.
    pub attrs: DmaAttrs,
    /// A probe: a failure is not reported to the guest and raises no page request.
    pub no_fault: bool,
}

impl TranslateAccess {
    fn flags(&self) -> FaultFlags {
        let mut f = FaultFlags::empty();
        f.set(FaultFlags::READ, self.read);
        f.set(FaultFlags::WRITE, self.write);
        f.set(FaultFlags::EXEC, self.attrs.exec);
        f.set(FaultFlags::PRIV, self.attrs.privileged);
        f
    }

    fn permits(&self, perm: MapFlags) -> bool {
        (!self.read || perm.contains(MapFlags::READ))
            && (!self.write || perm.contains(MapFlags::WRITE))
    }

    fn perm(&self) -> MapFlags {
        let mut p = MapFlags::empty();
        p.set(MapFlags::READ, self.read);
        p.set(MapFlags::WRITE, self.write);
        p
    }
}

/// Where a translation stands.
// The ranges live inline: an outcome is built and consumed once per TRANSLATE, never stored.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TranslateOutcome {
    /// Translated: at least one range, the first containing `iova`, contiguous.
    Translated(TranslatedRanges),
    /// Not permitted (queued for the guest as an event unless `no_fault`).
    Fault(FaultEvent),
    /// Not this daemon's to translate: an endpoint outside the configured set, one the host
    /// IOMMU translates itself, or a PASID access on a host that cannot walk guest tables.
    Unsupported,
    /// Waiting for a page response: call [`DeviceTranslate::resume`] later.
    Pending(DmaTicket),
}

#[derive(Debug, Clone, Copy)]
struct Parked {
    req: TranslateAccess,
    group: u16,
    requests: u32,
    fault_addr: u64,
}

/// Translations parked behind page requests, by ticket.
#[derive(Debug, Default)]
pub(super) struct ParkedTranslations {
    parked: BTreeMap<u64, Parked>,
}

/// The engine as a translation-service client sees it. Made by
/// [`super::Engine::device_translate`].
#[derive(Debug)]
pub struct DeviceTranslate<'a> {
    pub(super) parked: &'a mut ParkedDmas,
    pub(super) translations: &'a mut ParkedTranslations,
    pub(super) domains: &'a Domains,
    pub(super) host: &'a mut dyn HostIommu,
    pub(super) prq: &'a mut PageRequests,
    pub(super) events: &'a mut EventQueue,
    pub(super) endpoints: &'a EndpointTable,
    pub(super) negotiated: Features,
    pub(super) bypass: bool,
}

fn identity(first: u64, last: u64) -> TranslatedRange {
    TranslatedRange {
        iova: first,
        last,
        paddr: first,
        perm: MapFlags::READ | MapFlags::WRITE,
    }
}

/// The range around `at` from the engine's state, or the fault reason.
fn state_range(
    route: Route<'_>,
    bypass: bool,
    ep: &EndpointConfig,
    req: &TranslateAccess,
    at: u64,
) -> Result<TranslatedRange, FaultReason> {
    let store = match route {
        Route::Bypass => return Ok(identity(0, u64::MAX)),
        Route::Unattached if bypass => return Ok(identity(0, u64::MAX)),
        Route::Unattached => return Err(FaultReason::Domain),
        Route::Mapped(store) => store,
        // Callers take the host's walk for tables.
        Route::Table => return Err(FaultReason::Unknown),
    };
    if let Some(r) = ep.reserved.iter().find(|r| r.start <= at && at <= r.last) {
        return match r.kind {
            ResvMemSubtype::Msi => Ok(identity(r.start, r.last)),
            ResvMemSubtype::Reserved => Err(FaultReason::Mapping),
        };
    }
    let m = store.lookup(at).ok_or(FaultReason::Mapping)?;
    if !req.permits(m.flags) {
        return Err(FaultReason::Mapping);
    }
    Ok(TranslatedRange {
        iova: m.virt_start,
        last: m.virt_last,
        paddr: m.phys_start,
        perm: m.flags,
    })
}

impl DeviceTranslate<'_> {
    /// Translates an access. Returns at once unless a page request was raised (`Pending`).
    pub fn start(&mut self, req: TranslateAccess, now: Instant) -> TranslateOutcome {
        if req.last < req.iova
            || self.endpoints.find(req.endpoint).is_none()
            || self.host.owns_dma(req.endpoint)
        {
            return TranslateOutcome::Unsupported;
        }
        self.run(req, 0, now)
    }

    /// Moves a parked translation on, as [`super::DeviceDma::resume`] does a DMA: `Pending`
    /// while its group is outstanding and not past its deadline; after SUCCESS it walks again
    /// (and may park again); INVALID, FAILURE or the deadline give a `MAPPING` fault. `None`
    /// for a ticket that is not parked.
    pub fn resume(&mut self, ticket: DmaTicket, now: Instant) -> Option<TranslateOutcome> {
        let p = self.translations.parked.remove(&ticket.0)?;
        Some(match self.prq.take_answer(ticket.0) {
            Some(PageRespCode::Success) => self.run(p.req, p.requests, now),
            Some(_) => self.fault(&p.req, FaultReason::Mapping, p.fault_addr),
            None => match self.prq.get(p.req.endpoint, p.group) {
                Some(g) if now < g.deadline => {
                    self.translations.parked.insert(ticket.0, p);
                    TranslateOutcome::Pending(ticket)
                }
                _ => {
                    self.prq
                        .time_out(self.host, self.events, p.req.endpoint, p.group);
                    self.prq.take_answer(ticket.0);
                    self.fault(&p.req, FaultReason::Mapping, p.fault_addr)
                }
            },
        })
    }

    /// Gives up on a parked translation (its client went away): its group, if still
    /// outstanding, is completed and its page request withdrawn if not yet delivered.
    pub fn cancel(&mut self, ticket: DmaTicket) {
        if let Some(p) = self.translations.parked.remove(&ticket.0) {
            if self.prq.take_answer(ticket.0).is_none() {
                self.prq.take(p.req.endpoint, p.group);
                self.events.remove_page_request(p.req.endpoint, p.group);
            }
        }
    }

    /// Translations parked behind page requests.
    #[must_use]
    pub fn parked(&self) -> usize {
        self.translations.parked.len()
    }

    fn run(&mut self, req: TranslateAccess, requests: u32, now: Instant) -> TranslateOutcome {
        let Some((_, ep)) = self.endpoints.find(req.endpoint) else {
            return TranslateOutcome::Unsupported;
        };
        let route = self.domains.route(req.endpoint, &*self.host);
        if req.pasid.is_some() || matches!(route, Route::Table) {
            if !self.host.walks_guest_tables() {
                return TranslateOutcome::Unsupported;
            }
            return self.walk(req, requests, now);
        }
        let mut ranges = TranslatedRanges::new();
        let mut at = req.iova;
        loop {
            match state_range(route, self.bypass, ep, &req, at) {
                Ok(r) => {
                    ranges.push(r);
                    if r.last >= req.last || ranges.is_full() {
                        break;
                    }
                    at = r.last + 1; // r.last < req.last: no overflow.
                }
                Err(reason) if ranges.as_slice().is_empty() => {
                    return self.fault(&req, reason, at);
                }
                // What follows faults: the client asks again from there and gets the fault.
                Err(_) => break,
            }
        }
        TranslateOutcome::Translated(ranges)
    }

    /// The host's walk of one piece at `at` (up to `want` bytes), for every direction the
    /// access needs; both must agree.
    fn walk_one(
        &mut self,
        req: &TranslateAccess,
        at: u64,
        want: u64,
    ) -> Result<(u64, u64), TranslateFault> {
        let mut out: Option<(u64, u64)> = None;
        let dirs = [(req.write, Access::Write), (req.read, Access::Read)];
        for (_, access) in dirs.iter().filter(|(on, _)| *on) {
            let g =
                self.host
                    .translate_ext(req.endpoint, req.pasid, at, want, *access, req.attrs)?;
            out = Some(match out {
                None => (g.gpa, g.len),
                Some((gpa, len)) if gpa == g.gpa => (gpa, len.min(g.len)),
                Some(_) => {
                    return Err(TranslateFault {
                        fault: crate::host::Fault {
                            reason: FaultReason::Unknown,
                            address: at,
                        },
                        recoverable: false,
                    })
                }
            });
        }
        // `read || write` holds for every request the service passes on.
        out.filter(|(_, len)| *len > 0).ok_or(TranslateFault {
            fault: crate::host::Fault {
                reason: FaultReason::Unknown,
                address: at,
            },
            recoverable: false,
        })
    }

    fn walk(&mut self, req: TranslateAccess, requests: u32, now: Instant) -> TranslateOutcome {
        let mut ranges = TranslatedRanges::new();
        let mut at = req.iova & !PAGE_MASK;
        // To the end of the page holding the last byte.
        let end = req.last | PAGE_MASK;
        loop {
            let want = (end - at).saturating_add(1);
            match self.walk_one(&req, at, want) {
                Ok((gpa, len)) => {
                    // Whole pages where the host gave at least one.
                    let len = if len > PAGE_MASK {
                        len & !PAGE_MASK
                    } else {
                        len
                    };
                    let last = at.saturating_add(len - 1);
                    ranges.push(TranslatedRange {
                        iova: at,
                        last,
                        paddr: gpa,
                        perm: req.perm(),
                    });
                    if last >= req.last || ranges.is_full() {
                        break;
                    }
                    at = last + 1;
                }
                Err(tf) if ranges.as_slice().is_empty() => {
                    return self.walk_fault(req, tf, requests, now);
                }
                Err(_) => break,
            }
        }
        TranslateOutcome::Translated(ranges)
    }

    fn page_requests_enabled(&self, endpoint: u32) -> bool {
        self.negotiated.contains(Features::PAGE_REQUEST)
            && self
                .endpoints
                .find(endpoint)
                .is_some_and(|(_, ep)| ep.page_requests)
            && !self.prq.stopped(endpoint)
    }

    fn walk_fault(
        &mut self,
        req: TranslateAccess,
        tf: TranslateFault,
        requests: u32,
        now: Instant,
    ) -> TranslateOutcome {
        // The walk starts at the page: the fault is at the access's first byte.
        let f = crate::host::Fault {
            address: tf.fault.address.max(req.iova),
            ..tf.fault
        };
        if !tf.recoverable || req.no_fault || !self.page_requests_enabled(req.endpoint) {
            if tf.recoverable && !req.no_fault && self.prq.stopped(req.endpoint) {
                self.prq.count_refused();
            }
            return self.fault(&req, f.reason, f.address);
        }
        let parked = self.translations.parked.len();
        if requests >= PAGE_REQUESTS_PER_PAGE || parked >= self.prq.max_total() {
            self.prq.count_refused();
            return self.fault(&req, f.reason, f.address);
        }
        let ticket = self.parked.next_ticket();
        let Ok(gid) = self
            .prq
            .open(req.endpoint, req.pasid, Origin::Dma(ticket), now)
        else {
            self.prq.count_refused();
            return self.fault(&req, f.reason, f.address);
        };
        self.translations.parked.insert(
            ticket,
            Parked {
                req,
                group: gid,
                requests: requests + 1,
                fault_addr: f.address,
            },
        );
        self.prq.count_raised();
        let pr = PageRequest {
            endpoint: req.endpoint,
            pasid: req.pasid,
            address: f.address & !PAGE_MASK,
            access: req.flags(),
            group_id: gid,
            last: true,
            private_data: None,
        };
        queue_event(self.events, self.prq, self.host, Event::PageRequest(pr));
        TranslateOutcome::Pending(DmaTicket(ticket))
    }

    fn fault(
        &mut self,
        req: &TranslateAccess,
        reason: FaultReason,
        address: u64,
    ) -> TranslateOutcome {
        let ev = FaultEvent {
            reason,
            access: req.flags(),
            endpoint: req.endpoint,
            address: Some(address),
            pasid: req.pasid,
        };
        if !req.no_fault {
            queue_event(self.events, self.prq, self.host, Event::Fault(ev));
        }
        TranslateOutcome::Fault(ev)
    }
}
