//! One endpoint's (and PASID's) device-side IOTLB: vm-memory's `Iotlb` behind a lock that
//! accesses hold while they use a translation, so an invalidation waits for them.
//!
//! A hit through `vm_memory::Iommu` must hand back an `IotlbIterator`, which only
//! `Iotlb::lookup` makes, and that lookup searches the `Iotlb`'s range map three times (gaps,
//! permissions, then the iterator's first mapping); in a map of hundreds of ranges those
//! searches are most of an access's cost. So every cached range is kept twice, under the one
//! lock: merged in `all` (as vm-memory merges them: it answers accesses that span ranges and
//! reports what is missing), and alone in `singles`, sorted by first IOVA and found by a
//! per-page hint or one binary search, each with an `Iotlb` of its one entry whose searches
//! are short. An access
//! inside one range is answered by that range (`hold` for [`crate::ConfinedMemory`], which
//! needs no `Iotlb` at all; `lookup` for `Iommu`). Both tables change under the write lock
//! only, together, so a translation dropped from one is dropped from the other before an
//! invalidation returns.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use parking_lot::{MappedRwLockReadGuard, RwLock, RwLockReadGuard};
use virtio_iommu_spec::request::MapFlags;
use virtio_iommu_spec::translation::TranslatedRange;
use vm_memory::iommu::{Iotlb, IotlbFails, IotlbIterator};
use vm_memory::{GuestAddress, Permissions};

/// What an IOTLB is keyed by, as `INVALIDATE` addresses it (§3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TlbKey {
    /// Endpoint ID.
    pub endpoint: u32,
    /// PASID, or `None` for the endpoint's untagged accesses.
    pub pasid: Option<u32>,
}

/// The `Iotlb` that answered a lookup, borrowed under the IOTLB's read lock.
pub type TlbGuard<'a> = MappedRwLockReadGuard<'a, Iotlb>;

/// The IOTLB's read lock, held by an access while it uses the translation `hold` gave it.
#[derive(Debug)]
pub struct TlbHold<'a> {
    _lock: RwLockReadGuard<'a, Tables>,
}

/// Keeps every translation [`EndpointTlb::pinned_gpa`] gave under it valid until dropped:
/// an `INVALIDATE` of one is acknowledged only after the pins taken before it are gone
/// (without blocking the reader thread, so accesses under a pin may still miss and ask the
/// daemon). For a device's rings, translated once per drain of a queue. Pins do not nest on
/// one thread (a second one could wait behind an acknowledgement waiting for the first).
#[derive(Debug)]
pub struct TlbPin<'a> {
    tlb: &'a EndpointTlb,
    _lock: RwLockReadGuard<'a, ()>,
}

/// One cached range on its own.
#[derive(Debug)]
struct Single {
    first: u64,
    /// One past its last IOVA (it never holds the byte at `u64::MAX`).
    end: u64,
    /// Its guest-physical address minus its IOVA (wrapping).
    offset: u64,
    /// Its `Permissions` as their bits (vm-memory's `Permissions::allow` is not inlined across
    /// crates, and an access checks them every time).
    perm: u8,
    /// Only this range.
    tlb: Iotlb,
}

impl TlbPin<'_> {
    /// The whole cached range holding all of `len` bytes at `iova`, as (first IOVA, one past
    /// its last, guest-physical address of the first, `Permissions` bits); valid while the pin
    /// is held.
    #[must_use]
    pub fn range(&self, iova: u64, len: usize) -> Option<(u64, u64, u64, u8)> {
        let end = iova.checked_add(len as u64)?;
        let tables = self.tlb.read();
        let s = tables.single(iova, end, &self.tlb.hints)?;
        Some((s.first, s.end, s.first.wrapping_add(s.offset), s.perm))
    }

    /// For each `(iova, len, access)` of `areas`, in order, calls `put` with the area's index
    /// and its guest-physical address when one cached range holds it all and permits `access`
    /// (`None` otherwise); all under one read lock. The addresses stay valid while the pin is
    /// held.
    pub fn resolve(
        &self,
        areas: impl IntoIterator<Item = (u64, usize, Permissions)>,
        mut put: impl FnMut(usize, Option<u64>),
    ) {
        let tables = self.tlb.read();
        for (i, (iova, len, access)) in areas.into_iter().enumerate() {
            let gpa = iova.checked_add(len as u64).and_then(|end| {
                let s = tables.single(iova, end, &self.tlb.hints)?;
                s.allows(access).then(|| iova.wrapping_add(s.offset))
            });
            put(i, gpa);
        }
    }
}

