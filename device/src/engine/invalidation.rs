//! What stopped being valid: the engine's record of every change a translation-service client
//! may have cached (spec/TRANSLATION.md §4.1), for the daemon to push as INVALIDATE messages.
//!
//! Recording is off until the daemon turns it on (a translation socket is configured), so the
//! request path costs nothing without one. The daemon takes the records after every request
//! and after every other state change; at most [`MAX_RECORDS`] wait at once, past that they
//! collapse into one that invalidates everything (still correct, only wider).

use virtio_iommu_spec::translation::Pasids;

/// Records waiting before they collapse into "everything".
pub const MAX_RECORDS: usize = 64;

/// The endpoints a change affects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalEndpoints {
    /// Every endpoint.
    All,
    /// These endpoints (one, or the endpoints of a domain).
    Some(Vec<u32>),
}

/// One change: within `[first, last]`, the translations of `endpoints` in `pasids`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidation {
    /// Affected endpoints.
    pub endpoints: InvalEndpoints,
    /// Affected address spaces.
    pub pasids: Pasids,
    /// First IOVA affected.
    pub first: u64,
    /// Last IOVA affected, inclusive.
    pub last: u64,
}

impl Invalidation {
    /// Everything of every endpoint (bypass change, reset).
    #[must_use]
    pub fn everything() -> Self {
        Invalidation {
            endpoints: InvalEndpoints::All,
            pasids: Pasids::All,
            first: 0,
            last: u64::MAX,
        }
    }

    /// Everything of one endpoint, any PASID (DETACH, a moving ATTACH).
    #[must_use]
    pub fn endpoint(endpoint: u32) -> Self {
        Invalidation {
            endpoints: InvalEndpoints::Some(vec![endpoint]),
            pasids: Pasids::All,
            first: 0,
            last: u64::MAX,
        }
    }
}

/// The records not yet taken.
#[derive(Debug, Default)]
pub(super) struct Invalidations {
    enabled: bool,
    list: Vec<Invalidation>,
}

impl Invalidations {
    /// Starts or stops recording (stopping drops what waits).
    pub(super) fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
        if !on {
            self.list.clear();
        }
    }

    /// Whether changes are recorded.
    pub(super) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Records a change (nothing when disabled, or for a change of no endpoint).
    pub(super) fn record(&mut self, inv: Invalidation) {
        if !self.enabled || matches!(&inv.endpoints, InvalEndpoints::Some(v) if v.is_empty()) {
            return;
        }
        if self.list.len() >= MAX_RECORDS || self.list.first() == Some(&Invalidation::everything())
        {
            self.list.clear();
            self.list.push(Invalidation::everything());
            return;
        }
        self.list.push(inv);
    }

    /// The records, oldest first, emptying the list.
    pub(super) fn take(&mut self) -> Vec<Invalidation> {
        std::mem::take(&mut self.list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_records_nothing_and_overflow_collapses() {
        let mut r = Invalidations::default();
        r.record(Invalidation::endpoint(1));
        assert!(r.take().is_empty());
        r.set_enabled(true);
        r.record(Invalidation::endpoint(1));
        r.record(Invalidation {
            endpoints: InvalEndpoints::Some(Vec::new()),
            ..Invalidation::endpoint(0)
        });
        assert_eq!(r.take(), vec![Invalidation::endpoint(1)]);
        for i in 0..=u32::try_from(MAX_RECORDS).unwrap() {
            r.record(Invalidation::endpoint(i));
        }
        assert_eq!(r.take(), vec![Invalidation::everything()]);
        r.record(Invalidation::everything());
        r.record(Invalidation::endpoint(3));
        assert_eq!(r.take(), vec![Invalidation::everything()]);
    }
}
