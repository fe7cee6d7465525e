//! Caches of guest stage-1 tables, as a hardware IOMMU has them: an IOTLB of walked leaves keyed
//! by (table, endpoint, PASID, 4 KiB input page) and a cache of decoded SMMUv3 context
//! descriptors keyed by (table, substream). Both are direct-mapped, so their size is fixed; a
//! guest that edits its tables without INVALIDATE keeps seeing what was cached.

use serde::Serialize;
use virtio_iommu_spec::formats::PAGE_SHIFT;

use super::smmuv3_cd::ContextDesc;
use super::walk::Leaf;
use crate::host::TableId;

/// IOTLB entries (a power of two).
pub const S1_IOTLB_ENTRIES: usize = 512;
/// CD-cache entries (a power of two).
pub const CD_CACHE_ENTRIES: usize = 64;

/// Who a cached leaf belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    /// The bound table.
    pub table: TableId,
    /// Endpoint.
    pub endpoint: u32,
    /// PASID of the DMA (`None` for DMA without PASID that used CD 0).
    pub pasid: Option<u32>,
    /// The substream that selected the context: the PASID, 0 for `S1DSS_SSID0`, the bound
    /// PASID for a VT-d table.
    pub ssid: u32,
    /// Arm ASID of the CD that produced the entry.
    pub asid: Option<u16>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    tag: Tag,
    page: u64,
    leaf: Leaf,
}

/// What an invalidation selects. `None` fields match everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct Selector {
    /// Only entries of this substream.
    pub ssid: Option<u32>,
    /// Only entries whose leaf intersects `[first, last]`.
    pub range: Option<(u64, u64)>,
    /// Only entries with this ASID.
    pub asid: Option<u16>,
}

/// Cache counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct S1Stats {
    /// IOTLB lookups answered from the cache.
    pub iotlb_hits: u64,
    /// IOTLB lookups that walked the table.
    pub iotlb_misses: u64,
    /// CD lookups answered from the cache.
    pub cd_hits: u64,
    /// CD lookups that read guest memory.
    pub cd_misses: u64,
    /// Entries dropped by invalidation or unbinding.
    pub invalidated: u64,
}

/// The two caches.
#[derive(Debug)]
pub struct S1Caches {
    iotlb: Box<[Option<Entry>]>,
    cds: Box<[Option<(TableId, u32, ContextDesc)>]>,
    stats: S1Stats,
}

impl Default for S1Caches {
    fn default() -> Self {
        S1Caches {
            iotlb: vec![None; S1_IOTLB_ENTRIES].into_boxed_slice(),
            cds: vec![None; CD_CACHE_ENTRIES].into_boxed_slice(),
            stats: S1Stats::default(),
        }
    }
}

fn mix(x: u64, entries: usize) -> usize {
    let h = x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
    // 24 bits fit any usize; the mask keeps the index in range.
    usize::try_from(h).unwrap_or(0) & (entries - 1)
}

fn iotlb_slot(endpoint: u32, pasid: Option<u32>, page: u64) -> usize {
    let p = u64::from(pasid.map_or(0, |p| p.wrapping_add(1)));
    mix(
        page ^ (u64::from(endpoint) << 24).rotate_left(13) ^ p.rotate_left(43),
        S1_IOTLB_ENTRIES,
    )
}

fn cd_slot(table: TableId, ssid: u32) -> usize {
    mix(
        (u64::from(table.0) << 32) | u64::from(ssid),
        CD_CACHE_ENTRIES,
    )
}

impl S1Caches {
    /// The cached leaf translating `va` for `tag`'s table, endpoint and PASID.
    pub fn lookup(&mut self, tag: &Tag, va: u64) -> Option<Leaf> {
        let page = va >> PAGE_SHIFT;
        let hit = self.iotlb[iotlb_slot(tag.endpoint, tag.pasid, page)].filter(|e| {
            e.page == page
                && e.tag.table == tag.table
                && e.tag.endpoint == tag.endpoint
                && e.tag.pasid == tag.pasid
        });
        match hit {
            Some(e) => {
                self.stats.iotlb_hits += 1;
                Some(e.leaf)
            }
            None => {
                self.stats.iotlb_misses += 1;
                None
            }
        }
    }

    /// Caches `leaf` as the translation of the 4 KiB page of `va`.
    pub fn insert(&mut self, tag: Tag, va: u64, leaf: Leaf) {
        let page = va >> PAGE_SHIFT;
        self.iotlb[iotlb_slot(tag.endpoint, tag.pasid, page)] = Some(Entry { tag, page, leaf });
    }

