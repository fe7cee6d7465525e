//! Whether a guest could have built a saved state on this device: the rules the request
//! handlers enforce (PROTOCOL.md §6, §9), checked over the whole state before anything
//! changes, so that loading it cannot fail half-way for a reason in the stream.

use std::collections::{BTreeMap, BTreeSet};

use virtio_iommu_spec::config::granule;
use virtio_iommu_spec::request::{MapFlags, TableDesc};
use virtio_iommu_spec::{Event, Features};

use super::saved_state::SavedState;
use super::state_error::StateError;
use crate::engine::domain::{table_supported, table_valid};
use crate::engine::dump::DomainDump;
use crate::engine::Engine;

fn need(s: &SavedState, f: Features, section: &'static str, what: &str) -> Result<(), StateError> {
    if s.negotiated.contains(f) {
        Ok(())
    } else {
        let names: Vec<&str> = f.iter_names().map(|(n, _)| n).collect();
        Err(StateError::invalid(
            section,
            format!("{what} without {} negotiated", names.join("|")),
        ))
    }
}

pub(super) fn check(s: &SavedState, engine: &Engine) -> Result<(), StateError> {
    let attached = domains(s, engine)?;
    tables(s, engine, &attached)?;
    page_requests(s, engine)?;
    events(s, engine)
}

/// Returns endpoint → (domain, bypass) for the table check.
fn domains(s: &SavedState, engine: &Engine) -> Result<BTreeMap<u32, (u32, bool)>, StateError> {
    const S: &str = "DOMAINS";
    let cfg = &engine.cfg;
    let limits = &cfg.limits;
    if s.domains.len() > limits.max_domains {
        return Err(StateError::invalid(
            S,
            format!(
                "{} domains, the limit is {}",
                s.domains.len(),
                limits.max_domains
            ),
        ));
    }
    let mut attached = BTreeMap::new();
    let mut prev: Option<u32> = None;
    for d in &s.domains {
        let id = d.id;
        if prev.is_some_and(|p| p >= id) {
            return Err(StateError::invalid(
                S,
                format!("domain {id} is out of order"),
            ));
        }
        prev = Some(id);
        if id < cfg.domain_range.0 || id > cfg.domain_range.1 {
            return Err(StateError::invalid(
                S,
                format!("domain {id} is outside the domain range"),
            ));
        }
        if d.endpoints.is_empty() {
            return Err(StateError::invalid(
                S,
                format!("domain {id} has no endpoint"),
            ));
        }
        if d.bypass {
            need(
                s,
                Features::BYPASS_CONFIG,
                S,
                &format!("bypass domain {id}"),
            )?;
            if !d.mappings.is_empty() {
                return Err(StateError::invalid(
                    S,
                    format!("bypass domain {id} has mappings"),
                ));
            }
        }
        let mut configs = BTreeSet::new();
        let mut prev_ep: Option<u32> = None;
        for &ep in &d.endpoints {
            if prev_ep.is_some_and(|p| p >= ep) {
                return Err(StateError::invalid(
                    S,
                    format!("domain {id}: endpoint {ep:#x} is out of order"),
                ));
            }
            prev_ep = Some(ep);
            let Some((idx, _)) = engine.endpoints.find(ep) else {
                return Err(StateError::invalid(
                    S,
                    format!("domain {id}: endpoint {ep:#x} does not exist on this device"),
                ));
            };
            configs.insert(idx);
            if let Some((other, _)) = attached.insert(ep, (id, d.bypass)) {
                return Err(StateError::invalid(
                    S,
                    format!("endpoint {ep:#x} is in domains {other} and {id}"),
                ));
            }
            if attached.len() > limits.max_attached_endpoints {
                return Err(StateError::invalid(
                    S,
                    format!(
                        "more than {} attached endpoints",
                        limits.max_attached_endpoints
                    ),
                ));
            }
        }
        mappings(s, engine, d, &configs)?;
    }
    Ok(attached)
}

fn mappings(
    s: &SavedState,
    engine: &Engine,
    d: &DomainDump,
    configs: &BTreeSet<usize>,
) -> Result<(), StateError> {
    const S: &str = "DOMAINS";
    if d.mappings.is_empty() {
        return Ok(());
    }
    let (id, cfg) = (d.id, &engine.cfg);
    need(
        s,
        Features::MAP_UNMAP,
        S,
        &format!("domain {id} with mappings"),
    )?;
    if d.mappings.len() > cfg.limits.max_mappings_per_domain {
        return Err(StateError::invalid(
            S,
            format!(
                "domain {id} has {} mappings, the limit is {}",
                d.mappings.len(),
                cfg.limits.max_mappings_per_domain
            ),
        ));
    }
    let g = granule(cfg.page_size_mask).unwrap_or(1);
    let misaligned = |x: u64| x & (g - 1) != 0;
    let mut prev_last: Option<u64> = None;
    for m in &d.mappings {
        let bad = |why: &str| {
            StateError::invalid(
                S,
                format!(
                    "domain {id}: mapping [{:#x}, {:#x}] -> {:#x}: {why}",
                    m.virt_start, m.virt_last, m.phys_start
                ),
            )
        };
        let Some(flags) = MapFlags::from_bits(m.flags) else {
            return Err(bad("unknown flags"));
        };
        if flags.contains(MapFlags::MMIO) && !s.negotiated.contains(Features::MMIO) {
            return Err(bad("MMIO without MMIO negotiated"));
        }
        if m.virt_last < m.virt_start {
            return Err(bad("inverted"));
        }
        if m.virt_start < cfg.input_range.0 || m.virt_last > cfg.input_range.1 {
            return Err(bad("outside the input range"));
        }
        if misaligned(m.virt_start)
            || misaligned(m.phys_start)
            || misaligned(m.virt_last.wrapping_add(1))
        {
            return Err(bad("not aligned to the granule"));
        }
        if m.phys_start
            .checked_add(m.virt_last - m.virt_start)
            .is_none()
        {
            return Err(bad("output past 2^64"));
        }
        if prev_last.is_some_and(|p| p >= m.virt_start) {
            return Err(bad("overlaps or precedes the previous mapping"));
        }
        prev_last = Some(m.virt_last);
    }
    // Sorted and disjoint: a region meets a mapping only if the first mapping ending at or
    // after its start begins at or before its end.
    for r in configs
        .iter()
        .filter_map(|i| engine.endpoints.get(*i))
        .flat_map(|e| e.reserved.iter())
    {
        let i = d.mappings.partition_point(|m| m.virt_last < r.start);
        if let Some(m) = d.mappings.get(i).filter(|m| m.virt_start <= r.last) {
            return Err(StateError::invalid(
                S,
                format!(
                    "domain {id}: mapping [{:#x}, {:#x}] is on the reserved region [{:#x}, {:#x}]",
                    m.virt_start, m.virt_last, r.start, r.last
                ),
            ));
        }
    }
    Ok(())
}