impl Single {
    fn allows(&self, access: Permissions) -> bool {
        let access = access as u8;
        self.perm & access == access
    }
}

#[derive(Debug, Default)]
struct Tables {
    /// Every cached range.
    all: Iotlb,
    /// Every cached range alone, sorted by `first`; they never overlap.
    singles: Vec<Single>,
}

impl Tables {
    /// The single range holding all of `iova..end`, if one does: first where `hints` last
    /// found one for the same page slot, else by binary search (and the slot remembers it).
    /// A hint is only ever a guess, checked against the list under the lock: any index is safe.
    fn single(&self, iova: u64, end: u64, hints: &Hints) -> Option<&Single> {
        let slot = hints.slot(iova);
        let inside = |s: &&Single| s.first <= iova && end <= s.end;
        if let Some(s) = self
            .singles
            .get(slot.load(Ordering::Relaxed) as usize)
            .filter(inside)
        {
            return Some(s);
        }
        let at = self
            .singles
            .partition_point(|s| s.first <= iova)
            .checked_sub(1)?;
        let s = self.singles.get(at).filter(inside)?;
        // An index past u32::MAX is never remembered (the bound on cached ranges is far lower).
        if let Ok(at) = u32::try_from(at) {
            slot.store(at, Ordering::Relaxed);
        }
        Some(s)
    }

    /// Drops the singles overlapping `first..end` (whole: what else they held stays in `all`);
    /// returns where a single starting at `first` goes.
    fn drop_singles(&mut self, first: u64, end: u64) -> usize {
        let from = self.singles.partition_point(|s| s.end <= first);
        let to = self.singles.partition_point(|s| s.first < end);
        if from < to {
            self.singles.drain(from..to);
        }
        from
    }

    fn clear(&mut self) {
        self.all.invalidate_all();
        self.singles.clear();
    }
}

/// Slots of the per-page hints in front of the binary search (the hash picks 10 bits): enough
/// that the pages of a queue's rings and of the requests in flight rarely share one.
const HINTS: usize = 1024;

/// Per page slot (a hash of the IOVA's page number): the index in `singles` where the last
/// access of that slot was found. Accesses repeat on a few pages (rings, the buffers of the
/// requests in progress), so most are answered without the search. A hint is only ever a
/// guess, checked against the list under the lock: any index is safe.
#[derive(Debug)]
struct Hints([AtomicU32; HINTS]);

impl Default for Hints {
    fn default() -> Self {
        Hints(std::array::from_fn(|_| AtomicU32::new(0)))
    }
}

impl Hints {
    /// The slot of `iova`'s page: a multiplicative hash, so pages a stride apart (as buffers
    /// often are) spread over the slots.
    fn slot(&self, iova: u64) -> &AtomicU32 {
        // Truncation intended: the top 10 bits.
        #[allow(clippy::cast_possible_truncation)]
        let i = ((iova >> 12).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 54) as usize;
        &self.0[i]
    }
}

/// A cached set of translations.
#[derive(Debug, Default)]
pub struct EndpointTlb {
    tables: RwLock<Tables>,
    /// Read-held by each [`TlbPin`]: an invalidation's acknowledgement waits for the write side.
    pins: RwLock<()>,
    hints: Hints,
    /// Ranges inserted since the last clear (changed under the write lock only).
    inserted: AtomicUsize,
}

