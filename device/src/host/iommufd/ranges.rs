//! Host reserved IOVA regions: the complement of what `IOMMU_IOAS_IOVA_RANGES` allows.
//!
//! The kernel does not say why a hole exists. The x86 MSI doorbell window is the one hole whose
//! meaning is fixed by the architecture, so a hole that contains it is split and the window is
//! reported as `MSI`; everything else is `RESERVED` (accesses fault).

use virtio_iommu_spec::probe::ResvMemSubtype;

use crate::host::ReservedRegion;

/// The holes in `allowed` (inclusive `(start, last)` ranges, any order, may overlap), with the
/// x86 MSI window typed as MSI when `x86_msi` is set and it lies inside a hole.
#[must_use]
pub fn reserved_from_allowed(allowed: &[(u64, u64)], x86_msi: bool) -> Vec<ReservedRegion> {
    let mut sorted: Vec<(u64, u64)> = allowed.iter().copied().filter(|(s, l)| s <= l).collect();
    sorted.sort_unstable();
    let mut holes = Vec::new();
    // `next` is the first address not yet covered; `None` once u64::MAX is covered.
    let mut next = Some(0u64);
    for (start, last) in sorted {
        let Some(n) = next else { break };
        if start > n {
            holes.push((n, start - 1));
        }
        if last >= n {
            next = last.checked_add(1);
        }
    }
    if let Some(n) = next {
        holes.push((n, u64::MAX));
    }
    let msi = ReservedRegion::x86_msi();
    let mut out = Vec::with_capacity(holes.len() + 2);
    for (start, last) in holes {
        if x86_msi && start <= msi.start && msi.last <= last {
            if start < msi.start {
                out.push(reserved(start, msi.start - 1));
            }
            out.push(msi);
            if msi.last < last {
                out.push(reserved(msi.last + 1, last));
            }
        } else {
            out.push(reserved(start, last));
        }
    }
    out
}

fn reserved(start: u64, last: u64) -> ReservedRegion {
    ReservedRegion {
        start,
        last,
        kind: ResvMemSubtype::Reserved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, last: u64) -> ReservedRegion {
        reserved(start, last)
    }

    #[test]
    fn full_range_has_no_holes() {
        assert!(reserved_from_allowed(&[(0, u64::MAX)], true).is_empty());
    }

    #[test]
    fn vtd_like_ranges() {
        // What an emulated VT-d with 39-bit addressing reports after an attach.
        let allowed = [(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)];
        assert_eq!(
            reserved_from_allowed(&allowed, true),
            vec![ReservedRegion::x86_msi(), r(1 << 39, u64::MAX)]
        );
        // Without the x86 typing the window is just reserved.
        assert_eq!(
            reserved_from_allowed(&allowed, false),
            vec![r(0xfee0_0000, 0xfeef_ffff), r(1 << 39, u64::MAX)]
        );
    }

    #[test]
    fn msi_inside_a_larger_hole_is_split_out() {
        let allowed = [(0x1000, 0xefff_ffff)];
        assert_eq!(
            reserved_from_allowed(&allowed, true),
            vec![
                r(0, 0xfff),
                r(0xf000_0000, 0xfedf_ffff),
                ReservedRegion::x86_msi(),
                r(0xfef0_0000, u64::MAX)
            ]
        );
    }

    #[test]
    fn unsorted_overlapping_and_empty_input() {
        let allowed = [(0x3000, 0x4fff), (0x1000, 0x3fff), (9, 3)];
        assert_eq!(
            reserved_from_allowed(&allowed, false),
            vec![r(0, 0xfff), r(0x5000, u64::MAX)]
        );
        assert_eq!(reserved_from_allowed(&[], false), vec![r(0, u64::MAX)]);
    }
}
