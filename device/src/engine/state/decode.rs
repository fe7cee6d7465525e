//! Reads the stream of PROTOCOL.md §12 into a [`SavedState`], every read bounded.

use core::time::Duration;

use virtio_iommu_spec::ext::TableFormat;
use virtio_iommu_spec::probe::ResvMemSubtype;
use virtio_iommu_spec::request::Request;
use virtio_iommu_spec::{Event, Features, RequestType, Status};

use super::cursor::Cursor;
use super::format::{
    self, CHECKSUM_LEN, DEVICE_FIXED_LEN, DOMAIN_BYPASS, DOMAIN_FIXED_LEN, ENDPOINT_LEN, EVENT_LEN,
    FORMAT_LEN, GROUP_LEN, GROUP_PASID, HEADER_LEN, MAGIC, MAPPING_LEN, MAX_STATE_BYTES,
    PRQ_FIXED_LEN, RANGE_FIXED_LEN, REGION_LEN, SECTIONS, SECTION_HEADER_LEN, TABLE_LEN, VERSION,
};
use super::saved_group::SavedGroup;
use super::saved_state::SavedState;
use super::state_error::StateError;
use crate::engine::dump::{DomainDump, MappingDump};
use crate::engine::engine_config::{EndpointConfig, EngineConfig, Limits};
use crate::engine::event_queue::EventCounters;
use crate::engine::prq::PageRequestCounters;
use crate::engine::stats::RequestStats;
use crate::host::ReservedRegion;

fn usize_of(v: u64, section: &'static str, what: &str) -> Result<usize, StateError> {
    usize::try_from(v).map_err(|_| StateError::invalid(section, format!("{what} {v} is too large")))
}

pub(super) fn decode(bytes: &[u8]) -> Result<SavedState, StateError> {
    if bytes.len() > MAX_STATE_BYTES {
        return Err(StateError::TooLong {
            len: bytes.len(),
            max: MAX_STATE_BYTES,
        });
    }
    let mut c = Cursor::new(bytes, "header");
    let magic = c.magic()?;
    if magic != MAGIC {
        return Err(StateError::BadMagic(magic));
    }
    let version = c.u32()?;
    if version != VERSION {
        return Err(StateError::Version {
            found: version,
            supported: VERSION,
        });
    }
    c.reserved(4)?;
    let declared = c.u64()?;
    if usize::try_from(declared).ok() != Some(bytes.len()) {
        return Err(StateError::Length {
            declared,
            actual: bytes.len(),
        });
    }
    // The header was read whole, so the stream is at least that long.
    c.expect(4).map_err(|_| StateError::Truncated {
        section: "checksum",
        need: 4,
        left: c.left(),
    })?;
    let (body, crc) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    let found = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32fast::hash(body);
    if found != computed {
        return Err(StateError::Checksum { found, computed });
    }

    let mut c = Cursor::new(&body[HEADER_LEN..], "sections");
    let mut dev = section(&mut c, 0)?;
    let (config, offered, negotiated, bypass) = device(&mut dev)?;
    dev.finish()?;
    let mut cnt = section(&mut c, 1)?;
    let (requests, event_counters, page_request_counters) = counters(&mut cnt)?;
    cnt.finish()?;
    let mut dom = section(&mut c, 2)?;
    let domains = domains(&mut dom)?;
    dom.finish()?;
    let mut tab = section(&mut c, 3)?;
    let tables = tables(&mut tab)?;
    tab.finish()?;
    let mut prq = section(&mut c, 4)?;
    let (next_group_id, stopped_endpoints, groups) = page_requests(&mut prq)?;
    prq.finish()?;
    let mut ev = section(&mut c, 5)?;
    let events = events(&mut ev)?;
    ev.finish()?;
    c.finish()?;
    Ok(SavedState {
        config,
        offered,
        negotiated,
        bypass,
        requests,
        event_counters,
        page_request_counters,
        domains,
        tables,
        next_group_id,
        stopped_endpoints,
        groups,
        events,
    })
}

/// The payload of section `SECTIONS[i]`, which must come next.
fn section<'a>(c: &mut Cursor<'a>, i: usize) -> Result<Cursor<'a>, StateError> {
    let (id, name) = SECTIONS[i];
    c.expect(SECTION_HEADER_LEN)
        .map_err(|_| StateError::Truncated {
            section: name,
            need: SECTION_HEADER_LEN,
            left: c.left(),
        })?;
    let found = c.u32()?;
    if found != id {
        return Err(StateError::Section {
            expected: name,
            found,
        });
    }
    c.reserved(4)?;
    let len = c.u64()?;
    let payload = c.take(len).map_err(|_| StateError::Truncated {
        section: name,
        need: len,
        left: c.left(),
    })?;
    Ok(Cursor::new(payload, name))
}

