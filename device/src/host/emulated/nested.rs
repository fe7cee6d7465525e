//! Guest-owned tables bound with ATTACH_TABLE: the store of nested tables, stage-1 translation
//! through them (with the caches), and INVALIDATE.
//!
//! Stage 2 of the emulated host is the identity over guest RAM: a stage-1 output address is a
//! guest-physical address, and the caller checks it lies in RAM.

use rustc_hash::FxHashMap;

use virtio_iommu_spec::ext::{range_last, InvalCaches, InvalScope, S1DSS_BYPASS, S1DSS_SSID0};
use virtio_iommu_spec::request::{Invalidate, TableDesc};

use super::s1tlb::{S1Caches, S1Stats, Selector, Tag};
use super::walk::{AccessReq, Leaf, TableMemory, WalkError};
use super::{aarch64, smmuv3_cd, x86};
use crate::host::{HostError, SpaceId, TableId};

/// Default cap on nested tables.
pub const DEFAULT_MAX_TABLES: usize = 1 << 16;

/// Guest-memory reads of one [`Nested::translate`] at most: a CD lookup and an AArch64 walk,
/// or an x86-64 walk.
pub const MAX_READS: u32 = max(smmuv3_cd::MAX_READS + aarch64::MAX_READS, x86::MAX_READS);

const fn max(a: u32, b: u32) -> u32 {
    if a > b {
        a
    } else {
        b
    }
}

/// One bound table.
#[derive(Debug, Clone)]
pub struct NestedTable {
    /// The endpoint it was allocated for.
    pub endpoint: u32,
    /// What the guest bound.
    pub desc: TableDesc,
    /// The domain's address space (Arm `S1DSS_BYPASS` traffic goes there).
    pub parent: Option<SpaceId>,
    /// Attachments pointing at it.
    pub(super) users: u32,
}

/// Where DMA through a table goes before stage 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Walk stage 1 with this substream.
    Stage1(u32),
    /// Arm `S1DSS_BYPASS` for DMA without PASID: the parent space translates.
    Parent(Option<SpaceId>),
}

/// The tables and their caches.
#[derive(Debug)]
pub struct Nested {
    tables: FxHashMap<TableId, NestedTable>,
    next: u32,
    max: usize,
    caches: S1Caches,
}

impl Default for Nested {
    fn default() -> Self {
        Nested {
            tables: FxHashMap::default(),
            next: 1,
            max: DEFAULT_MAX_TABLES,
            caches: S1Caches::default(),
        }
    }
}

impl Nested {
    /// Number of live tables.
    #[must_use]
    pub fn len(&self) -> usize {
        self.tables.len()
    }

    /// Whether no table is live.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// The table behind a handle.
    #[must_use]
    pub fn get(&self, id: TableId) -> Option<&NestedTable> {
        self.tables.get(&id)
    }

    /// Cache counters.
    #[must_use]
    pub fn stats(&self) -> S1Stats {
        self.caches.stats()
    }

    /// Adds a table.
    ///
    /// # Errors
    /// `NoMem` beyond the cap.
    pub fn alloc(
        &mut self,
        endpoint: u32,
        parent: Option<SpaceId>,
        desc: TableDesc,
    ) -> Result<TableId, HostError> {
        if self.tables.len() >= self.max {
            return Err(HostError::NoMem);
        }
        // Terminates: fewer than 2^32 tables can be live.
        loop {
            let id = TableId(self.next);
            self.next = self.next.wrapping_add(1);
            if let std::collections::hash_map::Entry::Vacant(v) = self.tables.entry(id) {
                v.insert(NestedTable {
                    endpoint,
                    desc,
                    parent,
                    users: 0,
                });
                return Ok(id);
            }
        }
    }

    /// Removes an unused table and everything cached from it.
    ///
    /// # Errors
    /// `Invalid` for an unknown or attached table.
    pub fn destroy(&mut self, id: TableId) -> Result<NestedTable, HostError> {
        match self.tables.get(&id) {
            Some(t) if t.users == 0 => {}
            _ => return Err(HostError::Invalid),
        }
        self.caches.forget_table(id);
        self.tables.remove(&id).ok_or(HostError::Invalid)
    }

    /// Counts an attachment of `id`.
    ///
    /// # Errors
    /// `Invalid` for an unknown table.
    pub fn hold(&mut self, id: TableId) -> Result<(), HostError> {
        self.tables.get_mut(&id).ok_or(HostError::Invalid)?.users += 1;
        Ok(())
    }

    /// Ends an attachment of `id`; what it cached for `endpoint` goes.
    pub fn release(&mut self, id: TableId) {
        if let Some(t) = self.tables.get_mut(&id) {
            t.users = t.users.saturating_sub(1);
        }
        self.caches.forget_table(id);
    }

