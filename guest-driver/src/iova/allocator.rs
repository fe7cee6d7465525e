//! An IOVA allocator over the input range minus reserved regions, granule-aligned, with
//! O(log n) allocation (best fit) and O(log n) free (with coalescing).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use crate::config::IommuConfig;
use crate::error::Error;
use crate::probe::EndpointInfo;

/// Hands out granule-aligned IOVA ranges from `[start, end]` that avoid reserved regions.
///
/// Intervals are inclusive (`last`), so a range ending at `u64::MAX` is representable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IovaAllocator {
    granule: u64,
    /// Managed range after alignment: `(first, last)`, or `None` if nothing fits.
    bounds: Option<(u64, u64)>,
    /// Free blocks, `start -> last`; disjoint and never adjacent (always coalesced).
    free_by_start: BTreeMap<u64, u64>,
    /// The same blocks as `(last - start, start)`, for best-fit lookup.
    free_by_size: BTreeSet<(u64, u64)>,
    /// Reserved regions (aligned outward), `start -> last`, coalesced.
    reserved: BTreeMap<u64, u64>,
}

fn align_up(v: u64, align: u64) -> Option<u64> {
    v.checked_add(align - 1).map(|x| x & !(align - 1))
}

impl IovaAllocator {
    /// An allocator over `[start, last]` (inclusive), shrunk inward to whole granules.
    ///
    /// # Errors
    /// [`Error::Unaligned`] if `granule` is not a power of two.
    pub fn new(start: u64, last: u64, granule: u64) -> Result<Self, Error> {
        if !granule.is_power_of_two() {
            return Err(Error::Unaligned);
        }
        let mask = granule - 1;
        let first = align_up(start, granule);
        // The last address of the last whole granule: `last` itself if `last + 1` is aligned.
        let whole_last = if last.wrapping_add(1) & mask == 0 {
            Some(last)
        } else {
            (last & !mask).checked_sub(1)
        };
        let bounds = match (first, whole_last) {
            (Some(f), Some(l)) if f <= l => Some((f, l)),
            _ => None,
        };
        let mut a = IovaAllocator {
            granule,
            bounds,
            free_by_start: BTreeMap::new(),
            free_by_size: BTreeSet::new(),
            reserved: BTreeMap::new(),
        };
        if let Some((f, l)) = bounds {
            a.insert_free(f, l);
        }
        Ok(a)
    }

    /// An allocator over the device's input range and granule.
    #[must_use]
    pub fn from_config(cfg: &IommuConfig) -> Self {
        let granule = cfg.granule();
        // `granule()` is always a power of two.
        Self::new(cfg.input_start, cfg.input_last, granule).unwrap_or(IovaAllocator {
            granule: 1,
            bounds: None,
            free_by_start: BTreeMap::new(),
            free_by_size: BTreeSet::new(),
            reserved: BTreeMap::new(),
        })
    }

    /// Removes every reserved region an endpoint's PROBE reported (RESERVED and MSI alike).
    pub fn reserve_probed(&mut self, info: &EndpointInfo) {
        for r in &info.reserved_regions {
            self.reserve(r.start, r.last);
        }
    }

    /// The granule every range is aligned to.
    #[must_use]
    pub fn granule(&self) -> u64 {
        self.granule
    }

    /// Removes `[start, last]` (widened to whole granules) from the allocatable space, for good.
    /// Ranges already allocated inside it stay allocated, but are not returned to the free space
    /// when freed. An empty range (`start > last`) is ignored.
    pub fn reserve(&mut self, start: u64, last: u64) {
        if start > last {
            return;
        }
        let mask = self.granule - 1;
        let first = start & !mask;
        let last = last | mask;
        self.insert_reserved(first, last);
        // Free blocks overlapping [first, last]: those starting at or before `last` whose end
        // reaches `first`. Blocks are disjoint and sorted, so walk back until one ends earlier.
        let hit: Vec<(u64, u64)> = self
            .free_by_start
            .range(..=last)
            .rev()
            .take_while(|(_, l)| **l >= first)
            .map(|(s, l)| (*s, *l))
            .collect();
        for (s, l) in hit {
            self.remove_free(s, l);
            if s < first {
                self.insert_free_raw(s, first - 1);
            }
            if l > last {
                self.insert_free_raw(last + 1, l);
            }
        }
    }

    /// Allocates `size` bytes (rounded up to the granule), granule-aligned. Best fit.
    #[must_use]
    pub fn alloc(&mut self, size: u64) -> Option<u64> {
        self.alloc_aligned(size, self.granule)
    }

