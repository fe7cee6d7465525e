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

#[derive(Debug, Default)]
struct EndpointTables {
    arm: Option<TableId>,
    vtd: BTreeMap<u32, TableId>,
}

/// All bound tables.
#[derive(Debug, Default)]
pub(super) struct Tables {
    by_endpoint: BTreeMap<u32, EndpointTables>,
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
        self.by_endpoint
            .values()
            .map(|t| usize::from(t.arm.is_some()) + t.vtd.len())
            .sum()
    }

    /// The tables of `endpoint`.
    pub(super) fn of(&self, endpoint: u32) -> Vec<TableId> {
        self.by_endpoint
            .get(&endpoint)
            .map(|t| t.arm.iter().chain(t.vtd.values()).copied().collect())
            .unwrap_or_default()
    }

    /// Whether `endpoint` has an SMMUv3 CD table (which its requests without PASID go through).
    pub(super) fn has_cd_table(&self, endpoint: u32) -> bool {
        self.by_endpoint
            .get(&endpoint)
            .is_some_and(|t| t.arm.is_some())
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
            Some(p) => t.vtd.insert(p, id),
            None => t.arm.replace(id),
        };
        if let Some(old) = old {
            destroy(host, old);
        }
        Ok(())
    }

    /// Drops every table of `endpoint`. Its requests without PASID must already point
    /// elsewhere (DETACH or ATTACH to another domain did that); PASID attachments are removed.
    pub(super) fn drop_endpoint(&mut self, host: &mut dyn HostIommu, endpoint: u32) {
        let Some(t) = self.by_endpoint.remove(&endpoint) else {
            return;
        };
        for (pasid, id) in t.vtd {
            if let Err(e) = host.detach(endpoint, Some(pasid)) {
                warn!("host detach({endpoint}, PASID {pasid}) failed: {e}");
            }
            destroy(host, id);
        }
        if let Some(id) = t.arm {
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
