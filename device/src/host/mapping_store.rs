//! The mappings of one address space: disjoint IOVA intervals in a B-tree keyed by their start.
//! Kept once: the engine checks MAP and UNMAP against it, and the emulated host translates
//! from the same tree ([`HostIommu::mappings`](super::HostIommu::mappings)).
//!
//! O(1) memory per mapping whatever its length (Linux sends identity MAPs spanning most of the
//! 64-bit space), O(log n) MAP and lookup, O(log n + k·log n) UNMAP of k mappings: only the
//! interval before the range and the last one inside it can be split, so two probes decide the
//! whole UNMAP before anything is removed. An UNMAP of exactly one mapping (what drivers send)
//! is one descent to check it and one to remove it at the found position.
//!
//! Entries are 16 bytes (last address; output address with the flags in its low bits) while
//! every output address is 8-byte aligned, which any page-granular configuration guarantees.
//! The first unaligned one (a byte-granular `page_size_mask`) turns the store, once, into
//! 24-byte entries.

use std::collections::btree_map::Entry as MapEntry;
use std::collections::BTreeMap;
use std::fmt::Debug;

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

impl Mapping {
    /// Whether the mapping translates `iova`.
    #[must_use]
    pub const fn contains(&self, iova: u64) -> bool {
        self.virt_start <= iova && iova <= self.virt_last
    }
}

/// An UNMAP would cut a mapping in two: nothing is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the range would split a mapping")]
pub struct WouldSplit;

/// What an UNMAP removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    /// Mappings.
    pub count: usize,
    /// Their bytes (saturating: a full 2^64 unmap reads as `u64::MAX`).
    pub bytes: u64,
}

/// What the tree holds per mapping besides its start.
trait Slot: Copy + Debug {
    /// `None` if this layout cannot hold it.
    fn pack(last: u64, phys: u64, flags: MapFlags) -> Option<Self>;
    fn last(&self) -> u64;
    fn phys(&self) -> u64;
    fn flags(&self) -> MapFlags;
}

/// Low bits of [`Packed::phys_flags`] that hold the flags (every MAP flag fits).
const FLAG_BITS: u64 = 0b111;

/// 16 bytes: the flags in the low bits of an 8-byte-aligned output address.
#[derive(Debug, Clone, Copy)]
struct Packed {
    last: u64,
    phys_flags: u64,
}

impl Slot for Packed {
    fn pack(last: u64, phys: u64, flags: MapFlags) -> Option<Self> {
        let f = u64::from(flags.bits());
        (phys & FLAG_BITS == 0 && f & !FLAG_BITS == 0).then_some(Packed {
            last,
            phys_flags: phys | f,
        })
    }
    fn last(&self) -> u64 {
        self.last
    }
    fn phys(&self) -> u64 {
        self.phys_flags & !FLAG_BITS
    }
    fn flags(&self) -> MapFlags {
        // The low bits hold at most FLAG_BITS: the cast keeps them.
        MapFlags::from_bits_truncate(u32::try_from(self.phys_flags & FLAG_BITS).unwrap_or(0))
    }
}

/// 24 bytes: any output address.
#[derive(Debug, Clone, Copy)]
struct Wide {
    last: u64,
    phys: u64,
    flags: MapFlags,
}

impl Slot for Wide {
    fn pack(last: u64, phys: u64, flags: MapFlags) -> Option<Self> {
        Some(Wide { last, phys, flags })
    }
    fn last(&self) -> u64 {
        self.last
    }
    fn phys(&self) -> u64 {
        self.phys
    }
    fn flags(&self) -> MapFlags {
        self.flags
    }
}

/// The tree of one layout.
#[derive(Debug, Clone)]
struct Tree<S> {
    map: BTreeMap<u64, S>,
}

impl<S> Default for Tree<S> {
    fn default() -> Self {
        Tree {
            map: BTreeMap::new(),
        }
    }
}

