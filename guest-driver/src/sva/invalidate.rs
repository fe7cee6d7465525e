//! INVALIDATE helpers: what to send after changing a bound table.

use virtio_drivers::transport::Transport;
use virtio_drivers::Hal;
use virtio_iommu_spec::ext::{InvalCaches, InvalScope};
use virtio_iommu_spec::request::Invalidate;

use crate::device::VirtIOIommu;
use crate::error::Error;

/// The translation caches: IOTLB and device IOTLBs (ATS).
pub const TLB_CACHES: InvalCaches = InvalCaches::IOTLB.union(InvalCaches::DEV_IOTLB);
/// Every cache: the TLBs and the PASID-table (CD) caches.
pub const ALL_CACHES: InvalCaches = TLB_CACHES.union(InvalCaches::PASID);

/// The INVALIDATE of `[va, va + size)` of `pasid`: the range widened to whole 4 KiB pages,
/// then expressed in the largest granule (1 GiB, 2 MiB, 4 KiB) both its ends are aligned to.
/// Not marked leaf-only, since unmapping may free tables.
///
/// # Errors
/// [`Error::EmptyRange`] for a zero size or a range past `u64::MAX`.
pub fn range_invalidation(
    domain: u32,
    pasid: u32,
    va: u64,
    size: u64,
) -> Result<Invalidate, Error> {
    let last = size
        .checked_sub(1)
        .and_then(|s| va.checked_add(s))
        .ok_or(Error::EmptyRange)?;
    let start = va & !0xfff;
    let last = last | 0xfff;
    // `last + 1` is 2^64 for a range that ends at the top: aligned to everything.
    let end_aligned = |g: u32| last.checked_add(1).is_none_or(|e| e % (1u64 << g) == 0);
    let granule = [30u32, 21]
        .into_iter()
        .find(|&g| start % (1u64 << g) == 0 && end_aligned(g))
        .unwrap_or(12);
    let nr_pages = ((last - start) >> granule) + 1;
    Ok(Invalidate {
        domain,
        caches: TLB_CACHES,
        scope: InvalScope::Range {
            pasid: Some(pasid),
            start,
            nr_pages,
            // `granule` is 12, 21 or 30.
            #[allow(clippy::cast_possible_truncation)]
            granule: granule as u8,
        },
        archid: None,
        leaf: false,
    })
}

impl<H: Hal, T: Transport> VirtIOIommu<H, T> {
    /// Invalidates the IOTLB and device IOTLBs for `[va, va + size)` of `pasid` in `domain`
    /// (see [`range_invalidation`]): send after map, unmap or protect on a bound table.
    ///
    /// # Errors
    /// [`Error::EmptyRange`], or the request's errors.
    pub fn invalidate_range(
        &mut self,
        domain: u32,
        pasid: u32,
        va: u64,
        size: u64,
    ) -> Result<(), Error> {
        self.invalidate(&range_invalidation(domain, pasid, va, size)?)
    }

    /// Invalidates everything cached for `pasid` in `domain`: its CD / PASID-table entry and
    /// its TLB entries. Send after [`CdTable::set_cd`](super::CdTable::set_cd) or
    /// [`clear_cd`](super::CdTable::clear_cd), or after large table changes.
    ///
    /// # Errors
    /// The request's errors.
    pub fn invalidate_pasid(&mut self, domain: u32, pasid: u32) -> Result<(), Error> {
        self.invalidate(&Invalidate {
            domain,
            caches: ALL_CACHES,
            scope: InvalScope::Pasid(pasid),
            archid: None,
            leaf: false,
        })
    }

    /// Invalidates every cache of `domain`, all PASIDs.
    ///
    /// # Errors
    /// The request's errors.
    pub fn invalidate_domain(&mut self, domain: u32) -> Result<(), Error> {
        self.invalidate(&Invalidate {
            domain,
            caches: ALL_CACHES,
            scope: InvalScope::Domain,
            archid: None,
            leaf: false,
        })
    }
}
