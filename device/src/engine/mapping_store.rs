//! The mappings of one domain: disjoint IOVA intervals in a B-tree keyed by their start.
//!
//! O(1) memory per mapping whatever its length (Linux sends identity MAPs spanning most of the
//! 64-bit space), O(log n) MAP and lookup, O(log n + k·log n) UNMAP of k mappings: only the
//! interval before the range and the last one inside it can be split, so two probes decide the
//! whole UNMAP before anything is removed.

use std::collections::BTreeMap;

use virtio_iommu_spec::request::MapFlags;

/// One mapping, as the guest sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// First input address.
    pub virt_start: u64,
    /// Last input address, inclusive.
    pub virt_last: u64,
    /// Output address of `virt_start`.
    pub phys_start: u64,
    /// Flags.
    pub flags: MapFlags,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    last: u64,
    phys: u64,
    flags: MapFlags,
}

/// An UNMAP would cut a mapping in two: nothing is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the range would split a mapping")]
pub struct WouldSplit;

/// The interval store.
#[derive(Debug, Default, Clone)]
pub struct MappingStore {
    map: BTreeMap<u64, Entry>,
}

impl MappingStore {
    /// Number of mappings.
    #[must_use]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there is no mapping.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether any mapping intersects `[start, last]`.
    #[must_use]
    pub fn overlaps(&self, start: u64, last: u64) -> bool {
        // Disjoint and ordered: only the last mapping starting at or before `last` can reach in.
        self.map
            .range(..=last)
            .next_back()
            .is_some_and(|(_, e)| e.last >= start)
    }

    /// Adds a mapping. The caller has checked [`MappingStore::overlaps`].
    pub fn insert(&mut self, m: Mapping) {
        debug_assert!(!self.overlaps(m.virt_start, m.virt_last));
        self.map.insert(
            m.virt_start,
            Entry {
                last: m.virt_last,
                phys: m.phys_start,
                flags: m.flags,
            },
        );
    }

    /// Checks that an UNMAP of `[start, last]` splits nothing; returns whether it removes
    /// anything.
    ///
    /// # Errors
    /// [`WouldSplit`] if a mapping straddles `start` or `last`.
    pub fn check_unmap(&self, start: u64, last: u64) -> Result<bool, WouldSplit> {
        // A mapping beginning before `start` must also end before it.
        if let Some((_, e)) = self.map.range(..start).next_back() {
            if e.last >= start {
                return Err(WouldSplit);
            }
        }
        // The last mapping beginning inside the range must end inside it.
        match self.map.range(start..=last).next_back() {
            Some((_, e)) if e.last > last => Err(WouldSplit),
            Some(_) => Ok(true),
            None => Ok(false),
        }
    }

    /// Removes every mapping inside `[start, last]`; returns how many. Call
    /// [`MappingStore::check_unmap`] first: a straddling mapping at the end is left alone.
    pub fn remove_range(&mut self, start: u64, last: u64) -> usize {
        let mut n = 0;
        while let Some((&k, e)) = self.map.range(start..=last).next() {
            if e.last > last {
                break;
            }
            self.map.remove(&k);
            n += 1;
        }
        n
    }

    /// The mapping that translates `iova`.
    #[must_use]
    pub fn lookup(&self, iova: u64) -> Option<Mapping> {
        let (&k, e) = self.map.range(..=iova).next_back()?;
        (e.last >= iova).then_some(Mapping {
            virt_start: k,
            virt_last: e.last,
            phys_start: e.phys,
            flags: e.flags,
        })
    }

    /// All mappings in address order.
    pub fn iter(&self) -> impl Iterator<Item = Mapping> + '_ {
        self.map.iter().map(|(&k, e)| Mapping {
            virt_start: k,
            virt_last: e.last,
            phys_start: e.phys,
            flags: e.flags,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(virt_start: u64, virt_last: u64) -> Mapping {
        Mapping {
            virt_start,
            virt_last,
            phys_start: virt_start,
            flags: MapFlags::READ,
        }
    }

    fn store(ms: &[(u64, u64)]) -> MappingStore {
        let mut s = MappingStore::default();
        for &(a, b) in ms {
            s.insert(m(a, b));
        }
        s
    }

    #[test]
    fn overlap_probe() {
        let s = store(&[(10, 19), (30, 39)]);
        assert!(!s.overlaps(0, 9));
        assert!(s.overlaps(0, 10));
        assert!(s.overlaps(19, 19));
        assert!(!s.overlaps(20, 29));
        assert!(s.overlaps(20, 30));
        assert!(s.overlaps(0, u64::MAX));
        assert!(s.overlaps(15, 16));
        assert!(!s.overlaps(40, u64::MAX));
    }

    #[test]
    fn unmap_checks() {
        let s = store(&[(10, 19), (30, 39)]);
        assert_eq!(s.check_unmap(0, 9), Ok(false));
        assert_eq!(s.check_unmap(20, 29), Ok(false));
        assert_eq!(s.check_unmap(10, 19), Ok(true));
        assert_eq!(s.check_unmap(0, u64::MAX), Ok(true));
        assert_eq!(s.check_unmap(11, 40), Err(WouldSplit));
        assert_eq!(s.check_unmap(0, 35), Err(WouldSplit));
        assert_eq!(s.check_unmap(12, 15), Err(WouldSplit));
        assert_eq!(s.check_unmap(19, 29), Err(WouldSplit));
    }

    #[test]
    fn remove_and_lookup() {
        let mut s = store(&[(0, 0), (10, 19), (30, 39), (u64::MAX - 9, u64::MAX)]);
        assert_eq!(s.lookup(15), Some(m(10, 19)));
        assert_eq!(s.lookup(20), None);
        assert_eq!(s.lookup(u64::MAX), Some(m(u64::MAX - 9, u64::MAX)));
        assert_eq!(s.remove_range(5, 39), 2);
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            vec![m(0, 0), m(u64::MAX - 9, u64::MAX)]
        );
        assert_eq!(s.remove_range(0, u64::MAX), 2);
        assert!(s.is_empty());
    }
}
