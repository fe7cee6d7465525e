//! VT-d first-stage encoders: the driver data of a nested HWPT and its invalidation entries.

use iommufd_bindings as b;
use virtio_iommu_spec::ext::{InvalScope, VtdFlags};
use virtio_iommu_spec::request::Invalidate;

use crate::host::HostError;

/// VT-d first-stage invalidation entries (`struct iommu_hwpt_vtd_s1_invalidate`) for `inval`.
pub(super) fn vtd_entries(inval: &Invalidate) -> Result<Vec<u8>, HostError> {
    let (addr, npages) = match inval.scope {
        InvalScope::Domain | InvalScope::Pasid(_) => (0, u64::MAX),
        InvalScope::Range {
            start,
            nr_pages,
            granule,
            ..
        } => {
            let shift = granule.checked_sub(12).ok_or(HostError::Invalid)?;
            let pages = 1u64
                .checked_shl(u32::from(shift))
                .and_then(|p| p.checked_mul(nr_pages))
                .filter(|_| shift < 64);
            match pages {
                Some(n) if n > 0 => (start & !0xfff, n),
                Some(_) => return Ok(Vec::new()),
                // More pages than can be counted: flush everything.
                None => (0, u64::MAX),
            }
        }
    };
    let leaf = if inval.leaf {
        b::iommu_hwpt_vtd_s1_invalidate_flags_IOMMU_VTD_INV_FLAGS_LEAF
    } else {
        0
    };
    let mut e = Vec::with_capacity(24);
    e.extend_from_slice(&addr.to_ne_bytes());
    e.extend_from_slice(&npages.to_ne_bytes());
    e.extend_from_slice(&leaf.to_ne_bytes());
    e.extend_from_slice(&0u32.to_ne_bytes());
    Ok(e)
}

/// `struct iommu_hwpt_vtd_s1` for a VT-d guest table.
pub(super) fn vtd_s1_data(pgd: u64, addr_width: u32, flags: VtdFlags) -> Vec<u8> {
    let mut f = 0u64;
    if flags.contains(VtdFlags::SRE) {
        f |= u64::from(b::iommu_hwpt_vtd_s1_flags_IOMMU_VTD_S1_SRE);
    }
    if flags.contains(VtdFlags::WPE) {
        f |= u64::from(b::iommu_hwpt_vtd_s1_flags_IOMMU_VTD_S1_WPE);
    }
    let mut d = Vec::with_capacity(24);
    d.extend_from_slice(&f.to_ne_bytes());
    d.extend_from_slice(&pgd.to_ne_bytes());
    d.extend_from_slice(&addr_width.to_ne_bytes());
    d.extend_from_slice(&0u32.to_ne_bytes());
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_iommu_spec::ext::InvalCaches;

    fn inval(scope: InvalScope, leaf: bool) -> Invalidate {
        Invalidate {
            domain: 1,
            caches: InvalCaches::IOTLB,
            scope,
            archid: None,
            leaf,
        }
    }

    fn entry(addr: u64, npages: u64, flags: u32) -> Vec<u8> {
        let mut v = addr.to_ne_bytes().to_vec();
        v.extend_from_slice(&npages.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&[0; 4]);
        v
    }

    #[test]
    fn vtd_invalidation_entries() {
        assert_eq!(
            vtd_entries(&inval(InvalScope::Domain, false)).unwrap(),
            entry(0, u64::MAX, 0)
        );
        assert_eq!(
            vtd_entries(&inval(InvalScope::Pasid(3), true)).unwrap(),
            entry(0, u64::MAX, 1)
        );
        let range = |start, nr_pages, granule| InvalScope::Range {
            pasid: Some(1),
            start,
            nr_pages,
            granule,
        };
        assert_eq!(
            vtd_entries(&inval(range(0x20_1234, 3, 12), true)).unwrap(),
            entry(0x20_1000, 3, 1)
        );
        assert_eq!(
            vtd_entries(&inval(range(0x4000_0000, 2, 21), false)).unwrap(),
            entry(0x4000_0000, 1024, 0)
        );
        assert_eq!(
            vtd_entries(&inval(range(0, u64::MAX, 30), false)).unwrap(),
            entry(0, u64::MAX, 0)
        );
        assert_eq!(
            vtd_entries(&inval(range(0, 1, 80), false)).unwrap(),
            entry(0, u64::MAX, 0)
        );
        assert!(vtd_entries(&inval(range(0, 0, 12), false))
            .unwrap()
            .is_empty());
        assert_eq!(
            vtd_entries(&inval(range(0, 1, 11), false)),
            Err(HostError::Invalid)
        );
    }

    #[test]
    fn vtd_table_data() {
        let d = vtd_s1_data(0x1234_5000, 48, VtdFlags::SRE | VtdFlags::WPE);
        let mut want = 5u64.to_ne_bytes().to_vec();
        want.extend_from_slice(&0x1234_5000u64.to_ne_bytes());
        want.extend_from_slice(&48u32.to_ne_bytes());
        want.extend_from_slice(&[0; 4]);
        assert_eq!(d, want);
    }
}
