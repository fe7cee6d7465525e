//! A small direct-mapped IOTLB: caches the mapping that translated a 4 KiB input page of an
//! (endpoint, PASID), so repeated DMA to the same buffers skips the tree walk.

use serde::Serialize;

use super::space::HostMapping;
use crate::host::SpaceId;

/// Number of entries (a power of two).
pub const IOTLB_ENTRIES: usize = 256;
const PAGE_SHIFT: u32 = 12;

#[derive(Debug, Clone, Copy)]
struct Entry {
    endpoint: u32,
    pasid: Option<u32>,
    page: u64,
    space: SpaceId,
    /// Cached from a translation whose target was the explicit attachment of exactly this
    /// `(endpoint, pasid)` to `space`: a hit needs no attachment lookup (an attachment change
    /// drops the entry).
    attached: bool,
    mapping: HostMapping,
}

/// IOTLB counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IotlbStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to walk the space.
    pub misses: u64,
    /// Entries dropped by invalidation.
    pub invalidated: u64,
}

/// The cache.
#[derive(Debug)]
pub struct Iotlb {
    entries: Box<[Option<Entry>]>,
    /// Occupied slots, so that invalidating an empty cache (the common case for a guest whose
    /// devices do not DMA through the emulator) costs nothing instead of a full scan.
    occupied: usize,
    stats: IotlbStats,
}

impl Default for Iotlb {
    fn default() -> Self {
        Iotlb {
            entries: vec![None; IOTLB_ENTRIES].into_boxed_slice(),
            occupied: 0,
            stats: IotlbStats::default(),
        }
    }
}

fn slot(endpoint: u32, pasid: Option<u32>, page: u64) -> usize {
    // Cheap mix so that the same page of different endpoints lands in different slots.
    let key = page
        ^ (u64::from(endpoint) << 20).rotate_left(17)
        ^ u64::from(pasid.map_or(0, |p| p.wrapping_add(1))).rotate_left(41);
    let h = key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56;
    // The shift leaves 8 bits, the index range of IOTLB_ENTRIES.
    usize::from(u8::try_from(h).unwrap_or(0)) & (IOTLB_ENTRIES - 1)
}

