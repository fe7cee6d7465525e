//! A mapping as a guest kernel thinks of it: IOVA, physical address and size.

use virtio_iommu_spec::request::{Map, MapFlags, Request};

use crate::error::Error;

/// One IOVA → physical mapping in a domain, the unit of [`map`](crate::VirtIOIommu::map) and
/// [`map_batch`](crate::VirtIOIommu::map_batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Domain ID.
    pub domain: u32,
    /// First input (I/O virtual) address.
    pub iova: u64,
    /// Output (guest-physical) address of `iova`.
    pub paddr: u64,
    /// Size in bytes; a non-zero multiple of the granule.
    pub size: u64,
    /// Access permissions (and `MMIO` for device memory).
    pub flags: MapFlags,
}

impl Mapping {
    /// The last input address, inclusive, or `None` if the mapping is empty or wraps.
    #[must_use]
    pub fn iova_last(&self) -> Option<u64> {
        self.iova.checked_add(self.size.checked_sub(1)?)
    }

    /// Whether `iova` falls inside this mapping.
    #[must_use]
    pub fn contains(&self, iova: u64) -> bool {
        self.iova_last()
            .is_some_and(|last| iova >= self.iova && iova <= last)
    }

    /// The MAP request for this mapping.
    ///
    /// # Errors
    /// [`Error::EmptyRange`] if the size is zero or either range wraps past `u64::MAX`.
    pub fn to_request(&self) -> Result<Request, Error> {
        let virt_end = self.iova_last().ok_or(Error::EmptyRange)?;
        // The output range must not wrap either.
        self.paddr
            .checked_add(self.size - 1)
            .ok_or(Error::EmptyRange)?;
        Ok(Request::Map(Map {
            domain: self.domain,
            virt_start: self.iova,
            virt_end,
            phys_start: self.paddr,
            flags: self.flags,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(iova: u64, paddr: u64, size: u64) -> Mapping {
        Mapping {
            domain: 1,
            iova,
            paddr,
            size,
            flags: MapFlags::READ,
        }
    }

    #[test]
    fn request_uses_an_inclusive_end() {
        assert_eq!(
            m(0x1000, 0x8000, 0x2000).to_request(),
            Ok(Request::Map(Map {
                domain: 1,
                virt_start: 0x1000,
                virt_end: 0x2fff,
                phys_start: 0x8000,
                flags: MapFlags::READ,
            }))
        );
        // The very top of the address space is reachable.
        assert_eq!(m(u64::MAX - 0xfff, 0, 0x1000).iova_last(), Some(u64::MAX));
    }

    #[test]
    fn empty_and_wrapping_ranges_are_refused() {
        assert_eq!(m(0x1000, 0, 0).to_request(), Err(Error::EmptyRange));
        assert_eq!(m(u64::MAX, 0, 2).to_request(), Err(Error::EmptyRange));
        assert_eq!(m(0, u64::MAX, 2).to_request(), Err(Error::EmptyRange));
        assert!(m(0x1000, 0, 0x1000).contains(0x1fff));
        assert!(!m(0x1000, 0, 0x1000).contains(0x2000));
        assert!(!m(0x1000, 0, 0).contains(0x1000));
    }
}