fn device(c: &mut Cursor<'_>) -> Result<(EngineConfig, Features, Features, bool), StateError> {
    const S: &str = "DEVICE";
    c.expect(DEVICE_FIXED_LEN)?;
    let page_size_mask = c.u64()?;
    let input_range = (c.u64()?, c.u64()?);
    let domain_range = (c.u32()?, c.u32()?);
    let probe_size = c.u32()?;
    let boot_bypass = c.flag("boot_bypass")?;
    let bypass = c.flag("bypass")?;
    c.reserved(2)?;
    let features = |v: u64, what: &str| {
        Features::from_bits(v).ok_or_else(|| {
            StateError::invalid(S, format!("{what} features {v:#x} have unknown bits"))
        })
    };
    let offered = features(c.u64()?, "offered")?;
    let negotiated = features(c.u64()?, "negotiated")?;
    let max_mappings_per_domain = usize_of(c.u64()?, S, "max_mappings_per_domain")?;
    let max_domains = usize_of(c.u64()?, S, "max_domains")?;
    let max_attached_endpoints = usize_of(c.u64()?, S, "max_attached_endpoints")?;
    let max_pending_events = usize_of(c.u64()?, S, "max_pending_events")?;
    let max_page_request_groups = c.u32()?;
    c.reserved(4)?;
    let max_page_request_groups_total = usize_of(c.u64()?, S, "max_page_request_groups_total")?;
    let page_request_timeout = Duration::from_micros(c.u64()?);
    let max_mappings_total = usize_of(c.u64()?, S, "max_mappings_total")?;
    let max_tables = usize_of(c.u64()?, S, "max_tables")?;
    let n = c.u32()?;
    c.reserved(4)?;
    let n = c.count(u64::from(n), RANGE_FIXED_LEN)?;
    let mut endpoints = Vec::with_capacity(n);
    for _ in 0..n {
        let first = c.u32()?;
        let last = c.u32()?;
        let pasid_bits = c.u8()?;
        let page_requests = c.flag("page_requests")?;
        let n_formats = c.u16()?;
        let n_regions = c.u32()?;
        let n_formats = c.count(u64::from(n_formats), FORMAT_LEN)?;
        let mut table_formats = Vec::with_capacity(n_formats);
        for _ in 0..n_formats {
            let code = c.u16()?;
            table_formats.push(
                TableFormat::try_from(code)
                    .map_err(|_| StateError::invalid(S, format!("unknown table format {code}")))?,
            );
        }
        let n_regions = c.count(u64::from(n_regions), REGION_LEN)?;
        let mut reserved = Vec::with_capacity(n_regions);
        for _ in 0..n_regions {
            let start = c.u64()?;
            let last = c.u64()?;
            let kind = c.u8()?;
            c.reserved(7)?;
            let kind = ResvMemSubtype::try_from(kind).map_err(|_| {
                StateError::invalid(S, format!("unknown reserved-region kind {kind}"))
            })?;
            reserved.push(ReservedRegion { start, last, kind });
        }
        endpoints.push(EndpointConfig {
            ids: first..=last,
            reserved,
            pasid_bits,
            page_requests,
            table_formats,
        });
    }
    let config = EngineConfig {
        page_size_mask,
        input_range,
        domain_range,
        probe_size,
        boot_bypass,
        endpoints,
        limits: Limits {
            max_mappings_per_domain,
            max_mappings_total,
            max_tables,
            max_domains,
            max_attached_endpoints,
            max_pending_events,
            max_page_request_groups,
            max_page_request_groups_total,
            page_request_timeout,
        },
        offer_mmio: offered.contains(Features::MMIO),
        offer_attach_table: offered.contains(Features::ATTACH_TABLE),
        offer_page_request: offered.contains(Features::PAGE_REQUEST),
    };
    Ok((config, offered, negotiated, bypass))
}

fn counters(
    c: &mut Cursor<'_>,
) -> Result<(RequestStats, EventCounters, PageRequestCounters), StateError> {
    let n = c.u32()?;
    c.reserved(4)?;
    if n != format::COUNTER_COUNT {
        return Err(StateError::invalid(
            "COUNTERS",
            format!("{n} counters, not {}", format::COUNTER_COUNT),
        ));
    }
    let mut requests = RequestStats::default();
    for t in RequestType::ALL {
        let rc = requests.of_mut(t);
        for st in Status::ALL {
            *rc.get_mut(st) = c.u64()?;
        }
        rc.no_reply = c.u64()?;
    }
    requests.unknown_type = c.u64()?;
    let events = EventCounters {
        queued: c.u64()?,
        delivered: c.u64()?,
        dropped: c.u64()?,
        page_requests_failed: c.u64()?,
    };
    let prq = PageRequestCounters {
        raised: c.u64()?,
        success: c.u64()?,
        invalid: c.u64()?,
        failure: c.u64()?,
        timed_out: c.u64()?,
        refused: c.u64()?,
        outstanding: 0,
    };
    Ok((requests, events, prq))
}

