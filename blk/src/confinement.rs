//! `Confinement`: what a confined device's accesses go through, chosen by type.

use std::fmt::Debug;

use virtio_iommu_client::{ConfinedMemory, Translator};
use vm_memory::{GuestMemory, GuestMemoryMmap};

use crate::memory::{RingAreas, Unconfined, WithMemory};

/// Makes the memory a confined device reaches guest memory through, once the frontend's memory
/// table is known.
pub trait Confinement: Debug + Clone + Send + Sync + 'static {
    /// Guest memory at the device's I/O virtual addresses.
    type Memory: GuestMemory + Debug + Send + Sync;

    /// `mmap` (guest-physical) as the device may reach it.
    fn confine(&self, mmap: GuestMemoryMmap) -> Self::Memory;

    /// Runs `f` with `mem` as one drain of a queue reaches it (with the queue's `areas`
    /// translated once for the run).
    fn with_rings<F: WithMemory>(mem: &Self::Memory, areas: &RingAreas, f: F) -> F::Output;
}

/// The daemon's translations, through the client crate's `ConfinedMemory` (an access inside one
/// cached range costs one search of the IOTLB; the rest goes through `IommuMemory`), in a drain
/// through its `PinnedMemory`: the rings translated once per drain, the buffers looked up under
/// the same pin.
impl Confinement for Translator {
    type Memory = ConfinedMemory<GuestMemoryMmap>;

    fn confine(&self, mmap: GuestMemoryMmap) -> Self::Memory {
        ConfinedMemory::new(mmap, self.clone())
    }

    fn with_rings<F: WithMemory>(mem: &Self::Memory, areas: &RingAreas, f: F) -> F::Output {
        f.run(&mem.pinned(&areas.0))
    }
}

impl Confinement for Unconfined {
    type Memory = GuestMemoryMmap;

    fn confine(&self, _mmap: GuestMemoryMmap) -> Self::Memory {
        match *self {}
    }

    fn with_rings<F: WithMemory>(mem: &Self::Memory, _areas: &RingAreas, f: F) -> F::Output {
        f.run(mem)
    }
}
