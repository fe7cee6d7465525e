//! Counters: requests per type and status, events, and the current size of the state.

use serde::Serialize;
use virtio_iommu_spec::{RequestType, Status};

use super::event_queue::EventCounters;
use super::prq::PageRequestCounters;

/// Completions of one request type, by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RequestCounters {
    /// S_OK.
    pub ok: u64,
    /// S_IOERR.
    pub ioerr: u64,
    /// S_UNSUPP.
    pub unsupp: u64,
    /// S_DEVERR.
    pub deverr: u64,
    /// S_INVAL.
    pub inval: u64,
    /// S_RANGE.
    pub range: u64,
    /// S_NOENT.
    pub noent: u64,
    /// S_FAULT.
    pub fault: u64,
    /// S_NOMEM.
    pub nomem: u64,
    /// Returned with used length 0 (feature not negotiated, writable part under 4 bytes).
    pub no_reply: u64,
}

impl RequestCounters {
    /// The counter of `status`.
    #[must_use]
    pub fn get(&self, status: Status) -> u64 {
        match status {
            Status::Ok => self.ok,
            Status::IoErr => self.ioerr,
            Status::Unsupp => self.unsupp,
            Status::DevErr => self.deverr,
            Status::Inval => self.inval,
            Status::Range => self.range,
            Status::NoEnt => self.noent,
            Status::Fault => self.fault,
            Status::NoMem => self.nomem,
        }
    }

    fn bump(&mut self, status: Status) {
        *self.get_mut(status) += 1;
    }

    /// The counter of `status`, to write (a saved state restores them).
    pub(super) fn get_mut(&mut self, status: Status) -> &mut u64 {
        match status {
            Status::Ok => &mut self.ok,
            Status::IoErr => &mut self.ioerr,
            Status::Unsupp => &mut self.unsupp,
            Status::DevErr => &mut self.deverr,
            Status::Inval => &mut self.inval,
            Status::Range => &mut self.range,
            Status::NoEnt => &mut self.noent,
            Status::Fault => &mut self.fault,
            Status::NoMem => &mut self.nomem,
        }
    }

    /// Requests of this type completed with any status.
    #[must_use]
    pub fn replied(&self) -> u64 {
        Status::ALL.iter().map(|s| self.get(*s)).sum()
    }
}

/// Completions per request type, as the engine counts them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RequestStats {
    /// ATTACH.
    pub attach: RequestCounters,
    /// DETACH.
    pub detach: RequestCounters,
    /// MAP.
    pub map: RequestCounters,
    /// UNMAP.
    pub unmap: RequestCounters,
    /// PROBE.
    pub probe: RequestCounters,
    /// ATTACH_TABLE.
    pub attach_table: RequestCounters,
    /// INVALIDATE.
    pub invalidate: RequestCounters,
    /// PAGE_RESP.
    pub page_resp: RequestCounters,
    /// Requests returned with used length 0 because their type is unknown or missing.
    pub unknown_type: u64,
}

/// Everything [`super::Engine::stats`] reports: the request counters (flattened: the JSON has
/// them at its top level), the event and page-request counters, and the size of the state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Completions per request type.
    #[serde(flatten)]
    pub requests: RequestStats,
    /// Event queue.
    pub events: EventCounters,
    /// Page requests (vSVA).
    pub page_requests: PageRequestCounters,
    /// Live domains.
    pub domains: u64,
    /// Live mappings, all domains together.
    pub mappings: u64,
    /// Attached endpoints.
    pub attached_endpoints: u64,
    /// Guest tables bound with ATTACH_TABLE.
    pub tables: u64,
}

impl RequestStats {
    /// The counters of a request type.
    #[must_use]
    pub fn of(&self, t: RequestType) -> &RequestCounters {
        match t {
            RequestType::Attach => &self.attach,
            RequestType::Detach => &self.detach,
            RequestType::Map => &self.map,
            RequestType::Unmap => &self.unmap,
            RequestType::Probe => &self.probe,
            RequestType::AttachTable => &self.attach_table,
            RequestType::Invalidate => &self.invalidate,
            RequestType::PageResp => &self.page_resp,
        }
    }

    /// The counters of a request type, to write.
    pub(super) fn of_mut(&mut self, t: RequestType) -> &mut RequestCounters {
        match t {
            RequestType::Attach => &mut self.attach,
            RequestType::Detach => &mut self.detach,
            RequestType::Map => &mut self.map,
            RequestType::Unmap => &mut self.unmap,
            RequestType::Probe => &mut self.probe,
            RequestType::AttachTable => &mut self.attach_table,
            RequestType::Invalidate => &mut self.invalidate,
            RequestType::PageResp => &mut self.page_resp,
        }
    }

    /// Counts a completed request.
    pub(super) fn replied(&mut self, t: RequestType, status: Status) {
        self.of_mut(t).bump(status);
    }

    /// Counts a request returned without a reply.
    pub(super) fn no_reply(&mut self, t: Option<RequestType>) {
        match t {
            Some(t) => self.of_mut(t).no_reply += 1,
            None => self.unknown_type += 1,
        }
    }
}

impl Stats {
    /// The counters of a request type.
    #[must_use]
    pub fn of(&self, t: RequestType) -> &RequestCounters {
        self.requests.of(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting() {
        let mut s = RequestStats::default();
        for st in Status::ALL {
            s.replied(RequestType::Map, st);
        }
        s.replied(RequestType::Map, Status::Ok);
        s.no_reply(Some(RequestType::Probe));
        s.no_reply(None);
        assert_eq!(s.map.ok, 2);
        assert_eq!(s.map.replied(), 10);
        for st in Status::ALL {
            assert!(s.map.get(st) >= 1);
        }
        assert_eq!(s.of(RequestType::Probe).no_reply, 1);
        assert_eq!(s.of(RequestType::Probe).replied(), 0);
        assert_eq!(s.unknown_type, 1);
        assert_eq!(s.attach, RequestCounters::default());
    }
}
