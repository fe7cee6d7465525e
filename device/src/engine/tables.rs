//! Guest tables bound with ATTACH_TABLE, per endpoint: at most one SMMUv3 CD table (it covers
//! every PASID and is attached to the endpoint's requests without PASID, replacing the
//! domain's space there) and one VT-d first-stage table per PASID.
//!
//! Tables live as long as the endpoint stays in its domain: DETACH, a move to another domain
//! and a device reset drop them (after the endpoint's requests without PASID left the table).

use std::collections::BTreeMap;

use log::warn;
use virtio_iommu_spec::request::TableDesc;

use crate::host::{AttachTarget, HostError, HostIommu, SpaceId, TableId};

/// An endpoint's tables, each with the descriptor that bound it (a saved state re-binds it).
#[derive(Debug, Default)]
struct EndpointTables {
    arm: Option<(TableId, TableDesc)>,
    vtd: BTreeMap<u32, (TableId, TableDesc)>,
}

/// All bound tables.
#[derive(Debug, Default)]
pub(super) struct Tables {
    by_endpoint: BTreeMap<u32, EndpointTables>,
    /// Live tables, all endpoints together.
    count: usize,
}

fn destroy(host: &mut dyn HostIommu, id: TableId) {
    // The guest's view is already right; a leaked host table is only logged.
    if let Err(e) = host.destroy_table(id) {
        warn!("host destroy_table({id:?}) failed: {e}");
    }
}

impl Tables {
    /// Live tables.
    pub(super) fn count(&self) -> usize {
        self.count
    }

    /// Whether binding `desc` to `endpoint` would replace a table (and so add none).
    pub(super) fn replaces(&self, endpoint: u32, desc: &TableDesc) -> bool {
        self.by_endpoint.get(&endpoint).is_some_and(|t| match desc {
            TableDesc::Vtd { pasid, .. } => t.vtd.contains_key(pasid),
            TableDesc::ArmSmmuV3 { .. } => t.arm.is_some(),
        })
    }

    /// The tables of `endpoint`.
    pub(super) fn of(&self, endpoint: u32) -> Vec<TableId> {
        self.by_endpoint
            .get(&endpoint)
            .map(|t| {
                t.arm
                    .iter()
                    .chain(t.vtd.values())
                    .map(|(id, _)| *id)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every bound table's descriptor with its endpoint: by endpoint, the CD table before the
    /// PASID tables, those by PASID.
    pub(super) fn descs(&self) -> impl Iterator<Item = (u32, TableDesc)> + '_ {
        self.by_endpoint.iter().flat_map(|(ep, t)| {
            t.arm
                .iter()
                .chain(t.vtd.values())
                .map(move |(_, desc)| (*ep, *desc))
        })
    }

    /// Allocates and attaches a table, then destroys the one it replaces. A host failure
    /// leaves everything as it was.
    pub(super) fn bind(
        &mut self,
        host: &mut dyn HostIommu,
        endpoint: u32,
        parent: Option<SpaceId>,
        desc: &TableDesc,
    ) -> Result<(), HostError> {
        let id = host.alloc_table(endpoint, parent, desc)?;
        let pasid = match desc {
            TableDesc::Vtd { pasid, .. } => Some(*pasid),
            TableDesc::ArmSmmuV3 { .. } => None,
        };
        if let Err(e) = host.attach(endpoint, pasid, AttachTarget::Table(id)) {
            destroy(host, id);
            return Err(e);
        }
        let t = self.by_endpoint.entry(endpoint).or_default();
        let old = match pasid {
            Some(p) => t.vtd.insert(p, (id, *desc)),
            None => t.arm.replace((id, *desc)),
        };
        match old {
            Some((old, _)) => destroy(host, old),
            None => self.count += 1,
        }
        Ok(())
    }

    /// Drops every table of `endpoint`. Its requests without PASID must already point
    /// elsewhere (DETACH or ATTACH to another domain did that); PASID attachments are removed.
    pub(super) fn drop_endpoint(&mut self, host: &mut dyn HostIommu, endpoint: u32) {
        let Some(t) = self.by_endpoint.remove(&endpoint) else {
            return;
        };
        self.count -= usize::from(t.arm.is_some()) + t.vtd.len();
        for (pasid, (id, _)) in t.vtd {
            if let Err(e) = host.detach(endpoint, Some(pasid)) {
                warn!("host detach({endpoint}, PASID {pasid}) failed: {e}");
            }
            destroy(host, id);
        }
        if let Some((id, _)) = t.arm {
            destroy(host, id);
        }
    }

    /// Drops every table (device reset, after every endpoint was detached).
    pub(super) fn clear(&mut self, host: &mut dyn HostIommu) {
        let eps: Vec<u32> = self.by_endpoint.keys().copied().collect();
        for ep in eps {
            self.drop_endpoint(host, ep);
        }
    }
}