    /// Allocates `size` bytes (rounded up to the granule) at a multiple of `align` (a power of
    /// two; values below the granule mean the granule). Two O(log n) lookups at most.
    #[must_use]
    pub fn alloc_aligned(&mut self, size: u64, align: u64) -> Option<u64> {
        if size == 0 || !align.is_power_of_two() {
            return None;
        }
        let align = align.max(self.granule);
        let size = align_up(size, self.granule)?;
        let need = size - 1;
        // Best fit among blocks large enough before alignment; if its start cannot be aligned
        // within it, the smallest block with `align - granule` bytes of slack always can.
        let slack = align - self.granule;
        for want in [Some(need), need.checked_add(slack)] {
            let want = want?;
            let Some(&(_, start)) = self.free_by_size.range((want, 0)..).next() else {
                continue;
            };
            let last = self.free_by_start.get(&start).copied()?;
            let Some(at) = align_up(start, align) else {
                continue;
            };
            let Some(end) = at.checked_add(need) else {
                continue;
            };
            if end <= last {
                self.remove_free(start, last);
                if at > start {
                    self.insert_free_raw(start, at - 1);
                }
                if end < last {
                    self.insert_free_raw(end + 1, last);
                }
                return Some(at);
            }
        }
        None
    }

    /// Returns `[iova, iova + size)` (size rounded up to the granule) to the free space.
    ///
    /// # Errors
    /// [`Error::Unaligned`] for an unaligned `iova`, [`Error::EmptyRange`] for a zero or
    /// wrapping size, [`Error::OutOfRange`] outside the managed range, and [`Error::Inval`] if
    /// any part is already free (double free). Parts inside reserved regions stay reserved.
    pub fn free(&mut self, iova: u64, size: u64) -> Result<(), Error> {
        if iova & (self.granule - 1) != 0 {
            return Err(Error::Unaligned);
        }
        let size = align_up(size, self.granule).ok_or(Error::EmptyRange)?;
        let last = size
            .checked_sub(1)
            .and_then(|s| iova.checked_add(s))
            .ok_or(Error::EmptyRange)?;
        match self.bounds {
            Some((f, l)) if iova >= f && last <= l => {}
            _ => return Err(Error::OutOfRange),
        }
        if overlaps(&self.free_by_start, iova, last) {
            return Err(Error::Inval);
        }
        // Give back only what lies outside reserved regions.
        let mut cursor = iova;
        let holes: Vec<(u64, u64)> = self
            .reserved
            .range(..=last)
            .rev()
            .take_while(|(_, l)| **l >= iova)
            .map(|(s, l)| (*s, *l))
            .collect();
        for (rs, rl) in holes.into_iter().rev() {
            if rs > cursor {
                self.insert_free(cursor, rs - 1);
            }
            match rl.checked_add(1) {
                Some(next) => cursor = next,
                None => return Ok(()),
            }
        }
        if cursor <= last {
            self.insert_free(cursor, last);
        }
        Ok(())
    }

    /// Total free bytes (as `u128`: the whole 64-bit space is 2^64 bytes).
    #[must_use]
    pub fn free_bytes(&self) -> u128 {
        self.free_by_start
            .iter()
            .map(|(s, l)| u128::from(*l - *s) + 1)
            .sum()
    }

    /// The free blocks, `(start, last)` inclusive, in address order.
    pub fn free_blocks(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.free_by_start.iter().map(|(s, l)| (*s, *l))
    }

    /// Inserts a free block, coalescing with its neighbours.
    fn insert_free(&mut self, mut start: u64, mut last: u64) {
        if let Some((&ps, &pl)) = self.free_by_start.range(..start).next_back() {
            if pl.checked_add(1) == Some(start) {
                self.remove_free(ps, pl);
                start = ps;
            }
        }
        if let Some(next) = last.checked_add(1) {
            if let Some(nl) = self.free_by_start.get(&next).copied() {
                self.remove_free(next, nl);
                last = nl;
            }
        }
        self.insert_free_raw(start, last);
    }

    fn insert_free_raw(&mut self, start: u64, last: u64) {
        self.free_by_start.insert(start, last);
        self.free_by_size.insert((last - start, start));
    }

    fn remove_free(&mut self, start: u64, last: u64) {
        self.free_by_start.remove(&start);
        self.free_by_size.remove(&(last - start, start));
    }

    fn insert_reserved(&mut self, mut first: u64, mut last: u64) {
        let hit: Vec<(u64, u64)> = self
            .reserved
            .range(..=last.saturating_add(1))
            .rev()
            .take_while(|(_, l)| l.saturating_add(1) >= first)
            .map(|(s, l)| (*s, *l))
            .collect();
        for (s, l) in hit {
            self.reserved.remove(&s);
            first = first.min(s);
            last = last.max(l);
        }
        self.reserved.insert(first, last);
    }
}

