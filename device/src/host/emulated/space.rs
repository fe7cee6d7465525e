//! One emulated address space: IOVA intervals → guest-physical, like an iommufd IOAS, held in
//! the shared [`MappingStore`] (the engine keeps no copy of them).

use rustc_hash::FxHashMap;

use virtio_iommu_spec::request::MapFlags;

use crate::host::{HostError, Mapping, MappingStore, Perm, Removed, SpaceId};

/// A mapping of the space, keyed in the tree by its first IOVA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostMapping {
    /// First IOVA.
    pub iova: u64,
    /// Last IOVA, inclusive.
    pub last: u64,
    /// Guest-physical address of `iova`.
    pub phys: u64,
    /// Permissions.
    pub perm: Perm,
}

impl HostMapping {
    /// Whether the mapping translates `iova`.
    #[must_use]
    pub const fn contains(&self, iova: u64) -> bool {
        self.iova <= iova && iova <= self.last
    }
}

/// An address space: non-overlapping intervals, O(log n) per operation. Its tree is the only
/// copy of the mappings: the engine checks its rules against it too.
#[derive(Debug, Default)]
pub struct AddressSpace {
    store: MappingStore,
    /// Attachments and nested tables pointing at this space (iommufd refuses to destroy a
    /// busy IOAS).
    users: u32,
}

fn flags(perm: Perm) -> MapFlags {
    MapFlags::from_bits_truncate(perm.bits())
}

fn host_mapping(m: Mapping) -> HostMapping {
    HostMapping {
        iova: m.virt_start,
        last: m.virt_last,
        phys: m.phys_start,
        perm: Perm::from_bits_truncate(m.flags.bits()),
    }
}

impl AddressSpace {
    /// Adds `[iova, last] → phys`.
    ///
    /// # Errors
    /// `Invalid` for an empty range, an output range past 2^64, or an overlap.
    pub fn map(&mut self, iova: u64, last: u64, phys: u64, perm: Perm) -> Result<(), HostError> {
        if last < iova || phys.checked_add(last - iova).is_none() {
            return Err(HostError::Invalid);
        }
        if self.store.overlaps(iova, last) {
            return Err(HostError::Invalid);
        }
        self.store.insert(Mapping {
            virt_start: iova,
            virt_last: last,
            phys_start: phys,
            flags: flags(perm),
        });
        Ok(())
    }

    /// Removes the mappings wholly inside `[iova, last]`.
    pub fn unmap(&mut self, iova: u64, last: u64) -> Removed {
        self.store.remove_range(iova, last)
    }

    /// The mapping that translates `iova`, if any.
    #[must_use]
    pub fn lookup(&self, iova: u64) -> Option<HostMapping> {
        self.store.lookup(iova).map(host_mapping)
    }

    /// The mappings, as the guest sent them.
    #[must_use]
    pub fn store(&self) -> &MappingStore {
        &self.store
    }

    /// Number of mappings.
    #[must_use]
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// Whether the space has no mapping.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// All mappings in IOVA order.
    pub fn iter(&self) -> impl Iterator<Item = HostMapping> + '_ {
        self.store.iter().map(host_mapping)
    }
}

/// Every address space of the host, with their handles and the cap on their number.
#[derive(Debug)]
pub struct AddressSpaces {
    /// Fx, not SipHash: the keys are handles this host hands out, and every MAP, UNMAP and
    /// IOTLB miss looks one up.
    spaces: FxHashMap<SpaceId, AddressSpace>,
    next: u32,
    max: usize,
}

impl AddressSpaces {
    /// No space yet; at most `max` at a time.
    #[must_use]
    pub fn new(max: usize) -> Self {
        AddressSpaces {
            spaces: FxHashMap::default(),
            next: 1,
            max,
        }
    }