    /// The cached CD of `ssid` in `table`.
    pub fn cd(&mut self, table: TableId, ssid: u32) -> Option<ContextDesc> {
        let hit = self.cds[cd_slot(table, ssid)]
            .filter(|(t, s, _)| *t == table && *s == ssid)
            .map(|(_, _, cd)| cd);
        if hit.is_some() {
            self.stats.cd_hits += 1;
        } else {
            self.stats.cd_misses += 1;
        }
        hit
    }

    /// Caches a decoded CD.
    pub fn insert_cd(&mut self, table: TableId, ssid: u32, cd: ContextDesc) {
        self.cds[cd_slot(table, ssid)] = Some((table, ssid, cd));
    }

    /// Drops the IOTLB entries of `table` that `sel` selects.
    pub fn invalidate_iotlb(&mut self, table: TableId, sel: Selector) {
        let mut n = 0;
        for slot in self.iotlb.iter_mut() {
            let hit = slot.as_ref().is_some_and(|e| {
                e.tag.table == table
                    && sel.ssid.is_none_or(|s| s == e.tag.ssid)
                    && sel.asid.is_none_or(|a| Some(a) == e.tag.asid)
                    && sel
                        .range
                        .is_none_or(|(first, last)| e.leaf.va <= last && first <= e.leaf.last())
            });
            if hit {
                *slot = None;
                n += 1;
            }
        }
        self.stats.invalidated += n;
    }

    /// Drops the cached CDs of `table` (of one substream if `ssid` is given).
    pub fn invalidate_cds(&mut self, table: TableId, ssid: Option<u32>) {
        let mut n = 0;
        for slot in self.cds.iter_mut() {
            if slot
                .as_ref()
                .is_some_and(|(t, s, _)| *t == table && ssid.is_none_or(|x| x == *s))
            {
                *slot = None;
                n += 1;
            }
        }
        self.stats.invalidated += n;
    }

    /// Drops everything of `table` (unbound or destroyed).
    pub fn forget_table(&mut self, table: TableId) {
        self.invalidate_iotlb(table, Selector::default());
        self.invalidate_cds(table, None);
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> S1Stats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::super::walk::LeafPerms;
    use super::*;

    fn tag(pasid: u32, asid: u16) -> Tag {
        Tag {
            table: TableId(1),
            endpoint: 3,
            pasid: Some(pasid),
            ssid: pasid,
            asid: Some(asid),
        }
    }

    fn leaf(va: u64, shift: u32) -> Leaf {
        Leaf {
            va,
            gpa: 0x8000,
            shift,
            perms: LeafPerms::USER_READ,
        }
    }

    #[test]
    fn selectors() {
        let mut c = S1Caches::default();
        c.insert(tag(1, 7), 0x1000, leaf(0x1000, 12));
        c.insert(tag(2, 8), 0x20_3000, leaf(0x20_0000, 21));
        assert!(c.lookup(&tag(1, 7), 0x1fff).is_some());
        assert!(c.lookup(&tag(1, 7), 0x2000).is_none());
        assert!(c.lookup(&tag(3, 7), 0x1000).is_none());
        // A range touching only the 2 MiB leaf drops it, not the 4 KiB one.
        let sel = Selector {
            range: Some((0x20_0000, 0x20_0fff)),
            ..Selector::default()
        };
        c.invalidate_iotlb(TableId(1), sel);
        assert!(c.lookup(&tag(2, 8), 0x20_3000).is_none());
        assert!(c.lookup(&tag(1, 7), 0x1000).is_some());
        // Wrong ASID or table: kept; right ASID: dropped.
        let asid = |a| Selector {
            asid: Some(a),
            ..Selector::default()
        };
        c.invalidate_iotlb(TableId(1), asid(8));
        c.invalidate_iotlb(TableId(2), Selector::default());
        assert!(c.lookup(&tag(1, 7), 0x1000).is_some());
        c.invalidate_iotlb(TableId(1), asid(7));
        assert!(c.lookup(&tag(1, 7), 0x1000).is_none());
        assert_eq!(c.stats().invalidated, 2);
        let cd = ContextDesc {
            asid: 1,
            t0sz: 16,
            ttb0: 0x1000,
            epd0: false,
        };
        c.insert_cd(TableId(1), 5, cd);
        assert_eq!(c.cd(TableId(1), 5), Some(cd));
        c.invalidate_cds(TableId(1), Some(4));
        assert_eq!(c.cd(TableId(1), 5), Some(cd));
        c.forget_table(TableId(1));
        assert_eq!(c.cd(TableId(1), 5), None);
    }
}
