//! `ConfinedMemory`: guest memory at one endpoint's IOVAs, like
//! `IommuMemory<M, Translator>` but with a cheaper hit.
//!
//! `IommuMemory` asks `Iommu::translate` for every access, and that must answer with vm-memory's
//! `IotlbIterator`, made only by `Iotlb::lookup` (several range-map searches even in an `Iotlb`
//! of one entry). An access that one cached range holds whole needs none of that: its
//! guest-physical address is one binary search away ([`EndpointTlb::hold`]), and the access
//! goes straight to the backend's slices. Everything else (an access across ranges, a miss, a
//! refused access) goes through the `IommuMemory` inside, i.e. `Translator`'s `Iommu`, which
//! asks the daemon. Either way the slices are used while the iterator holds the IOTLB's read
//! lock, so an `INVALIDATE` is acknowledged only after the accesses using its translations
//! ended, as with `IommuMemory`.

use std::iter::FusedIterator;

use vm_memory::guest_memory::{GuestMemorySliceIterator, Result as GuestMemoryResult};
use vm_memory::{
    bitmap, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryRegion, IommuMemory,
    Permissions, VolatileSlice,
};

use crate::endpoint_tlb::TlbHold;
use crate::pinned_memory::PinnedMemory;
use crate::translator::Translator;

/// Guest memory `M` as the endpoint of `translator` reaches it: every access at an IOVA,
/// translated (and refused) as the daemon says. No dirty-page logging (its bitmap type is
/// `()`), which `IommuMemory` would keep per IOVA.
#[derive(Debug, Clone)]
pub struct ConfinedMemory<M: GuestMemoryBackend>
where
    M::R: GuestMemoryRegion<B = ()>,
{
    slow: IommuMemory<M, Translator>,
}

impl<M: GuestMemoryBackend> ConfinedMemory<M>
where
    M::R: GuestMemoryRegion<B = ()>,
{
    /// `backend` (guest-physical memory) reached through `translator`.
    pub fn new(backend: M, translator: Translator) -> Self {
        Self {
            slow: IommuMemory::new(backend, translator, true, ()),
        }
    }

    /// The same translator over other guest-physical memory (after a new memory table).
    #[must_use]
    pub fn with_replaced_backend(&self, backend: M) -> Self {
        Self {
            slow: self.slow.with_replaced_backend(backend),
        }
    }

    /// A view with `areas` (IOVA, length, access) translated once for as long as it lives:
    /// for a queue's rings during one drain ([`PinnedMemory`]).
    #[must_use]
    pub fn pinned(&self, areas: &[(GuestAddress, usize, Permissions)]) -> PinnedMemory<'_, M> {
        PinnedMemory::new(self, areas)
    }

    /// The translator.
    #[must_use]
    pub fn translator(&self) -> &Translator {
        self.slow.iommu()
    }

    /// The guest-physical memory underneath.
    #[must_use]
    pub fn backend(&self) -> &M {
        self.slow.get_backend()
    }
}

impl<M: GuestMemoryBackend> GuestMemory for ConfinedMemory<M>
where
    M::R: GuestMemoryRegion<B = ()>,
{
    type PhysicalMemory = M;
    type Bitmap = ();

    fn check_range(&self, addr: GuestAddress, count: usize, access: Permissions) -> bool {
        match self.translator().tlb().hold(addr.0, count, access) {
            Some((_hold, gpa)) => {
                GuestMemoryBackend::check_range(self.backend(), GuestAddress(gpa), count)
            }
            None => self.slow.check_range(addr, count, access),
        }
    }

    fn get_slices<'a>(
        &'a self,
        addr: GuestAddress,
        count: usize,
        access: Permissions,
    ) -> GuestMemoryResult<impl GuestMemorySliceIterator<'a, bitmap::BS<'a, ()>>> {
        self.slices(None, addr, count, access)
    }
}

impl<M: GuestMemoryBackend> ConfinedMemory<M>
where
    M::R: GuestMemoryRegion<B = ()>,
{
    /// The slices of `count` bytes at `addr`: at `pinned` (their guest-physical address under a
    /// pin, [`PinnedMemory`]) if given, else from the range that holds them all, else through
    /// `IommuMemory`.
    #[inline]
    pub(crate) fn slices<'a>(
        &'a self,
        pinned: Option<u64>,
        addr: GuestAddress,
        count: usize,
        access: Permissions,
    ) -> GuestMemoryResult<impl GuestMemorySliceIterator<'a, bitmap::BS<'a, ()>>> {
        if count > 0 {
            if let Some(gpa) = pinned {
                return Ok(Slices::Pinned(GuestMemoryBackend::get_slices(
                    self.backend(),
                    GuestAddress(gpa),
                    count,
                )));
            }
            if let Some((hold, gpa)) = self.translator().tlb().hold(addr.0, count, access) {
                return Ok(Slices::Held {
                    _hold: hold,
                    slices: GuestMemoryBackend::get_slices(
                        self.backend(),
                        GuestAddress(gpa),
                        count,
                    ),
                });
            }
        }
        Ok(Slices::Translated(Box::new(
            self.slow.get_slices(addr, count, access)?,
        )))
    }
}

/// The slices of one access: from a held range, from an area a pin holds
/// ([`PinnedMemory`]), or from `IommuMemory` (boxed: its iterator is large and only
/// taken after a miss, while the others stay a few words, which every access moves).
enum Slices<'a, H, T> {
    Held {
        /// Keeps the translation valid while the slices are used.
        _hold: TlbHold<'a>,
        slices: H,
    },
    Pinned(H),
    Translated(Box<T>),
}

impl<'a, H, T> Iterator for Slices<'a, H, T>
where
    H: Iterator<Item = GuestMemoryResult<VolatileSlice<'a, ()>>>,
    T: Iterator<Item = GuestMemoryResult<VolatileSlice<'a, ()>>>,
{
    type Item = GuestMemoryResult<VolatileSlice<'a, ()>>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Slices::Held { slices, .. } | Slices::Pinned(slices) => slices.next(),
            Slices::Translated(t) => t.next(),
        }
    }
}

/// Every kind is fused (vm-memory's slice iterators are).
impl<'a, H, T> FusedIterator for Slices<'a, H, T>
where
    H: FusedIterator<Item = GuestMemoryResult<VolatileSlice<'a, ()>>>,
    T: FusedIterator<Item = GuestMemoryResult<VolatileSlice<'a, ()>>>,
{
}

impl<'a, H, T> GuestMemorySliceIterator<'a, ()> for Slices<'a, H, T>
where
    H: FusedIterator<Item = GuestMemoryResult<VolatileSlice<'a, ()>>>,
    T: FusedIterator<Item = GuestMemoryResult<VolatileSlice<'a, ()>>>,
{
}
