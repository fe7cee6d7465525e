//! `Confinement`: what a confined device's accesses go through, chosen by type.

use std::fmt::Debug;

use virtio_iommu_client::{ConfinedMemory, Translator};
use vm_memory::{GuestMemory, GuestMemoryMmap};

use crate::memory::Unconfined;

/// Makes the memory a confined device reaches guest memory through, once the frontend's memory
/// table is known.
pub trait Confinement: Debug + Clone + Send + Sync + 'static {
    /// Guest memory at the device's I/O virtual addresses.
    type Memory: GuestMemory + Debug + Send + Sync;

    /// `mmap` (guest-physical) as the device may reach it.
    fn confine(&self, mmap: GuestMemoryMmap) -> Self::Memory;
}

/// The daemon's translations, through the client crate's `ConfinedMemory` (an access inside one
/// cached range costs one search of the IOTLB; the rest goes through `IommuMemory`).
impl Confinement for Translator {
    type Memory = ConfinedMemory<GuestMemoryMmap>;

    fn confine(&self, mmap: GuestMemoryMmap) -> Self::Memory {
        ConfinedMemory::new(mmap, self.clone())
    }
}

impl Confinement for Unconfined {
    type Memory = GuestMemoryMmap;

    fn confine(&self, _mmap: GuestMemoryMmap) -> Self::Memory {
        match *self {}
    }
}
