//! Writes a [`SavedState`] as the stream of PROTOCOL.md §12.

use core::time::Duration;

use virtio_iommu_spec::request::Request;
use virtio_iommu_spec::{Event, RequestType, Status};

use super::format::{self, DOMAIN_BYPASS, GROUP_PASID, MAGIC, VERSION};
use super::saved_state::SavedState;
use super::writer::Writer;

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn usize64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

pub(super) fn encode(s: &SavedState) -> Vec<u8> {
    let mappings: usize = s.domains.iter().map(|d| d.mappings.len()).sum();
    let mut w = Writer::with_capacity(4096 + mappings * 28);
    w.bytes(&MAGIC);
    w.u32(VERSION);
    w.u32(0);
    let length_at = w.position();
    w.u64(0);

    let at = w.begin_section(format::DEVICE);
    device(&mut w, s);
    w.end_section(at);

    let at = w.begin_section(format::COUNTERS);
    counters(&mut w, s);
    w.end_section(at);

    let at = w.begin_section(format::DOMAINS);
    w.count32(s.domains.len());
    for d in &s.domains {
        w.u32(d.id);
        w.u32(if d.bypass { DOMAIN_BYPASS } else { 0 });
        w.u32(u32::try_from(d.endpoints.len()).unwrap_or(u32::MAX));
        w.u32(0);
        w.len64(d.mappings.len());
        for ep in &d.endpoints {
            w.u32(*ep);
        }
        for m in &d.mappings {
            w.u64(m.virt_start);
            w.u64(m.virt_last);
            w.u64(m.phys_start);
            w.u32(m.flags);
        }
    }
    w.end_section(at);

    let at = w.begin_section(format::TABLES);
    w.count32(s.tables.len());
    for t in &s.tables {
        w.bytes(Request::AttachTable(*t).encode().as_bytes());
    }
    w.end_section(at);

    let at = w.begin_section(format::PAGE_REQUESTS);
    w.u16(s.next_group_id);
    w.u16(0);
    w.u32(u32::try_from(s.stopped_endpoints.len()).unwrap_or(u32::MAX));
    w.u32(u32::try_from(s.groups.len()).unwrap_or(u32::MAX));
    w.u32(0);
    for ep in &s.stopped_endpoints {
        w.u32(*ep);
    }
    for g in &s.groups {
        w.u32(g.endpoint);
        w.u16(g.group_id);
        w.u16(if g.pasid.is_some() { GROUP_PASID } else { 0 });
        w.u32(g.pasid.unwrap_or(0));
        w.u32(0);
        w.u64(micros(g.remaining));
    }
    w.end_section(at);

    let at = w.begin_section(format::EVENTS);
    w.count32(s.events.len());
    for e in &s.events {
        match e {
            Event::Fault(f) => w.bytes(&f.encode_ext()),
            Event::PageRequest(p) => w.bytes(&p.encode()),
        }
    }
    w.end_section(at);

    w.seal(length_at)
}

fn device(w: &mut Writer, s: &SavedState) {
    let c = &s.config;
    w.u64(c.page_size_mask);
    w.u64(c.input_range.0);
    w.u64(c.input_range.1);
    w.u32(c.domain_range.0);
    w.u32(c.domain_range.1);
    w.u32(c.probe_size);
    w.u8(u8::from(c.boot_bypass));
    w.u8(u8::from(s.bypass));
    w.u16(0);
    w.u64(s.offered.bits());
    w.u64(s.negotiated.bits());
    let l = &c.limits;
    w.u64(usize64(l.max_mappings_per_domain));
    w.u64(usize64(l.max_domains));
    w.u64(usize64(l.max_attached_endpoints));
    w.u64(usize64(l.max_pending_events));
    w.u32(l.max_page_request_groups);
    w.u32(0);
    w.u64(usize64(l.max_page_request_groups_total));
    w.u64(micros(l.page_request_timeout));
    w.count32(c.endpoints.len());
    for ep in &c.endpoints {
        w.u32(*ep.ids.start());
        w.u32(*ep.ids.end());
        w.u8(ep.pasid_bits);
        w.u8(u8::from(ep.page_requests));
        w.u16(u16::try_from(ep.table_formats.len()).unwrap_or(u16::MAX));
        w.u32(u32::try_from(ep.reserved.len()).unwrap_or(u32::MAX));
        for f in &ep.table_formats {
            w.u16(f.code());
        }
        for r in &ep.reserved {
            w.u64(r.start);
            w.u64(r.last);
            w.u8(r.kind.code());
            w.bytes(&[0; 7]);
        }
    }
}

fn counters(w: &mut Writer, s: &SavedState) {
    w.count32(format::COUNTER_COUNT as usize);
    for t in RequestType::ALL {
        let c = s.requests.of(t);
        for st in Status::ALL {
            w.u64(c.get(st));
        }
        w.u64(c.no_reply);
    }
    w.u64(s.requests.unknown_type);
    let e = &s.event_counters;
    for v in [e.queued, e.delivered, e.dropped, e.page_requests_failed] {
        w.u64(v);
    }
    let p = &s.page_request_counters;
    for v in [
        p.raised,
        p.success,
        p.invalid,
        p.failure,
        p.timed_out,
        p.refused,
    ] {
        w.u64(v);
    }
}