fn domains(c: &mut Cursor<'_>) -> Result<Vec<DomainDump>, StateError> {
    const S: &str = "DOMAINS";
    let n = c.u32()?;
    c.reserved(4)?;
    let n = c.count(u64::from(n), DOMAIN_FIXED_LEN)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let id = c.u32()?;
        let flags = c.u32()?;
        if flags & !DOMAIN_BYPASS != 0 {
            return Err(StateError::invalid(
                S,
                format!("domain {id}: unknown flags {flags:#x}"),
            ));
        }
        let n_eps = c.u32()?;
        c.reserved(4)?;
        let n_maps = c.u64()?;
        let n_eps = c.count(u64::from(n_eps), ENDPOINT_LEN)?;
        let mut endpoints = Vec::with_capacity(n_eps);
        for _ in 0..n_eps {
            endpoints.push(c.u32()?);
        }
        let n_maps = c.count(n_maps, MAPPING_LEN)?;
        let mut mappings = Vec::with_capacity(n_maps);
        for _ in 0..n_maps {
            mappings.push(MappingDump {
                virt_start: c.u64()?,
                virt_last: c.u64()?,
                phys_start: c.u64()?,
                flags: c.u32()?,
            });
        }
        out.push(DomainDump {
            id,
            bypass: flags & DOMAIN_BYPASS != 0,
            endpoints,
            mappings,
        });
    }
    Ok(out)
}

fn tables(c: &mut Cursor<'_>) -> Result<Vec<virtio_iommu_spec::request::AttachTable>, StateError> {
    const S: &str = "TABLES";
    let n = c.u32()?;
    c.reserved(4)?;
    let n = c.count(u64::from(n), TABLE_LEN)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let raw = c.take(TABLE_LEN)?;
        let req =
            Request::parse(raw).map_err(|e| StateError::invalid(S, format!("table {i}: {e}")))?;
        let Request::AttachTable(t) = req else {
            return Err(StateError::invalid(
                S,
                format!("table {i} is not an ATTACH_TABLE"),
            ));
        };
        // One encoding per table: reserved bits and fields the format ignores are zero.
        if Request::AttachTable(t).encode().as_bytes() != raw {
            return Err(StateError::invalid(
                S,
                format!(
                    "table {i} of endpoint {} is not in canonical form",
                    t.endpoint
                ),
            ));
        }
        out.push(t);
    }
    Ok(out)
}

type PageRequestState = (u16, Vec<u32>, Vec<SavedGroup>);

fn page_requests(c: &mut Cursor<'_>) -> Result<PageRequestState, StateError> {
    const S: &str = "PAGE_REQUESTS";
    c.expect(PRQ_FIXED_LEN)?;
    let next_id = c.u16()?;
    c.reserved(2)?;
    let n_stopped = c.u32()?;
    let n_groups = c.u32()?;
    c.reserved(4)?;
    let n_stopped = c.count(u64::from(n_stopped), ENDPOINT_LEN)?;
    let mut stopped = Vec::with_capacity(n_stopped);
    for _ in 0..n_stopped {
        stopped.push(c.u32()?);
    }
    let n_groups = c.count(u64::from(n_groups), GROUP_LEN)?;
    let mut groups = Vec::with_capacity(n_groups);
    for _ in 0..n_groups {
        let endpoint = c.u32()?;
        let group_id = c.u16()?;
        let flags = c.u16()?;
        let pasid = c.u32()?;
        c.reserved(4)?;
        let remaining = Duration::from_micros(c.u64()?);
        if flags & !GROUP_PASID != 0 || (flags & GROUP_PASID == 0 && pasid != 0) {
            return Err(StateError::invalid(
                S,
                format!("group {group_id} of endpoint {endpoint}: flags {flags:#x}, PASID {pasid}"),
            ));
        }
        groups.push(SavedGroup {
            endpoint,
            group_id,
            pasid: (flags & GROUP_PASID != 0).then_some(pasid),
            remaining,
        });
    }
    Ok((next_id, stopped, groups))
}

fn events(c: &mut Cursor<'_>) -> Result<Vec<Event>, StateError> {
    const S: &str = "EVENTS";
    let n = c.u32()?;
    c.reserved(4)?;
    let n = c.count(u64::from(n), EVENT_LEN)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let raw = c.take(EVENT_LEN)?;
        let e = Event::parse(raw).map_err(|e| StateError::invalid(S, format!("event {i}: {e}")))?;
        let canonical = match &e {
            Event::Fault(f) => f.encode_ext(),
            Event::PageRequest(p) => p.encode(),
        };
        if canonical.as_slice() != raw {
            return Err(StateError::invalid(
                S,
                format!("event {i} is not in canonical form"),
            ));
        }
        out.push(e);
    }
    Ok(out)
}