    /// How DMA of `pasid` reaches table `id`.
    ///
    /// # Errors
    /// `NoContext` for an unknown table or Arm `S1DSS_TERM` without PASID.
    pub fn route(&self, id: TableId, pasid: Option<u32>) -> Result<Route, WalkError> {
        let t = self.tables.get(&id).ok_or(WalkError::NoContext)?;
        match (t.desc, pasid) {
            (TableDesc::Vtd { pasid, .. }, _) => Ok(Route::Stage1(pasid)),
            (TableDesc::ArmSmmuV3 { .. }, Some(p)) => Ok(Route::Stage1(p)),
            (TableDesc::ArmSmmuV3 { s1dss, .. }, None) => match s1dss {
                S1DSS_SSID0 => Ok(Route::Stage1(0)),
                S1DSS_BYPASS => Ok(Route::Parent(t.parent)),
                // S1DSS_TERM, and anything the decoder would have refused.
                _ => Err(WalkError::NoContext),
            },
        }
    }

    /// Stage 1 of `va` through `tag.table` for substream `tag.ssid` (`tag.asid` is filled in
    /// here), served from the IOTLB when it holds a leaf that allows `req` (a fault is never
    /// cached: it always re-walks).
    ///
    /// # Errors
    /// The [`WalkError`].
    pub fn translate(
        &mut self,
        mem: &impl TableMemory,
        mut tag: Tag,
        va: u64,
        req: AccessReq,
    ) -> Result<Leaf, WalkError> {
        let (id, ssid) = (tag.table, tag.ssid);
        let desc = self.tables.get(&id).ok_or(WalkError::NoContext)?.desc;
        if let Some(leaf) = self.caches.lookup(&tag, va) {
            if leaf.perms.allows(req) {
                return Ok(leaf);
            }
        }
        let leaf = match desc {
            TableDesc::ArmSmmuV3 {
                s1fmt,
                s1contextptr,
                s1cdmax,
                ..
            } => {
                let cd = match self.caches.cd(id, ssid) {
                    Some(cd) => cd,
                    None => {
                        let cd = smmuv3_cd::fetch_cd(mem, s1fmt, s1contextptr, s1cdmax, ssid)?;
                        self.caches.insert_cd(id, ssid, cd);
                        cd
                    }
                };
                if cd.epd0 {
                    return Err(WalkError::Forbidden);
                }
                tag.asid = Some(cd.asid);
                aarch64::walk(mem, cd.ttb0, cd.t0sz, va)?
            }
            TableDesc::Vtd {
                addr_width,
                pgd,
                flags,
                ..
            } => x86::walk(mem, pgd, addr_width, flags, va, req.privileged)?,
        };
        self.caches.insert(tag, va, leaf);
        if leaf.perms.allows(req) {
            Ok(leaf)
        } else {
            Err(WalkError::Permission)
        }
    }

    /// INVALIDATE for table `id`. IOTLB and DEV_IOTLB (ATS) drop cached leaves of the scope
    /// (PASID → substream; range → leaves intersecting it; ARCHID → Arm ASID, ignored for VT-d).
    /// PASID drops the cached CDs of the scope's substream (all of them without one) and, to be
    /// safe, every cached leaf of that substream. A VT-d table ignores scopes naming another
    /// PASID.
    ///
    /// # Errors
    /// `Invalid` for an unknown table or a range that wraps (the engine refuses those first).
    pub fn invalidate(&mut self, id: TableId, inv: &Invalidate) -> Result<(), HostError> {
        let t = self.tables.get(&id).ok_or(HostError::Invalid)?;
        let (ssid, range) = match inv.scope {
            InvalScope::Domain => (None, None),
            InvalScope::Pasid(p) => (Some(p), None),
            InvalScope::Range {
                pasid,
                start,
                nr_pages,
                granule,
            } => {
                let last = range_last(start, nr_pages, granule).ok_or(HostError::Invalid)?;
                (pasid, Some((start, last)))
            }
        };
        let asid = match t.desc {
            TableDesc::Vtd { pasid, .. } => {
                if ssid.is_some_and(|s| s != pasid) {
                    return Ok(());
                }
                None
            }
            // An ARCHID beyond 16 bits names no ASID: nothing matches it.
            TableDesc::ArmSmmuV3 { .. } => match inv.archid.map(u16::try_from) {
                None => None,
                Some(Ok(a)) => Some(a),
                Some(Err(_)) => return Ok(()),
            },
        };
        if inv
            .caches
            .intersects(InvalCaches::IOTLB | InvalCaches::DEV_IOTLB)
        {
            self.caches
                .invalidate_iotlb(id, Selector { ssid, range, asid });
        }
        if inv.caches.contains(InvalCaches::PASID) {
            self.caches.invalidate_cds(id, ssid);
            self.caches.invalidate_iotlb(
                id,
                Selector {
                    ssid,
                    ..Selector::default()
                },
            );
        }
        Ok(())
    }
}
