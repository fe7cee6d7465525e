//! The device state as one stream (PROTOCOL.md §12): what the vhost-user DEVICE_STATE
//! transfer carries from a source daemon to a destination, and what a restarted daemon reads
//! back. Pure: bytes in, bytes out, no I/O.
//!
//! - [`snapshot`] takes everything the guest can observe (config space, negotiated features,
//!   domains with their endpoints and mappings, bound tables, outstanding page requests, the
//!   event backlog) and the counters; [`SavedState::encode`] writes the stream.
//! - [`SavedState::decode`] reads a stream with every read bounded by what is left; [`check`]
//!   then says whether it fits this device: the same configuration ([`fit`]) and a state a
//!   guest could have built on it ([`rules`]). Nothing changes until both passed.
//! - [`apply`] replaces the device's state: a device reset, then the domains, mappings and
//!   tables rebuilt through the request handlers (so the host mirrors them), then the page
//!   requests, events and counters.
//!
//! Stage-1 walk caches are not carried: the destination starts with them empty, which is what
//! an INVALIDATE of everything gives and what a device may do at any time.

mod cursor;
mod decode;
mod encode;
mod fit;
mod format;
mod rules;
mod saved_group;
mod saved_state;
mod state_error;
mod writer;

use std::time::Instant;

use virtio_iommu_spec::request::{Attach, AttachFlags, Map, MapFlags};
use virtio_iommu_spec::Status;

pub use self::format::{MAGIC, MAX_STATE_BYTES, VERSION};
pub use self::saved_group::SavedGroup;
pub use self::saved_state::SavedState;
pub use self::state_error::StateError;

use super::prq::PageRequestCounters;
use super::Engine;

/// The state of `engine`, with page-request deadlines as time left at `now`.
pub(super) fn snapshot(engine: &Engine, now: Instant) -> SavedState {
    let mut config = engine.cfg.clone();
    config.endpoints = engine.endpoints.iter().cloned().collect();
    let (next_group_id, stopped_endpoints, groups) = engine.prq.snapshot(now);
    SavedState {
        config,
        offered: engine.offered,
        negotiated: engine.negotiated,
        bypass: engine.bypass,
        requests: engine.requests.clone(),
        event_counters: engine.events.counters(),
        page_request_counters: PageRequestCounters {
            outstanding: 0,
            ..engine.prq.counters()
        },
        domains: engine.domains.dump(&*engine.host),
        tables: engine.domains.tables(),
        next_group_id,
        stopped_endpoints,
        groups,
        events: engine.events.snapshot(),
    }
}

/// Whether `s` fits `engine`: its configuration, and every rule of the state.
pub(super) fn check(engine: &Engine, s: &SavedState) -> Result<(), StateError> {
    fit::check(s, engine)?;
    rules::check(s, engine)
}

fn rebuild_failed(what: String, status: Status) -> Result<(), StateError> {
    if status == Status::Ok {
        Ok(())
    } else {
        Err(StateError::Rebuild { what, status })
    }
}

/// Replaces the state of `engine` with `s` (already [`check`]ed). A failure while rebuilding
/// (only the host can cause one) leaves the device reset.
pub(super) fn apply(engine: &mut Engine, s: &SavedState, now: Instant) -> Result<(), StateError> {
    engine.reset();
    engine.negotiated = s.negotiated;
    engine.bypass = s.bypass;
    engine.host.set_unattached_bypass(s.bypass);
    if let Err(e) = rebuild(engine, s) {
        engine.reset();
        return Err(e);
    }
    engine.prq.restore(
        s.next_group_id,
        &s.stopped_endpoints,
        &s.groups,
        s.page_request_counters,
        now,
    );
    engine.events.restore(&s.events, s.event_counters);
    engine.requests = s.requests.clone();
    Ok(())
}

fn rebuild(engine: &mut Engine, s: &SavedState) -> Result<(), StateError> {
    for d in &s.domains {
        let flags = if d.bypass {
            AttachFlags::BYPASS
        } else {
            AttachFlags::empty()
        };
        for &endpoint in &d.endpoints {
            let (domains, mut ctx) = engine.split();
            let a = Attach {
                domain: d.id,
                endpoint,
                flags,
            };
            rebuild_failed(
                format!("ATTACH of endpoint {endpoint:#x} to domain {}", d.id),
                domains.attach(&mut ctx, &a),
            )?;
        }
        for m in &d.mappings {
            let (domains, mut ctx) = engine.split();
            let map = Map {
                domain: d.id,
                virt_start: m.virt_start,
                virt_end: m.virt_last,
                phys_start: m.phys_start,
                flags: MapFlags::from_bits_truncate(m.flags),
            };
            let status = domains.map(&mut ctx, &map);
            if status != Status::Ok {
                return rebuild_failed(
                    format!(
                        "MAP [{:#x}, {:#x}] of domain {}",
                        m.virt_start, m.virt_last, d.id
                    ),
                    status,
                );
            }
        }
    }
    for t in &s.tables {
        let (domains, mut ctx) = engine.split();
        rebuild_failed(
            format!("ATTACH_TABLE of endpoint {:#x}", t.endpoint),
            domains.attach_table(&mut ctx, t),
        )?;
    }
    Ok(())
}