fn mapping<S: Slot>(start: u64, s: &S) -> Mapping {
    Mapping {
        virt_start: start,
        virt_last: s.last(),
        phys_start: s.phys(),
        flags: s.flags(),
    }
}

impl<S: Slot> Tree<S> {
    /// The last mapping starting at or before `x`.
    fn at_or_before(&self, x: u64) -> Option<(u64, &S)> {
        self.map.range(..=x).next_back().map(|(k, s)| (*k, s))
    }

    fn overlaps(&self, start: u64, last: u64) -> bool {
        // Disjoint and ordered: only the last mapping starting at or before `last` can reach in.
        self.at_or_before(last)
            .is_some_and(|(_, e)| e.last() >= start)
    }

    fn check_unmap(&self, start: u64, last: u64) -> Result<bool, WouldSplit> {
        // Exactly one mapping (the common UNMAP): one descent decides. A mapping starting at
        // `start` excludes one straddling it, and ending at `last` leaves none after it.
        if let Some(e) = self.map.get(&start) {
            if e.last() == last {
                return Ok(true);
            }
        }
        // A mapping beginning before `start` must also end before it.
        if let Some((_, e)) = self.map.range(..start).next_back() {
            if e.last() >= start {
                return Err(WouldSplit);
            }
        }
        // The last mapping beginning inside the range must end inside it.
        match self.map.range(start..=last).next_back() {
            Some((_, e)) if e.last() > last => Err(WouldSplit),
            Some(_) => Ok(true),
            None => Ok(false),
        }
    }

    fn remove_range(&mut self, start: u64, last: u64) -> Removed {
        let bytes = |k: u64, e: &S| (e.last() - k).saturating_add(1);
        // Exactly one mapping: removed where the descent found it.
        if let MapEntry::Occupied(o) = self.map.entry(start) {
            if o.get().last() == last {
                let b = bytes(start, o.get());
                o.remove();
                return Removed { count: 1, bytes: b };
            }
        }
        let mut r = Removed::default();
        while let Some((&k, e)) = self.map.range(start..=last).next() {
            if e.last() > last {
                break;
            }
            r.bytes = r.bytes.saturating_add(bytes(k, e));
            r.count += 1;
            self.map.remove(&k);
        }
        r
    }

    fn lookup(&self, iova: u64) -> Option<Mapping> {
        let (k, e) = self.at_or_before(iova)?;
        (e.last() >= iova).then(|| mapping(k, e))
    }
}

/// The two layouts.
#[derive(Debug, Clone)]
enum Trees {
    Packed(Tree<Packed>),
    Wide(Tree<Wide>),
}

/// The interval store.
#[derive(Debug, Clone)]
pub struct MappingStore {
    trees: Trees,
}

impl Default for MappingStore {
    fn default() -> Self {
        MappingStore {
            trees: Trees::Packed(Tree::default()),
        }
    }
}

/// Runs `$e` with `$t` bound to the store's tree, whichever its layout.
macro_rules! with_tree {
    ($s:expr, $t:ident => $e:expr) => {
        match $s {
            Trees::Packed($t) => $e,
            Trees::Wide($t) => $e,
        }
    };
}

impl MappingStore {
    /// Number of mappings.
    #[must_use]
    pub fn len(&self) -> usize {
        with_tree!(&self.trees, t => t.map.len())
    }

    /// Whether there is no mapping.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether any mapping intersects `[start, last]`.
    #[must_use]
    pub fn overlaps(&self, start: u64, last: u64) -> bool {
        with_tree!(&self.trees, t => t.overlaps(start, last))
    }

    /// Adds a mapping. The caller has checked [`MappingStore::overlaps`].
    pub fn insert(&mut self, m: Mapping) {
        debug_assert!(!self.overlaps(m.virt_start, m.virt_last));
        if let Trees::Packed(t) = &mut self.trees {
            match Packed::pack(m.virt_last, m.phys_start, m.flags) {
                Some(p) => {
                    t.map.insert(m.virt_start, p);
                    return;
                }
                None => self.widen(),
            }
        }
        if let Trees::Wide(t) = &mut self.trees {
            t.map.insert(
                m.virt_start,
                Wide {
                    last: m.virt_last,
                    phys: m.phys_start,
                    flags: m.flags,
                },
            );
        }
    }

