//! Whether a saved state's device is this device: every configured value the guest can observe
//! (config space, offered features, limits, endpoints and their PROBE properties) must be the
//! same, or the guest would find a different device after the move. The first difference is
//! named.

use core::fmt::Write as _;

use super::saved_state::SavedState;
use super::state_error::StateError;
use crate::engine::engine_config::EndpointConfig;
use crate::engine::Engine;
use crate::host::ReservedRegion;

fn range64((a, b): (u64, u64)) -> String {
    format!("{a:#x}-{b:#x}")
}

fn ids(e: &EndpointConfig) -> String {
    format!("{:#x}-{:#x}", e.ids.start(), e.ids.end())
}

fn regions(r: &[ReservedRegion]) -> String {
    if r.is_empty() {
        return "none".into();
    }
    let mut out = String::new();
    for (i, r) in r.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let kind = match r.kind {
            virtio_iommu_spec::probe::ResvMemSubtype::Msi => "msi",
            virtio_iommu_spec::probe::ResvMemSubtype::Reserved => "reserved",
        };
        let _ = write!(out, "{sep}{kind}:{:#x}-{:#x}", r.start, r.last);
    }
    out
}

fn formats(e: &EndpointConfig) -> String {
    let codes: Vec<u16> = e.table_formats.iter().map(|f| f.code()).collect();
    format!("{codes:?}")
}

fn same<T: PartialEq + core::fmt::Display>(
    what: &str,
    stream: T,
    device: T,
) -> Result<(), StateError> {
    if stream == device {
        Ok(())
    } else {
        Err(StateError::mismatch(what, stream, device))
    }
}

fn micros(d: core::time::Duration) -> u128 {
    d.as_micros()
}

pub(super) fn check(s: &SavedState, engine: &Engine) -> Result<(), StateError> {
    let (a, b) = (&s.config, &engine.cfg);
    same(
        "page_size_mask",
        format!("{:#x}", a.page_size_mask),
        format!("{:#x}", b.page_size_mask),
    )?;
    same(
        "input_range",
        range64(a.input_range),
        range64(b.input_range),
    )?;
    same(
        "domain_range",
        format!("{:#x}-{:#x}", a.domain_range.0, a.domain_range.1),
        format!("{:#x}-{:#x}", b.domain_range.0, b.domain_range.1),
    )?;
    same("probe_size", a.probe_size, b.probe_size)?;
    same("boot bypass", a.boot_bypass, b.boot_bypass)?;
    same(
        "offered features",
        format!("{:#x}", s.offered.bits()),
        format!("{:#x}", engine.offered.bits()),
    )?;
    if !engine.offered.contains(s.negotiated) {
        return Err(StateError::invalid(
            "DEVICE",
            format!(
                "negotiated features {:#x} are not all offered",
                s.negotiated.bits()
            ),
        ));
    }
    let (la, lb) = (&a.limits, &b.limits);
    same(
        "limit max_mappings_per_domain",
        la.max_mappings_per_domain,
        lb.max_mappings_per_domain,
    )?;
    same("limit max_domains", la.max_domains, lb.max_domains)?;
    same(
        "limit max_attached_endpoints",
        la.max_attached_endpoints,
        lb.max_attached_endpoints,
    )?;
    same(
        "limit max_pending_events",
        la.max_pending_events,
        lb.max_pending_events,
    )?;
    same(
        "limit max_page_request_groups",
        la.max_page_request_groups,
        lb.max_page_request_groups,
    )?;
    same(
        "limit max_page_request_groups_total",
        la.max_page_request_groups_total,
        lb.max_page_request_groups_total,
    )?;
    same(
        "page-request timeout (µs)",
        micros(la.page_request_timeout),
        micros(lb.page_request_timeout),
    )?;
    endpoints(&a.endpoints, engine)
}

fn endpoints(stream: &[EndpointConfig], engine: &Engine) -> Result<(), StateError> {
    // In the device's order (by ID), so that a loaded state saves to the same bytes.
    let device: Vec<&EndpointConfig> = engine.endpoints.iter().collect();
    for (i, (a, b)) in stream.iter().zip(&device).enumerate() {
        same(&format!("endpoint range {i}"), ids(a), ids(b))?;
        let at = ids(a);
        same(
            &format!("PASID bits of endpoints {at}"),
            a.pasid_bits,
            b.pasid_bits,
        )?;
        same(
            &format!("page-request capability of endpoints {at}"),
            a.page_requests,
            b.page_requests,
        )?;
        same(
            &format!("table formats of endpoints {at}"),
            formats(a),
            formats(b),
        )?;
        same(
            &format!("reserved regions of endpoints {at}"),
            regions(&a.reserved),
            regions(&b.reserved),
        )?;
    }
    same("endpoint range count", stream.len(), device.len())
}
