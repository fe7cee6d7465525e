//! The worst-case memory of the device state under a set of [`Limits`]: what a guest that
//! fills every limit makes the daemon hold. The per-item costs are upper bounds of what the
//! engine test `footprint` measures (heap bytes as glibc's malloc spends them, engine state
//! and the emulated host together, in the least favourable insertion orders); the
//! README's table "Worst-case memory of the defaults" is this arithmetic.

use super::engine_config::Limits;

/// One mapping: a 24-byte entry (key and 16-byte value) in the one B-tree that both the rules
/// and the emulated host's translation use. B-tree leaves hold 5 to 11 entries, so a guest
/// that maps in order and unmaps every seventh page keeps them at their emptiest.
pub const MAPPING_BYTES: u64 = 64;
/// One domain with its first endpoint: the domain record, its endpoint set, the host's
/// address space and attachment.
pub const DOMAIN_BYTES: u64 = 600;
/// One more endpoint attached to a domain.
pub const ENDPOINT_BYTES: u64 = 100;
/// One bound guest table (the engine's record, the host's table and PASID attachment).
pub const TABLE_BYTES: u64 = 320;
/// One outstanding page-request group, with the DMA parked behind it (without its data,
/// which the control socket bounds at 1 MiB per client).
pub const PAGE_REQUEST_BYTES: u64 = 450;
/// One event waiting for a buffer.
pub const EVENT_BYTES: u64 = 64;

/// Bytes per resource at the limits, and their sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// `max_mappings_total` mappings.
    pub mappings: u64,
    /// `max_domains` domains and `max_attached_endpoints` endpoints.
    pub domains: u64,
    /// `max_tables` tables.
    pub tables: u64,
    /// `max_page_request_groups_total` groups.
    pub page_requests: u64,
    /// `max_pending_events` events.
    pub events: u64,
}

fn times(n: usize, bytes: u64) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX).saturating_mul(bytes)
}

impl Footprint {
    /// The worst case of `limits`.
    #[must_use]
    pub fn of(limits: &Limits) -> Self {
        Footprint {
            mappings: times(limits.max_mappings_total, MAPPING_BYTES),
            domains: times(limits.max_domains, DOMAIN_BYTES)
                .saturating_add(times(limits.max_attached_endpoints, ENDPOINT_BYTES)),
            tables: times(limits.max_tables, TABLE_BYTES),
            page_requests: times(limits.max_page_request_groups_total, PAGE_REQUEST_BYTES),
            events: times(limits.max_pending_events, EVENT_BYTES),
        }
    }

    /// Everything together.
    #[must_use]
    pub fn total(&self) -> u64 {
        [
            self.mappings,
            self.domains,
            self.tables,
            self.page_requests,
            self.events,
        ]
        .iter()
        .fold(0u64, |a, b| a.saturating_add(*b))
    }
}
