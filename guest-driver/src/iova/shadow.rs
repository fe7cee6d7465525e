//! A shadow of one domain's live mappings, with the device's MAP/UNMAP semantics, so that a
//! kernel can replay them after the domain is re-created (what Linux does on re-attach).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use virtio_iommu_spec::request::MapFlags;

use crate::error::Error;
use crate::mapping::Mapping;

/// The mappings of one domain, keyed by IOVA.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MappingShadow {
    domain: u32,
    /// `iova -> mapping`; mappings never overlap.
    maps: BTreeMap<u64, Mapping>,
}

impl MappingShadow {
    /// An empty shadow for `domain`.
    #[must_use]
    pub fn new(domain: u32) -> Self {
        MappingShadow {
            domain,
            maps: BTreeMap::new(),
        }
    }

    /// The domain this shadow mirrors.
    #[must_use]
    pub fn domain(&self) -> u32 {
        self.domain
    }

    /// Records a mapping the device accepted.
    ///
    /// # Errors
    /// [`Error::EmptyRange`] for an empty or wrapping mapping, [`Error::DomainOutOfRange`] for
    /// another domain's mapping and [`Error::Inval`] if it overlaps a recorded one (as the
    /// device answers an overlapping MAP).
    pub fn insert(&mut self, m: Mapping) -> Result<(), Error> {
        let last = m.iova_last().ok_or(Error::EmptyRange)?;
        if m.domain != self.domain {
            return Err(Error::DomainOutOfRange);
        }
        let before = self
            .maps
            .range(..=last)
            .next_back()
            .and_then(|(_, p)| p.iova_last());
        if before.is_some_and(|pl| pl >= m.iova) {
            return Err(Error::Inval);
        }
        self.maps.insert(m.iova, m);
        Ok(())
    }

    /// Removes every mapping wholly inside `[iova, iova + size)` and returns them, as UNMAP
    /// does.
    ///
    /// # Errors
    /// [`Error::EmptyRange`] for an empty or wrapping range; [`Error::Range`] if the range
    /// would split a mapping (nothing is removed then).
    pub fn remove(&mut self, iova: u64, size: u64) -> Result<Vec<Mapping>, Error> {
        let last = size
            .checked_sub(1)
            .and_then(|s| iova.checked_add(s))
            .ok_or(Error::EmptyRange)?;
        // A mapping starting before `iova` must end before it.
        if let Some((_, p)) = self.maps.range(..iova).next_back() {
            if p.iova_last().is_some_and(|pl| pl >= iova) {
                return Err(Error::Range);
            }
        }
        let inside: Vec<u64> = self.maps.range(iova..=last).map(|(k, _)| *k).collect();
        // Only the last one can stick out past `last`.
        if let Some(k) = inside.last() {
            if self
                .maps
                .get(k)
                .and_then(Mapping::iova_last)
                .is_some_and(|ml| ml > last)
            {
                return Err(Error::Range);
            }
        }
        Ok(inside
            .into_iter()
            .filter_map(|k| self.maps.remove(&k))
            .collect())
    }

    /// The output address and permissions of `iova`, if a mapping covers it.
    #[must_use]
    pub fn translate(&self, iova: u64) -> Option<(u64, MapFlags)> {
        let (_, m) = self.maps.range(..=iova).next_back()?;
        m.contains(iova)
            .then(|| (m.paddr + (iova - m.iova), m.flags))
    }

    /// The mapping covering `iova`, if any.
    #[must_use]
    pub fn find(&self, iova: u64) -> Option<&Mapping> {
        let (_, m) = self.maps.range(..=iova).next_back()?;
        m.contains(iova).then_some(m)
    }

    /// Every mapping, in IOVA order: feed them to
    /// [`map_batch`](crate::VirtIOIommu::map_batch) to replay the domain.
    pub fn iter(&self) -> impl Iterator<Item = &Mapping> + '_ {
        self.maps.values()
    }

    /// The mappings as a vector, ready for [`map_batch`](crate::VirtIOIommu::map_batch).
    #[must_use]
    pub fn to_vec(&self) -> Vec<Mapping> {
        self.maps.values().copied().collect()
    }

    /// Number of mappings.
    #[must_use]
    pub fn len(&self) -> usize {
        self.maps.len()
    }

    /// Whether no mapping is recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    /// Forgets every mapping (e.g. after the domain was destroyed and will not be replayed).
    pub fn clear(&mut self) {
        self.maps.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(iova: u64, size: u64) -> Mapping {
        Mapping {
            domain: 7,
            iova,
            paddr: iova + 0x100_0000,
            size,
            flags: MapFlags::READ | MapFlags::WRITE,
        }
    }

    fn keys(s: &MappingShadow) -> Vec<u64> {
        s.iter().map(|m| m.iova).collect()
    }

    #[test]
    fn insert_refuses_overlaps_and_foreign_domains() {
        let mut s = MappingShadow::new(7);
        s.insert(m(0x1000, 0x1000)).unwrap();
        s.insert(m(0x3000, 0x2000)).unwrap();
        assert_eq!(s.insert(m(0x1fff, 0x1000)), Err(Error::Inval));
        assert_eq!(s.insert(m(0x4000, 0x1000)), Err(Error::Inval));
        assert_eq!(s.insert(m(0, 0x1001)), Err(Error::Inval));
        assert_eq!(s.insert(m(0, 0)), Err(Error::EmptyRange));
        let mut other = m(0x8000, 0x1000);
        other.domain = 8;
        assert_eq!(s.insert(other), Err(Error::DomainOutOfRange));
        s.insert(m(0x2000, 0x1000)).unwrap();
        assert_eq!(keys(&s), [0x1000, 0x2000, 0x3000]);
    }

    #[test]
    fn remove_follows_the_unmap_examples() {
        // The specification's examples, in pages.
        let p = 0x1000;
        let mut s = MappingShadow::new(7);
        assert_eq!(s.remove(0, 5 * p), Ok(Vec::new()));
        s.insert(m(0, 10 * p)).unwrap();
        assert_eq!(s.remove(0, 5 * p), Err(Error::Range), "split");
        assert_eq!(
            s.remove(5 * p, 10 * p),
            Err(Error::Range),
            "split at the start"
        );
        assert_eq!(s.len(), 1);
        assert_eq!(s.remove(0, 10 * p), Ok(vec![m(0, 10 * p)]));
        s.insert(m(0, 5 * p)).unwrap();
        s.insert(m(5 * p, 5 * p)).unwrap();
        assert_eq!(s.remove(0, 5 * p), Ok(vec![m(0, 5 * p)]));
        assert_eq!(keys(&s), [5 * p]);
        s.insert(m(0, 5 * p)).unwrap();
        s.insert(m(10 * p, 5 * p)).unwrap();
        assert_eq!(s.remove(0, 15 * p).map(|v| v.len()), Ok(3));
        assert!(s.is_empty());
        assert_eq!(s.remove(u64::MAX, 2), Err(Error::EmptyRange));
    }

    #[test]
    fn translate_and_replay() {
        let mut s = MappingShadow::new(7);
        s.insert(m(0x1000, 0x2000)).unwrap();
        assert_eq!(
            s.translate(0x2abc),
            Some((0x100_2abc, MapFlags::READ | MapFlags::WRITE))
        );
        assert_eq!(s.translate(0x3000), None);
        assert_eq!(s.translate(0xfff), None);
        assert_eq!(s.find(0x1000), Some(&m(0x1000, 0x2000)));
        assert_eq!(s.to_vec(), vec![m(0x1000, 0x2000)]);
        s.clear();
        assert_eq!(s.translate(0x1000), None);
    }
}