impl Iotlb {
    /// The cached mapping of `space` that translates `iova` for `(endpoint, pasid)`.
    pub fn lookup(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        space: SpaceId,
        iova: u64,
    ) -> Option<HostMapping> {
        let page = iova >> PAGE_SHIFT;
        let hit = self.entries[slot(endpoint, pasid, page)].filter(|e| {
            e.endpoint == endpoint
                && e.pasid == pasid
                && e.page == page
                && e.space == space
                && e.mapping.contains(iova)
        });
        match hit {
            Some(e) => {
                self.stats.hits += 1;
                Some(e.mapping)
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// The cached mapping that translates `iova` for `(endpoint, pasid)` through its own
    /// attachment, before anything about the attachment is known. Counts hits only: a miss
    /// goes on to [`Iotlb::lookup`], which counts it.
    pub fn lookup_attached(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        iova: u64,
    ) -> Option<HostMapping> {
        let page = iova >> PAGE_SHIFT;
        let e = self.entries[slot(endpoint, pasid, page)].as_ref()?;
        let hit = e.attached
            && e.endpoint == endpoint
            && e.pasid == pasid
            && e.page == page
            && e.mapping.contains(iova);
        if !hit {
            return None;
        }
        self.stats.hits += 1;
        Some(e.mapping)
    }

    /// Caches `mapping` as the translation of the page of `iova`; `attached`: `space` is the
    /// explicit attachment of `(endpoint, pasid)` (see [`Iotlb::lookup_attached`]).
    pub fn insert(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        space: SpaceId,
        attached: bool,
        iova: u64,
        mapping: HostMapping,
    ) {
        let page = iova >> PAGE_SHIFT;
        let old = self.entries[slot(endpoint, pasid, page)].replace(Entry {
            endpoint,
            pasid,
            page,
            space,
            attached,
            mapping,
        });
        if old.is_none() {
            self.occupied += 1;
        }
    }

    fn drop_where(&mut self, f: impl Fn(&Entry) -> bool) {
        if self.occupied == 0 {
            return;
        }
        for e in self.entries.iter_mut() {
            if e.as_ref().is_some_and(&f) {
                *e = None;
                self.occupied -= 1;
                self.stats.invalidated += 1;
            }
        }
    }

    /// Drops every entry of `space` whose mapping intersects `[iova, last]` (UNMAP).
    pub fn invalidate_range(&mut self, space: SpaceId, iova: u64, last: u64) {
        self.drop_where(|e| e.space == space && e.mapping.iova <= last && iova <= e.mapping.last);
    }

    /// Drops every entry of `space` (space destroyed).
    pub fn invalidate_space(&mut self, space: SpaceId) {
        self.drop_where(|e| e.space == space);
    }

    /// Drops every entry of `(endpoint, pasid)` (attachment changed).
    pub fn invalidate_endpoint(&mut self, endpoint: u32, pasid: Option<u32>) {
        self.drop_where(|e| e.endpoint == endpoint && e.pasid == pasid);
    }

    /// Drops every entry (the reserved regions changed).
    pub fn invalidate_all(&mut self) {
        self.drop_where(|_| true);
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> IotlbStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Perm;

    fn m(iova: u64, last: u64) -> HostMapping {
        HostMapping {
            iova,
            last,
            phys: 0x10_0000,
            perm: Perm::READ,
        }
    }

    #[test]
    fn hit_miss_and_invalidation() {
        let mut t = Iotlb::default();
        let s = SpaceId(1);
        assert_eq!(t.lookup(1, None, s, 0x1000), None);
        t.insert(1, None, s, false, 0x1000, m(0x1000, 0x2fff));
        assert_eq!(t.lookup(1, None, s, 0x1234), Some(m(0x1000, 0x2fff)));
        // Other endpoint, PASID or space: miss.
        assert_eq!(t.lookup(2, None, s, 0x1234), None);
        assert_eq!(t.lookup(1, Some(0), s, 0x1234), None);
        assert_eq!(t.lookup(1, None, SpaceId(2), 0x1234), None);
        assert_eq!(
            t.stats(),
            IotlbStats {
                hits: 1,
                misses: 4,
                invalidated: 0
            }
        );
        t.invalidate_range(s, 0x3000, 0x3fff);
        assert!(t.lookup(1, None, s, 0x1234).is_some());
        t.invalidate_range(s, 0x2fff, 0x2fff);
        assert_eq!(t.lookup(1, None, s, 0x1234), None);
        t.insert(1, None, s, false, 0x1000, m(0x1000, 0x2fff));
        t.invalidate_endpoint(1, None);
        assert_eq!(t.lookup(1, None, s, 0x1234), None);
        t.insert(1, None, s, false, 0x1000, m(0x1000, 0x2fff));
        t.invalidate_space(s);
        assert_eq!(t.lookup(1, None, s, 0x1234), None);
        assert_eq!(t.stats().invalidated, 3);
    }

    #[test]
    fn attached_entries_answer_without_the_space() {
        let mut t = Iotlb::default();
        let s = SpaceId(1);
        t.insert(1, None, s, false, 0x1000, m(0x1000, 0x2fff));
        // Not cached through the endpoint's own attachment: the fast path does not use it.
        assert_eq!(t.lookup_attached(1, None, 0x1234), None);
        t.insert(1, Some(3), s, true, 0x1000, m(0x1000, 0x2fff));
        assert_eq!(
            t.lookup_attached(1, Some(3), 0x1234),
            Some(m(0x1000, 0x2fff))
        );
        assert_eq!(t.lookup_attached(1, Some(3), 0x3000), None);
        assert_eq!(t.lookup_attached(1, None, 0x1234), None);
        assert_eq!(t.lookup_attached(2, Some(3), 0x1234), None);
        assert_eq!(t.stats().hits, 1);
        t.invalidate_endpoint(1, Some(3));
        assert_eq!(t.lookup_attached(1, Some(3), 0x1234), None);
        t.insert(1, None, s, true, 0x1000, m(0x1000, 0x2fff));
        t.invalidate_all();
        assert_eq!(t.lookup_attached(1, None, 0x1234), None);
        assert_eq!(t.stats().invalidated, 2);
    }
}