    /// Moves every entry to the wide layout (once per store, on the first unaligned output).
    fn widen(&mut self) {
        if let Trees::Packed(t) = &mut self.trees {
            let map = std::mem::take(&mut t.map)
                .into_iter()
                .map(|(k, p)| {
                    let w = Wide {
                        last: p.last(),
                        phys: p.phys(),
                        flags: p.flags(),
                    };
                    (k, w)
                })
                .collect();
            self.trees = Trees::Wide(Tree { map });
        }
    }

    /// Checks that an UNMAP of `[start, last]` splits nothing; returns whether it removes
    /// anything.
    ///
    /// # Errors
    /// [`WouldSplit`] if a mapping straddles `start` or `last`.
    pub fn check_unmap(&self, start: u64, last: u64) -> Result<bool, WouldSplit> {
        with_tree!(&self.trees, t => t.check_unmap(start, last))
    }

    /// Removes every mapping inside `[start, last]`. Call [`MappingStore::check_unmap`] first:
    /// a straddling mapping at the end is left alone.
    pub fn remove_range(&mut self, start: u64, last: u64) -> Removed {
        with_tree!(&mut self.trees, t => t.remove_range(start, last))
    }

    /// The mapping that translates `iova`.
    #[must_use]
    pub fn lookup(&self, iova: u64) -> Option<Mapping> {
        with_tree!(&self.trees, t => t.lookup(iova))
    }

    /// All mappings in address order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = Mapping> + '_> {
        with_tree!(&self.trees, t => Box::new(t.map.iter().map(|(k, e)| mapping(*k, e))))
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
        assert_eq!(s.check_unmap(10, 15), Err(WouldSplit));
        assert_eq!(s.check_unmap(10, 29), Ok(true));
    }

    #[test]
    fn remove_and_lookup() {
        let mut s = store(&[(0, 0), (10, 19), (30, 39), (u64::MAX - 9, u64::MAX)]);
        assert_eq!(s.lookup(15), Some(m(10, 19)));
        assert_eq!(s.lookup(20), None);
        assert_eq!(s.lookup(u64::MAX), Some(m(u64::MAX - 9, u64::MAX)));
        assert_eq!(
            s.remove_range(5, 39),
            Removed {
                count: 2,
                bytes: 20
            }
        );
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            vec![m(0, 0), m(u64::MAX - 9, u64::MAX)]
        );
        assert_eq!(s.remove_range(0, 0), Removed { count: 1, bytes: 1 });
        assert_eq!(s.remove_range(0, u64::MAX).count, 1);
        assert!(s.is_empty());
    }

    #[test]
    fn flags_and_unaligned_outputs() {
        let mut s = MappingStore::default();
        let rwm = MapFlags::READ | MapFlags::WRITE | MapFlags::MMIO;
        let a = Mapping {
            virt_start: 0x1000,
            virt_last: 0x1fff,
            phys_start: u64::MAX - 0xfff,
            flags: rwm,
        };
        s.insert(a);
        assert!(matches!(s.trees, Trees::Packed(_)));
        assert_eq!(s.lookup(0x1800), Some(a));
        // An output address that leaves no room for the flags: the store widens, keeping all.
        let b = Mapping {
            virt_start: 0x3,
            virt_last: 0x5,
            phys_start: 0x7,
            flags: MapFlags::WRITE,
        };
        s.insert(b);
        assert!(matches!(s.trees, Trees::Wide(_)));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![b, a]);
        assert_eq!(s.check_unmap(0x3, 0x5), Ok(true));
        assert_eq!(s.remove_range(0x3, 0x5), Removed { count: 1, bytes: 3 });
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![a]);
    }
}
