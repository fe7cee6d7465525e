//! Fixtures shared by the emulated backend's unit tests.

use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

use super::EmulatedHost;
use crate::host::{AttachTarget, HostIommu, Perm, SpaceId};

/// Read-write.
pub(super) const RW: Perm = Perm::READ.union(Perm::WRITE);

fn mem() -> GuestMemoryAtomic<GuestMemoryMmap> {
    // 64 KiB of RAM at 0x10000 and 64 KiB at 0x30000, with a hole in between.
    GuestMemoryAtomic::new(
        GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0x1_0000), 0x1_0000),
            (GuestAddress(0x3_0000), 0x1_0000),
        ])
        .unwrap(),
    )
}

/// A host over [`mem`] with endpoint 7 attached to a fresh, empty space.
pub(super) fn host() -> (EmulatedHost, SpaceId) {
    let mut h = EmulatedHost::default();
    h.set_guest_memory(mem());
    let s = h.alloc_space().unwrap();
    h.attach(7, None, AttachTarget::Space(s)).unwrap();
    (h, s)
}
