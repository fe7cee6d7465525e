//! The device configuration space (`struct virtio_iommu_config`, 40 bytes).

use zerocopy::little_endian::{U32, U64};

use crate::wire::wire;

/// Offset of the `bypass` byte, the only field a driver may write.
pub const BYPASS_OFFSET: usize = 36;

wire! {
    /// `struct virtio_iommu_config`.
    pub struct Config: 40 {
        /// Supported page sizes; the lowest set bit is the mapping granule.
        pub page_size_mask: U64,
        /// First valid input address (with `Features::INPUT_RANGE`).
        pub input_range_start: U64,
        /// Last valid input address, inclusive.
        pub input_range_end: U64,
        /// First valid domain ID (with `Features::DOMAIN_RANGE`).
        pub domain_range_start: U32,
        /// Last valid domain ID, inclusive.
        pub domain_range_end: U32,
        /// Size of the PROBE properties area (with `Features::PROBE`).
        pub probe_size: U32,
        /// 1: unattached endpoints bypass the IOMMU (with `Features::BYPASS_CONFIG`). Only 0 or 1.
        pub bypass: u8,
        /// Reserved, zero.
        pub reserved: [u8; 3],
    }
}

/// The mapping granule of a page-size mask: its smallest page size (lowest set bit), or `None`
/// if the mask is zero.
#[must_use]
pub const fn granule(page_size_mask: u64) -> Option<u64> {
    if page_size_mask == 0 {
        None
    } else {
        Some(1u64 << page_size_mask.trailing_zeros())
    }
}

impl Config {
    /// The granule: the smallest page size in `page_size_mask`, or `None` if the mask is zero.
    #[must_use]
    pub fn granule(&self) -> Option<u64> {
        granule(self.page_size_mask.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::{FromBytes, IntoBytes};

    #[test]
    fn byte_layout() {
        let c = Config {
            page_size_mask: 0xffff_ffff_ffff_f000.into(),
            input_range_start: 0x1122_3344_5566_7788.into(),
            input_range_end: 0x0000_ffff_ffff_ffff.into(),
            domain_range_start: 1.into(),
            domain_range_end: 0xabcd.into(),
            probe_size: 512.into(),
            bypass: 1,
            reserved: [0; 3],
        };
        let mut want = [0u8; 40];
        want[0..8].copy_from_slice(&[0x00, 0xf0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        want[8..16].copy_from_slice(&[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
        want[16..24].copy_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]);
        want[24..28].copy_from_slice(&[1, 0, 0, 0]);
        want[28..32].copy_from_slice(&[0xcd, 0xab, 0, 0]);
        want[32..36].copy_from_slice(&[0x00, 0x02, 0, 0]);
        want[BYPASS_OFFSET] = 1;
        assert_eq!(c.as_bytes(), &want);
        assert_eq!(Config::read_from_bytes(&want).unwrap(), c);
        assert_eq!(c.granule(), Some(0x1000));
    }

    #[test]
    fn granule_of_zero_mask() {
        let c = <Config as zerocopy::FromZeros>::new_zeroed();
        assert_eq!(c.granule(), None);
    }

    #[test]
    fn granule_of_masks() {
        assert_eq!(granule(0xffff_f000), Some(0x1000));
        assert_eq!(granule(1 << 63), Some(1 << 63));
        assert_eq!(granule(!0), Some(1));
        assert_eq!(granule(0), None);
    }
}