/// Whether any interval of `set` (disjoint, `start -> last`) meets `[first, last]`.
fn overlaps(set: &BTreeMap<u64, u64>, first: u64, last: u64) -> bool {
    set.range(..=last)
        .next_back()
        .is_some_and(|(_, l)| *l >= first)
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 0x1000;

    #[test]
    fn range_is_shrunk_to_whole_granules() {
        let a = IovaAllocator::new(0x10, 0x3fff, G).unwrap();
        assert_eq!(a.free_blocks().collect::<Vec<_>>(), [(0x1000, 0x3fff)]);
        let a = IovaAllocator::new(0x1000, 0x3ffe, G).unwrap();
        assert_eq!(a.free_blocks().collect::<Vec<_>>(), [(0x1000, 0x2fff)]);
        let a = IovaAllocator::new(0, u64::MAX, G).unwrap();
        assert_eq!(a.free_bytes(), 1u128 << 64);
        let a = IovaAllocator::new(0x1001, 0x1fff, G).unwrap();
        assert_eq!(a.free_bytes(), 0);
        assert_eq!(IovaAllocator::new(0, 10, 3), Err(Error::Unaligned));
    }

    #[test]
    fn best_fit_and_coalescing_free() {
        let mut a = IovaAllocator::new(0, 0xf_ffff, G).unwrap();
        let x = a.alloc(0x1000).unwrap();
        let y = a.alloc(0x2001).unwrap(); // rounded up to 3 pages
        assert_eq!((x, y), (0, 0x1000));
        assert_eq!(a.alloc(0), None);
        a.free(x, 0x1000).unwrap();
        // A 1-page hole at 0 and the big tail: best fit takes the hole.
        assert_eq!(a.alloc(0x1000), Some(0));
        a.free(0, 0x1000).unwrap();
        a.free(y, 0x3000).unwrap();
        assert_eq!(a.free_blocks().collect::<Vec<_>>(), [(0, 0xf_ffff)]);
        assert_eq!(a.free(0, 0x1000), Err(Error::Inval), "double free");
        assert_eq!(a.free(0x800, 0x1000), Err(Error::Unaligned));
        assert_eq!(a.free(0x10_0000, 0x1000), Err(Error::OutOfRange));
        assert_eq!(a.free(0, 0), Err(Error::EmptyRange));
    }

    #[test]
    fn aligned_allocation_uses_slack() {
        let mut a = IovaAllocator::new(0x1000, 0x10_ffff, G).unwrap();
        assert_eq!(a.alloc_aligned(0x1000, 0x10000), Some(0x10000));
        // The 15 pages below the aligned block stay free.
        assert_eq!(a.alloc(0xf000), Some(0x1000));
        assert_eq!(a.alloc_aligned(0x1000, 3), None);
        assert_eq!(a.alloc(0x100_0000), None, "larger than the space");
    }

    #[test]
    fn reserved_regions_are_never_handed_out() {
        let mut a = IovaAllocator::new(0, 0xffff, G).unwrap();
        a.reserve(0x2800, 0x4fff); // widened to 0x2000..=0x4fff
        a.reserve(0x9000, 0x9000);
        assert_eq!(
            a.free_blocks().collect::<Vec<_>>(),
            [(0, 0x1fff), (0x5000, 0x8fff), (0xa000, 0xffff)]
        );
        let mut got = Vec::new();
        while let Some(x) = a.alloc(0x1000) {
            got.push(x);
        }
        assert_eq!(got.len(), 16 - 3 - 1);
        assert!(got
            .iter()
            .all(|x| !(0x2000..=0x4fff).contains(x) && *x != 0x9000));
        // Freeing a range spanning a reserved region gives back only the free parts.
        for x in &got {
            a.free(*x, 0x1000).unwrap();
        }
        assert_eq!(a.free_bytes(), 0x10000 - 0x4000);
        // Reserving over live allocations: freeing them later keeps the hole.
        let x = a.alloc(0x1000).unwrap();
        a.reserve(x, x);
        a.free(x, 0x1000).unwrap();
        assert!(a.free_blocks().all(|(s, l)| l < x || s > x));
    }

    #[test]
    fn top_of_the_address_space() {
        let mut a = IovaAllocator::new(u64::MAX - 0x1fff, u64::MAX, G).unwrap();
        assert_eq!(a.alloc(0x2000), Some(u64::MAX - 0x1fff));
        assert_eq!(a.alloc(0x1000), None);
        a.free(u64::MAX - 0x1fff, 0x2000).unwrap();
        a.reserve(u64::MAX, u64::MAX);
        assert_eq!(a.alloc(0x1000), Some(u64::MAX - 0x1fff));
        assert_eq!(a.alloc(0x1000), None);
        assert_eq!(a.alloc(u64::MAX), None);
    }

    #[test]
    fn from_config_uses_input_range_and_granule() {
        let cfg = IommuConfig {
            page_size_mask: 0xffff_f000,
            input_start: 0x10_0000,
            input_last: 0x1f_ffff,
            domain_start: 0,
            domain_last: 0,
            probe_size: 0,
            bypass: None,
        };
        let mut a = IovaAllocator::from_config(&cfg);
        assert_eq!(a.granule(), 0x1000);
        assert_eq!(a.alloc(1), Some(0x10_0000));
        assert_eq!(a.free_bytes(), 0xf_f000);
    }
}
