//! Where each endpoint's DMA goes: explicit attachments per (endpoint, PASID), the default for
//! endpoints without one, and the reserved regions of each endpoint range.

use rustc_hash::FxHashMap;
use std::ops::RangeInclusive;

use crate::host::{AttachTarget, ReservedRegion, TableId};

/// The attachments and the per-endpoint facts translation needs before any address space.
#[derive(Debug, Default)]
pub struct Attachments {
    /// Fx, not SipHash: looked up on every translation; the keys are configured endpoint IDs
    /// and PASIDs below 2^pasid_bits, their number bounded by the engine's limits.
    explicit: FxHashMap<(u32, Option<u32>), AttachTarget>,
    unattached_bypass: bool,
    /// Sorted, disjoint endpoint ranges with their regions.
    reserved: Vec<(RangeInclusive<u32>, Vec<ReservedRegion>)>,
}

impl Attachments {
    /// Points `(endpoint, pasid)` at `target`; returns the attachment it replaces.
    pub fn set(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        target: AttachTarget,
    ) -> Option<AttachTarget> {
        self.explicit.insert((endpoint, pasid), target)
    }

    /// Removes the attachment of `(endpoint, pasid)`; returns it.
    pub fn remove(&mut self, endpoint: u32, pasid: Option<u32>) -> Option<AttachTarget> {
        self.explicit.remove(&(endpoint, pasid))
    }

    /// The explicit attachment of `(endpoint, pasid)`, if any.
    #[must_use]
    pub fn get(&self, endpoint: u32, pasid: Option<u32>) -> Option<AttachTarget> {
        self.explicit.get(&(endpoint, pasid)).copied()
    }

    /// Where the DMA of endpoints without an attachment goes.
    pub fn set_unattached_bypass(&mut self, bypass: bool) {
        self.unattached_bypass = bypass;
    }

    /// Where DMA of `(endpoint, pasid)` goes, with the defaults for no explicit attachment.
    /// `is_cd_table` tells whether a table is an SMMUv3 CD table.
    pub fn target_of(
        &self,
        endpoint: u32,
        pasid: Option<u32>,
        is_cd_table: impl Fn(TableId) -> bool,
    ) -> AttachTarget {
        match self.explicit.get(&(endpoint, pasid)) {
            Some(t) => *t,
            // An SMMUv3 CD table bound to the endpoint's requests without PASID translates
            // every PASID, as an STE does; otherwise PASID-tagged DMA needs an explicit PASID
            // attachment (bypass is for RID traffic).
            None if pasid.is_some() => match self.explicit.get(&(endpoint, None)) {
                Some(AttachTarget::Table(id)) if is_cd_table(*id) => AttachTarget::Table(*id),
                _ => AttachTarget::Blocked,
            },
            None if self.unattached_bypass => AttachTarget::Bypass,
            None => AttachTarget::Blocked,
        }
    }

    /// Declares the reserved regions of a range of endpoints, replacing whatever overlapped
    /// it before (the engine sets disjoint ranges once).
    pub fn set_reserved_regions(
        &mut self,
        endpoints: RangeInclusive<u32>,
        regions: &[ReservedRegion],
    ) {
        self.reserved
            .retain(|(r, _)| *r.end() < *endpoints.start() || *endpoints.end() < *r.start());
        let i = self
            .reserved
            .partition_point(|(r, _)| *r.start() < *endpoints.start());
        self.reserved.insert(i, (endpoints, regions.to_vec()));
    }

    /// The reserved regions of `endpoint`.
    #[must_use]
    pub fn regions_of(&self, endpoint: u32) -> &[ReservedRegion] {
        let i = self.reserved.partition_point(|(r, _)| *r.end() < endpoint);
        match self.reserved.get(i) {
            Some((r, regions)) if r.contains(&endpoint) => regions,
            _ => &[],
        }
    }
}