    /// Allocates an empty space.
    ///
    /// # Errors
    /// `NoMem` at the cap.
    pub fn alloc(&mut self) -> Result<SpaceId, HostError> {
        if self.spaces.len() >= self.max {
            return Err(HostError::NoMem);
        }
        // Terminates: fewer than 2^32 spaces can be live, so some ID is free.
        loop {
            let id = SpaceId(self.next);
            self.next = self.next.wrapping_add(1);
            if let std::collections::hash_map::Entry::Vacant(v) = self.spaces.entry(id) {
                v.insert(AddressSpace::default());
                return Ok(id);
            }
        }
    }

    /// Destroys an unused space.
    ///
    /// # Errors
    /// `Invalid` for an unknown space or one still in use.
    pub fn destroy(&mut self, id: SpaceId) -> Result<(), HostError> {
        match self.spaces.get(&id) {
            Some(s) if s.users == 0 => {
                self.spaces.remove(&id);
                Ok(())
            }
            _ => Err(HostError::Invalid),
        }
    }

    /// The space behind a handle.
    #[must_use]
    pub fn get(&self, id: SpaceId) -> Option<&AddressSpace> {
        self.spaces.get(&id)
    }

    /// The space behind a handle, to edit its mappings.
    ///
    /// # Errors
    /// `Invalid` for an unknown space.
    pub fn get_mut(&mut self, id: SpaceId) -> Result<&mut AddressSpace, HostError> {
        self.spaces.get_mut(&id).ok_or(HostError::Invalid)
    }

    /// Counts one more user of `id` (an attachment or a nested table on it).
    ///
    /// # Errors
    /// `Invalid` for an unknown space.
    pub fn hold(&mut self, id: SpaceId) -> Result<(), HostError> {
        self.get_mut(id)?.users += 1;
        Ok(())
    }

    /// Ends one use of `id`.
    pub fn release(&mut self, id: SpaceId) {
        if let Some(s) = self.spaces.get_mut(&id) {
            s.users = s.users.saturating_sub(1);
        }
    }

    /// Number of live spaces.
    #[must_use]
    pub fn len(&self) -> usize {
        self.spaces.len()
    }

    /// Whether no space is live.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.spaces.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RW: Perm = Perm::READ.union(Perm::WRITE);

    #[test]
    fn map_lookup_unmap() {
        let mut s = AddressSpace::default();
        s.map(0x1000, 0x1fff, 0x8000, RW).unwrap();
        s.map(0x3000, 0x3fff, 0x9000, Perm::READ).unwrap();
        assert_eq!(s.map(0x1800, 0x27ff, 0, RW), Err(HostError::Invalid));
        assert_eq!(s.map(0x0, 0x1000, 0, RW), Err(HostError::Invalid));
        assert_eq!(s.map(0x2000, 0x1fff, 0, RW), Err(HostError::Invalid));
        assert_eq!(s.lookup(0x1abc).unwrap().phys, 0x8000);
        assert_eq!(s.lookup(0x2000), None);
        assert_eq!(s.lookup(0xfff), None);
        // Only whole mappings go: [0x1000, 0x37ff] holds the first one wholly.
        assert_eq!(s.unmap(0x1000, 0x37ff).bytes, 0x1000);
        assert_eq!(s.len(), 1);
        assert_eq!(s.unmap(0, u64::MAX).bytes, 0x1000);
        assert!(s.is_empty());
    }

    #[test]
    fn extremes() {
        let mut s = AddressSpace::default();
        s.map(0, u64::MAX, 0, RW).unwrap();
        assert_eq!(s.lookup(u64::MAX).unwrap().last, u64::MAX);
        assert_eq!(s.unmap(0, u64::MAX).bytes, u64::MAX);
        assert_eq!(
            s.map(0x1000, 0x1fff, u64::MAX - 0xffe, RW),
            Err(HostError::Invalid)
        );
        s.map(0x1000, 0x1fff, u64::MAX - 0xfff, RW).unwrap();
    }
}
