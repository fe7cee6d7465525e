//! The one place that decides how the device reaches guest memory.
//!
//! vhost-user-backend 0.24 hands a backend `GuestMemoryAtomic<GuestMemoryMmap>` (guest-physical
//! memory) and keeps its rings' `VringState` on that type. The backend therefore wraps at the
//! point where it touches queues and buffers: every ring, descriptor and buffer access of this
//! crate takes a `&M: GuestMemory` from [`DeviceMemory::with`], which is either the plain mapping
//! (unconfined) or the [`Confinement`]'s memory over it, which translates each access's IOVA
//! (confined: the client crate's `ConfinedMemory`). virtio-queue's `Queue` methods all take the memory per call, so the library's
//! `VringState` is used only for its queue state and eventfds.

use vm_memory::GuestMemoryMmap;

use crate::confinement::Confinement;

/// A [`Confinement`] that cannot exist: the type parameter of a device that is never confined.
#[derive(Debug, Clone, Copy)]
pub enum Unconfined {}

/// Guest memory as the device sees it.
#[derive(Debug)]
pub enum DeviceMemory<I: Confinement> {
    /// No SET_MEM_TABLE yet: nothing is reachable.
    None,
    /// Guest-physical addresses (no IOMMU).
    Direct(GuestMemoryMmap),
    /// I/O virtual addresses, each access translated by the IOMMU.
    Translated(I::Memory),
}

/// Something to run with the device's memory, whatever its type.
pub trait WithMemory {
    /// What the run gives back.
    type Output;
    /// Runs with `mem`.
    fn run<M: vm_memory::GuestMemory>(self, mem: &M) -> Self::Output;
}

impl<I: Confinement> DeviceMemory<I> {
    /// The memory after a SET_MEM_TABLE of `mmap`: confined by `iommu` if there is one.
    pub fn update(&mut self, mmap: GuestMemoryMmap, iommu: Option<&I>) {
        *self = match iommu {
            Some(iommu) => DeviceMemory::Translated(iommu.confine(mmap)),
            None => DeviceMemory::Direct(mmap),
        };
    }

    /// Whether accesses are translated.
    #[must_use]
    pub fn translated(&self) -> bool {
        matches!(self, DeviceMemory::Translated(_))
    }

    /// Runs `f` with the memory; `None` before the first SET_MEM_TABLE.
    pub fn with<F: WithMemory>(&self, f: F) -> Option<F::Output> {
        match self {
            DeviceMemory::None => None,
            DeviceMemory::Direct(m) => Some(f.run(m)),
            DeviceMemory::Translated(m) => Some(f.run(m)),
        }
    }
}
