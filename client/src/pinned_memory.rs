//! `PinnedMemory`: a [`ConfinedMemory`] whose queue rings are translated once, under one
//! [`TlbPin`], for many accesses.
//!
//! A device reads and writes its rings several times per request (avail index and entry, each
//! descriptor, used entry and index). Through `ConfinedMemory` each of those is an IOTLB lookup
//! under its read lock (two atomic read-modify-writes); here the rings are looked up when the
//! view is made and every access inside them goes straight to guest-physical memory. Other
//! accesses inside one cached range (buffers, an indirect table) are looked up under the same
//! pin, hold no lock while they copy, and the range found last is remembered; the rest (a miss,
//! an access across ranges, a refusal) goes through the `ConfinedMemory`, misses included: the
//! pin does not block the reader thread that delivers the daemon's replies.

use std::cell::Cell;

use vm_memory::guest_memory::{GuestMemorySliceIterator, Result as GuestMemoryResult};
use vm_memory::{
    bitmap, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryRegion, Permissions,
};

use crate::confined_memory::ConfinedMemory;
use crate::endpoint_tlb::TlbPin;

/// Ring areas a view holds (a split queue has three).
pub const RING_AREAS: usize = 3;

/// One area translated under the pin: `iova..end` at `gpa`.
#[derive(Debug, Clone, Copy)]
struct Area {
    iova: u64,
    /// One past its last IOVA.
    end: u64,
    gpa: u64,
    perm: u8,
}

impl Area {
    /// Holds nothing: no access of at least one byte is inside it.
    const NONE: Area = Area {
        iova: u64::MAX,
        end: 0,
        gpa: 0,
        perm: 0,
    };

    fn new(iova: u64, len: usize, access: Permissions, gpa: Option<u64>) -> Area {
        match (gpa, iova.checked_add(len as u64)) {
            (Some(gpa), Some(end)) if len > 0 => Area {
                iova,
                end,
                gpa,
                perm: access as u8,
            },
            _ => Area::NONE,
        }
    }

    /// The guest-physical address of `addr..end` if the area holds it and permits `access`.
    #[inline(always)]
    fn gpa(&self, addr: u64, end: u64, access: u8) -> Option<u64> {
        (self.iova <= addr && end <= self.end && self.perm & access == access)
            .then(|| self.gpa.wrapping_add(addr - self.iova))
    }
}

/// Guest memory at the endpoint's IOVAs with a queue's rings translated for as long as the view
/// lives (its pin delays the acknowledgement of an `INVALIDATE` of them): made per drain of a
/// queue.
#[derive(Debug)]
pub struct PinnedMemory<'a, M: GuestMemoryBackend>
where
    M::R: GuestMemoryRegion<B = ()>,
{
    confined: &'a ConfinedMemory<M>,
    pin: TlbPin<'a>,
    rings: [Area; RING_AREAS],
    /// The cached range the last access outside the rings found (a request's header and
    /// status often share one): looked up under the pin, so valid as long as it.
    recent: Cell<Area>,
}

impl<'a, M: GuestMemoryBackend> PinnedMemory<'a, M>
where
    M::R: GuestMemoryRegion<B = ()>,
{
    /// Pins `confined`'s IOTLB and translates each `(iova, len, access)` ring area that one
    /// cached range holds; an area it does not (not cached yet, or split) is reached access by
    /// access through `confined`, as are areas past [`RING_AREAS`].
    pub(crate) fn new(
        confined: &'a ConfinedMemory<M>,
        rings: &[(GuestAddress, usize, Permissions)],
    ) -> Self {
        let pin = confined.translator().tlb().pin();
        let mut held = [Area::NONE; RING_AREAS];
        let rings = &rings[..rings.len().min(RING_AREAS)];
        pin.resolve(rings.iter().map(|&(a, l, p)| (a.0, l, p)), |i, gpa| {
            let (iova, len, access) = rings[i];
            held[i] = Area::new(iova.0, len, access, gpa);
        });
        PinnedMemory {
            confined,
            pin,
            rings: held,
            recent: Cell::new(Area::NONE),
        }
    }

    /// How many ring areas are translated under the pin.
    #[must_use]
    pub fn pinned_rings(&self) -> usize {
        self.rings.iter().filter(|a| a.end != 0).count()
    }

    /// The guest-physical address of `count` (at least one) bytes at `addr` inside one pinned
    /// ring area, or inside one cached range (looked up under the pin, the last one found
    /// remembered), that permits `access`.
    #[inline(always)]
    fn pinned(&self, addr: u64, count: usize, access: Permissions) -> Option<u64> {
        let end = addr.checked_add(count as u64)?;
        let access = access as u8;
        if let Some(gpa) = self.rings.iter().find_map(|a| a.gpa(addr, end, access)) {
            return Some(gpa);
        }
        if let Some(gpa) = self.recent.get().gpa(addr, end, access) {
            return Some(gpa);
        }
        let (first, last_end, gpa, perm) = self.pin.range(addr, count)?;
        let found = Area {
            iova: first,
            end: last_end,
            gpa,
            perm,
        };
        self.recent.set(found);
        found.gpa(addr, end, access)
    }
}

impl<M: GuestMemoryBackend> GuestMemory for PinnedMemory<'_, M>
where
    M::R: GuestMemoryRegion<B = ()>,
{
    type PhysicalMemory = M;
    type Bitmap = ();

    fn check_range(&self, addr: GuestAddress, count: usize, access: Permissions) -> bool {
        match self.pinned(addr.0, count.max(1), access) {
            Some(gpa) => {
                GuestMemoryBackend::check_range(self.confined.backend(), GuestAddress(gpa), count)
            }
            None => self.confined.check_range(addr, count, access),
        }
    }

    fn get_slices<'b>(
        &'b self,
        addr: GuestAddress,
        count: usize,
        access: Permissions,
    ) -> GuestMemoryResult<impl GuestMemorySliceIterator<'b, bitmap::BS<'b, ()>>> {
        let pinned = self.pinned(addr.0, count, access);
        self.confined.slices(pinned, addr, count, access)
    }
}
