//! The one place that decides how the device reaches guest memory.
//!
//! vhost-user-backend 0.24 hands a backend `GuestMemoryAtomic<GuestMemoryMmap>` (guest-physical
//! memory) and keeps its rings' `VringState` on that type. The backend therefore wraps at the
//! point where it touches queues and buffers: every ring, descriptor and buffer access of this
//! crate takes a `&M: GuestMemory` from [`DeviceMemory::with`], which is either the plain mapping
//! (unconfined) or the [`Confinement`]'s memory over it, which translates each access's IOVA
//! (confined: the client crate's `ConfinedMemory`). virtio-queue's `Queue` methods all take the memory per call, so the library's
//! `VringState` is used only for its queue state and eventfds.

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

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
    fn run<M: GuestMemory>(self, mem: &M) -> Self::Output;
}

/// A split queue's three areas (descriptor table, avail ring, used ring, each with its event
/// field) and the access the device makes to each.
#[derive(Debug, Clone, Copy)]
pub struct RingAreas(pub [(GuestAddress, usize, Permissions); 3]);

impl RingAreas {
    /// The areas of `q` at its size.
    #[must_use]
    pub fn of(q: &Queue) -> Self {
        let n = usize::from(q.size());
        RingAreas([
            (GuestAddress(q.desc_table()), 16 * n, Permissions::Read),
            (GuestAddress(q.avail_ring()), 6 + 2 * n, Permissions::Read),
            (GuestAddress(q.used_ring()), 6 + 8 * n, Permissions::Write),
        ])
    }
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

    /// Runs `f` with the memory, the queue's `rings` translated once when confined; `None`
    /// before the first SET_MEM_TABLE.
    pub fn with<F: WithMemory>(&self, rings: &RingAreas, f: F) -> Option<F::Output> {
        match self {
            DeviceMemory::None => None,
            DeviceMemory::Direct(m) => Some(f.run(m)),
            DeviceMemory::Translated(m) => Some(I::with_rings(m, rings, f)),
        }
    }
}