fn tables(
    s: &SavedState,
    engine: &Engine,
    attached: &BTreeMap<u32, (u32, bool)>,
) -> Result<(), StateError> {
    const S: &str = "TABLES";
    if !s.tables.is_empty() {
        need(s, Features::ATTACH_TABLE, S, "bound tables")?;
    }
    // (endpoint, 0 for the CD table or 1 + PASID): ascending, so each is bound once.
    let mut prev: Option<(u32, u64)> = None;
    for t in &s.tables {
        let ep = t.endpoint;
        let key = match t.table {
            TableDesc::ArmSmmuV3 { .. } => (ep, 0),
            TableDesc::Vtd { pasid, .. } => (ep, 1 + u64::from(pasid)),
        };
        let bad = |why: &str| StateError::invalid(S, format!("table of endpoint {ep:#x}: {why}"));
        if prev.is_some_and(|p| p >= key) {
            return Err(bad("out of order or bound twice"));
        }
        prev = Some(key);
        match attached.get(&ep) {
            Some(&(domain, bypass)) if domain == t.domain => {
                if bypass {
                    return Err(bad("its domain is a bypass domain"));
                }
            }
            _ => return Err(bad(&format!("the endpoint is not in domain {}", t.domain))),
        }
        let Some((_, cfg)) = engine.endpoints.find(ep) else {
            return Err(bad("the endpoint does not exist on this device"));
        };
        if !table_supported(cfg, &t.table) {
            return Err(bad("format not supported by the endpoint"));
        }
        if !table_valid(cfg, &t.table) {
            return Err(bad("invalid descriptor for the endpoint"));
        }
    }
    Ok(())
}

fn page_requests(s: &SavedState, engine: &Engine) -> Result<(), StateError> {
    const S: &str = "PAGE_REQUESTS";
    if s.groups.is_empty() && s.stopped_endpoints.is_empty() {
        return Ok(());
    }
    need(s, Features::PAGE_REQUEST, S, "page-request state")?;
    let max_total = engine.prq.max_total();
    let max_per_endpoint = engine.prq.max_per_endpoint();
    if s.groups.len() > max_total {
        return Err(StateError::invalid(
            S,
            format!("{} groups, the limit is {max_total}", s.groups.len()),
        ));
    }
    let exists = |ep: u32| engine.endpoints.find(ep).is_some();
    let mut prev: Option<u32> = None;
    for &ep in &s.stopped_endpoints {
        if prev.is_some_and(|p| p >= ep) {
            return Err(StateError::invalid(
                S,
                format!("stopped endpoint {ep:#x} is out of order"),
            ));
        }
        prev = Some(ep);
        if !exists(ep) {
            return Err(StateError::invalid(
                S,
                format!("stopped endpoint {ep:#x} does not exist on this device"),
            ));
        }
    }
    let timeout = engine.cfg.limits.page_request_timeout;
    let mut prev: Option<(u32, u16)> = None;
    let mut per_endpoint = 0u32;
    for g in &s.groups {
        let key = (g.endpoint, g.group_id);
        let bad = |why: &str| {
            StateError::invalid(
                S,
                format!("group {} of endpoint {:#x}: {why}", g.group_id, g.endpoint),
            )
        };
        if prev.is_some_and(|p| p >= key) {
            return Err(bad("out of order or listed twice"));
        }
        per_endpoint = if prev.is_some_and(|p| p.0 == g.endpoint) {
            per_endpoint + 1
        } else {
            1
        };
        prev = Some(key);
        if per_endpoint > max_per_endpoint {
            return Err(bad(&format!(
                "more than {max_per_endpoint} groups for the endpoint"
            )));
        }
        if !exists(g.endpoint) {
            return Err(bad("the endpoint does not exist on this device"));
        }
        if g.remaining > timeout {
            return Err(bad("more time left than the page-request timeout"));
        }
    }
    Ok(())
}

fn events(s: &SavedState, engine: &Engine) -> Result<(), StateError> {
    const S: &str = "EVENTS";
    let cap = engine.cfg.limits.max_pending_events;
    if s.events.len() > cap {
        return Err(StateError::invalid(
            S,
            format!("{} events, the limit is {cap}", s.events.len()),
        ));
    }
    for (i, e) in s.events.iter().enumerate() {
        let ep = match e {
            Event::Fault(f) => f.endpoint,
            Event::PageRequest(p) => p.endpoint,
        };
        if engine.endpoints.find(ep).is_none() {
            return Err(StateError::invalid(
                S,
                format!("event {i}: endpoint {ep:#x} does not exist on this device"),
            ));
        }
    }
    Ok(())
}