impl EndpointTlb {
    /// The read lock. Recursive read: an access never waits behind a queued invalidation for a
    /// lock it could already take (no deadlock when one thread holds two translations at
    /// once); invalidations wait for every reader to finish.
    fn read(&self) -> RwLockReadGuard<'_, Tables> {
        self.tables.read_recursive()
    }

    /// The guest-physical address of `len` bytes at `iova` when one cached range holds them
    /// all and permits `access`; the access keeps the hold while it uses the address.
    pub fn hold(&self, iova: u64, len: usize, access: Permissions) -> Option<(TlbHold<'_>, u64)> {
        let end = iova.checked_add(len as u64)?;
        let tables = self.read();
        let s = tables.single(iova, end, &self.hints)?;
        if !s.allows(access) {
            return None;
        }
        let gpa = iova.wrapping_add(s.offset);
        Some((TlbHold { _lock: tables }, gpa))
    }

    /// A pin (see [`TlbPin`]); waits while an acknowledgement waits for earlier pins.
    pub fn pin(&self) -> TlbPin<'_> {
        TlbPin {
            tlb: self,
            _lock: self.pins.read(),
        }
    }

    /// Whether no pin is held now.
    pub(crate) fn unpinned(&self) -> bool {
        self.pins.try_write().is_some()
    }

    /// Returns once every pin held now has been dropped.
    pub(crate) fn wait_unpinned(&self) {
        drop(self.pins.write());
    }

    /// Looks `len` bytes at `iova` up for `access`; the iterator holds the read lock.
    pub fn lookup(
        &self,
        iova: u64,
        len: usize,
        access: Permissions,
    ) -> Result<IotlbIterator<TlbGuard<'_>>, IotlbFails> {
        let end = iova.saturating_add(len as u64);
        let single = RwLockReadGuard::try_map(self.read(), |t| {
            t.single(iova, end, &self.hints)
                .filter(|s| s.allows(access))
                .map(|s| &s.tlb)
        });
        let tables = match single {
            Ok(one) => return Iotlb::lookup(one, GuestAddress(iova), len, access),
            Err(tables) => tables,
        };
        Iotlb::lookup(
            RwLockReadGuard::map(tables, |t| &t.all),
            GuestAddress(iova),
            len,
            access,
        )
    }

    /// Caches `range`. Ranges without READ or WRITE are not cached. The byte at `u64::MAX` is
    /// never cached (vm-memory's ranges are half-open), and once `max_ranges` insertions
    /// collected the IOTLB is emptied first, so a long-running device's cache stays bounded.
    pub fn insert(&self, range: &TranslatedRange, max_ranges: usize) {
        self.insert_locked(&mut self.tables.write(), range, max_ranges);
    }

    /// As [`EndpointTlb::insert`] for each of `ranges`, all under one write lock, only if the
    /// lock is free now: `false` (nothing cached) when an access holds it, perhaps on the
    /// calling thread, which would wait for itself.
    pub(crate) fn try_insert(&self, ranges: &[TranslatedRange], max_ranges: usize) -> bool {
        let Some(mut tables) = self.tables.try_write() else {
            return false;
        };
        for r in ranges {
            self.insert_locked(&mut tables, r, max_ranges);
        }
        true
    }

    fn insert_locked(&self, tables: &mut Tables, range: &TranslatedRange, max_ranges: usize) {
        let perm = match (
            range.perm.contains(MapFlags::READ),
            range.perm.contains(MapFlags::WRITE),
        ) {
            (true, true) => Permissions::ReadWrite,
            (true, false) => Permissions::Read,
            (false, true) => Permissions::Write,
            (false, false) => return,
        };
        let last = range.last.min(u64::MAX - 1);
        if range.iova > last {
            return;
        }
        let Ok(length) = usize::try_from(last - range.iova + 1) else {
            return;
        };
        if self.inserted.load(Ordering::Relaxed) >= max_ranges {
            tables.clear();
            self.inserted.store(0, Ordering::Relaxed);
        }
        let (iova, paddr) = (GuestAddress(range.iova), GuestAddress(range.paddr));
        let mut one = Iotlb::new();
        // set_mapping cannot fail (it returns Ok unconditionally in vm-memory 0.18).
        let cached = tables.all.set_mapping(iova, paddr, length, perm).is_ok()
            && one.set_mapping(iova, paddr, length, perm).is_ok();
        // What the new range overlaps is superseded (the remainders stay in `all`).
        let at = tables.drop_singles(range.iova, last + 1);
        if cached {
            let single = Single {
                first: range.iova,
                end: last + 1,
                offset: range.paddr.wrapping_sub(range.iova),
                perm: perm as u8,
                tlb: one,
            };
            tables.singles.insert(at, single);
            self.inserted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops every cached translation overlapping `first..=last`, after the accesses using
    /// them have finished (they hold the read lock).
    pub fn invalidate(&self, first: u64, last: u64) {
        let mut tables = self.tables.write();
        if first == 0 && last >= u64::MAX - 1 {
            tables.clear();
            self.inserted.store(0, Ordering::Relaxed);
            return;
        }
        let last = last.min(u64::MAX - 1);
        if first > last {
            return;
        }
        if let Ok(length) = usize::try_from(last - first + 1) {
            tables.all.invalidate_mapping(GuestAddress(first), length);
        }
        tables.drop_singles(first, last + 1);
    }

    /// Drops everything.
    pub fn clear(&self) {
        self.invalidate(0, u64::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(iova: u64, last: u64, paddr: u64, perm: MapFlags) -> TranslatedRange {
        TranslatedRange {
            iova,
            last,
            paddr,
            perm,
        }
    }

    fn hit(t: &EndpointTlb, iova: u64, len: usize, access: Permissions) -> Option<Vec<u64>> {
        t.lookup(iova, len, access)
            .ok()
            .map(|it| it.map(|m| m.base.0).collect())
    }

    #[test]
    fn cached_ranges_translate_with_their_permissions_until_invalidated() {
        let t = EndpointTlb::default();
        t.insert(&range(0x1000, 0x1fff, 0x8000, MapFlags::READ), 16);
        assert_eq!(hit(&t, 0x1800, 4, Permissions::Read), Some(vec![0x8800]));
        assert_eq!(hit(&t, 0x1800, 4, Permissions::Write), None);
        assert_eq!(
            hit(&t, 0x1ffe, 4, Permissions::Read),
            None,
            "runs past the range"
        );
        t.invalidate(0x1fff, 0x1fff);
        assert_eq!(hit(&t, 0x1ffe, 1, Permissions::Read), Some(vec![0x8ffe]));
        assert_eq!(hit(&t, 0x1fff, 1, Permissions::Read), None);
        t.clear();
        assert_eq!(hit(&t, 0x1000, 1, Permissions::Read), None);
    }

    #[test]
    fn the_whole_space_and_the_last_byte_are_handled_without_overflow() {
        let t = EndpointTlb::default();
        t.insert(&range(0, u64::MAX, 0, MapFlags::READ | MapFlags::WRITE), 16);
        assert_eq!(
            hit(&t, u64::MAX - 0x10, 0x10, Permissions::ReadWrite),
            Some(vec![u64::MAX - 0x10])
        );
        t.invalidate(u64::MAX, u64::MAX);
        t.invalidate(0x1000, u64::MAX);
        assert_eq!(hit(&t, 0x1000, 1, Permissions::Read), None);
        assert_eq!(hit(&t, 0xfff, 1, Permissions::Read), Some(vec![0xfff]));
        // No permission at all: nothing cached.
        t.clear();
        t.insert(&range(0, 0xfff, 0, MapFlags::MMIO), 16);
        assert_eq!(hit(&t, 0, 1, Permissions::Read), None);
    }

    #[test]
    fn the_cache_is_emptied_when_its_bound_is_reached() {
        let t = EndpointTlb::default();
        for i in 0..4u64 {
            t.insert(
                &range(i << 12, (i << 12) | 0xfff, i << 20, MapFlags::READ),
                4,
            );
        }
        assert!(hit(&t, 0, 1, Permissions::Read).is_some());
        t.insert(
            &range(9 << 12, (9 << 12) | 0xfff, 9 << 20, MapFlags::READ),
            4,
        );
        assert_eq!(hit(&t, 0, 1, Permissions::Read), None, "emptied");
        assert!(hit(&t, 9 << 12, 1, Permissions::Read).is_some());
    }

    #[test]
    fn an_access_across_two_cached_ranges_is_answered_by_the_merged_table() {
        let t = EndpointTlb::default();
        t.insert(&range(0x1000, 0x1fff, 0x8000, MapFlags::READ), 16);
        t.insert(&range(0x2000, 0x2fff, 0x20000, MapFlags::READ), 16);
        assert_eq!(
            hit(&t, 0x1ff0, 0x20, Permissions::Read),
            Some(vec![0x8ff0, 0x20000])
        );
        // Adjacent in both spaces: one mapping, as vm-memory merges them.
        t.insert(&range(0x3000, 0x3fff, 0x21000, MapFlags::READ), 16);
        assert_eq!(
            hit(&t, 0x2ff0, 0x20, Permissions::Read),
            Some(vec![0x20ff0])
        );
    }

    #[test]
    fn a_partly_invalidated_range_keeps_only_what_is_left() {
        let t = EndpointTlb::default();
        t.insert(&range(0x1000, 0x3fff, 0x8000, MapFlags::READ), 16);
        t.invalidate(0x2000, 0x2fff);
        assert_eq!(hit(&t, 0x1ff8, 8, Permissions::Read), Some(vec![0x8ff8]));
        assert_eq!(hit(&t, 0x3000, 8, Permissions::Read), Some(vec![0xa000]));
        assert_eq!(hit(&t, 0x2000, 1, Permissions::Read), None);
        assert_eq!(hit(&t, 0x1fff, 2, Permissions::Read), None);
        t.invalidate(0x1000, 0x1000);
        assert_eq!(hit(&t, 0x1000, 1, Permissions::Read), None);
        assert_eq!(hit(&t, 0x1001, 1, Permissions::Read), Some(vec![0x8001]));
    }

    #[test]
    fn a_new_range_supersedes_what_it_overlaps() {
        let t = EndpointTlb::default();
        t.insert(&range(0x1000, 0x2fff, 0x8000, MapFlags::READ), 16);
        t.insert(
            &range(0x2000, 0x2fff, 0x20000, MapFlags::READ | MapFlags::WRITE),
            16,
        );
        assert_eq!(hit(&t, 0x2010, 8, Permissions::Write), Some(vec![0x20010]));
        assert_eq!(hit(&t, 0x2010, 8, Permissions::Read), Some(vec![0x20010]));
        assert_eq!(hit(&t, 0x1010, 8, Permissions::Read), Some(vec![0x8010]));
        assert_eq!(hit(&t, 0x1010, 8, Permissions::Write), None);
    }

    #[test]
    fn a_refused_access_reports_what_refused_it() {
        let t = EndpointTlb::default();
        t.insert(&range(0x1000, 0x1fff, 0x8000, MapFlags::READ), 16);
        let fails = t.lookup(0x1ff0, 0x20, Permissions::Write).unwrap_err();
        let at = |v: &[vm_memory::iommu::IovaRange]| {
            v.iter().map(|r| (r.base.0, r.length)).collect::<Vec<_>>()
        };
        assert_eq!(at(&fails.access_fails), [(0x1ff0, 0x10)]);
        assert_eq!(at(&fails.misses), [(0x2000, 0x10)]);
    }

    #[test]
    fn a_hold_is_given_inside_one_permitted_range_only() {
        let t = EndpointTlb::default();
        t.insert(&range(0x1000, 0x1fff, 0x8000, MapFlags::READ), 16);
        t.insert(&range(0x2000, 0x2fff, 0x9000, MapFlags::READ), 16);
        let gpa = |iova, len, access| t.hold(iova, len, access).map(|(_, g)| g);
        assert_eq!(gpa(0x1ff8, 8, Permissions::Read), Some(0x8ff8));
        assert_eq!(gpa(0x2000, 0x1000, Permissions::Read), Some(0x9000));
        assert_eq!(gpa(0x1ff8, 9, Permissions::Read), None, "two ranges");
        assert_eq!(gpa(0x1000, 8, Permissions::Write), None, "read-only");
        assert_eq!(gpa(0xfff, 1, Permissions::Read), None, "before the first");
        assert_eq!(gpa(0x3000, 1, Permissions::Read), None, "after the last");
        assert_eq!(gpa(u64::MAX, 2, Permissions::Read), None, "wraps");
        t.invalidate(0x2800, 0x2800);
        assert_eq!(gpa(0x2000, 1, Permissions::Read), None);
        assert_eq!(gpa(0x1000, 1, Permissions::Read), Some(0x8000));
    }

    #[test]
    fn stale_hints_only_cost_a_search() {
        let t = EndpointTlb::default();
        let gpa = |iova| t.hold(iova, 8, Permissions::Read).map(|(_, g)| g);
        t.insert(&range(0x1000, 0x1fff, 0x8000, MapFlags::READ), 64);
        t.insert(&range(0x3000, 0x3fff, 0x9000, MapFlags::READ), 64);
        assert_eq!(gpa(0x3000), Some(0x9000));
        // Indices shift under the hint of page 3's slot; page 0x3de hashes to that slot too.
        assert!(std::ptr::eq(t.hints.slot(0x3000), t.hints.slot(0x3de000)));
        t.insert(&range(0x2000, 0x2fff, 0xa000, MapFlags::READ), 64);
        t.insert(&range(0x3de000, 0x3defff, 0xb000, MapFlags::READ), 64);
        assert_eq!(gpa(0x3000), Some(0x9000));
        assert_eq!(gpa(0x3de000), Some(0xb000));
        assert_eq!(gpa(0x3008), Some(0x9008));
        t.invalidate(0x1000, 0x1fff);
        assert_eq!(gpa(0x3000), Some(0x9000));
        assert_eq!(gpa(0x3de000), Some(0xb000));
        t.invalidate(0x3000, 0x3fff);
        assert_eq!(gpa(0x3000), None);
        t.clear();
        assert_eq!(gpa(0x3de000), None);
    }
}
