//! One endpoint's (and PASID's) device-side IOTLB: vm-memory's `Iotlb` behind a lock that
//! accesses hold while they use a translation, so an invalidation waits for them.

use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{RwLock, RwLockReadGuard};
use virtio_iommu_spec::request::MapFlags;
use virtio_iommu_spec::translation::TranslatedRange;
use vm_memory::iommu::Iotlb;
use vm_memory::{GuestAddress, Permissions};

/// What an IOTLB is keyed by, as `INVALIDATE` addresses it (§3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TlbKey {
    /// Endpoint ID.
    pub endpoint: u32,
    /// PASID, or `None` for the endpoint's untagged accesses.
    pub pasid: Option<u32>,
}

/// A cached set of translations.
#[derive(Debug, Default)]
pub struct EndpointTlb {
    tlb: RwLock<Iotlb>,
    /// Ranges inserted since the last clear (changed under the write lock only).
    inserted: AtomicUsize,
}

impl EndpointTlb {
    /// The IOTLB for a lookup. Recursive read: an access never waits behind a queued
    /// invalidation for a lock it could already take (no deadlock when one thread holds two
    /// translations at once); invalidations wait for every reader to finish.
    pub fn read(&self) -> RwLockReadGuard<'_, Iotlb> {
        self.tlb.read_recursive()
    }

    /// Caches `range`. Ranges without READ or WRITE are not cached. The byte at `u64::MAX` is
    /// never cached (vm-memory's ranges are half-open), and once `max_ranges` insertions
    /// collected the IOTLB is emptied first, so a long-running device's cache stays bounded.
    pub fn insert(&self, range: &TranslatedRange, max_ranges: usize) {
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
        let mut tlb = self.tlb.write();
        if self.inserted.load(Ordering::Relaxed) >= max_ranges {
            tlb.invalidate_all();
            self.inserted.store(0, Ordering::Relaxed);
        }
        // set_mapping cannot fail (it returns Ok unconditionally in vm-memory 0.18).
        if tlb
            .set_mapping(
                GuestAddress(range.iova),
                GuestAddress(range.paddr),
                length,
                perm,
            )
            .is_ok()
        {
            self.inserted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops every cached translation overlapping `first..=last`, after the accesses using
    /// them have finished (they hold the read lock).
    pub fn invalidate(&self, first: u64, last: u64) {
        let mut tlb = self.tlb.write();
        if first == 0 && last >= u64::MAX - 1 {
            tlb.invalidate_all();
            self.inserted.store(0, Ordering::Relaxed);
            return;
        }
        let last = last.min(u64::MAX - 1);
        if first > last {
            return;
        }
        if let Ok(length) = usize::try_from(last - first + 1) {
            tlb.invalidate_mapping(GuestAddress(first), length);
        }
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
        Iotlb::lookup(t.read(), GuestAddress(iova), len, access)
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
}
