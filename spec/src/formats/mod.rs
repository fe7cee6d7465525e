//! The bits of the guest tables ATTACH_TABLE binds (`PROTOCOL.md` §9.6), as constants: one
//! home for the facts. The device's walkers and the driver's builders use these and stay
//! independent of each other in how they walk and build.
//!
//! - [`cd_table`]: SMMUv3 context descriptors and the L1 table of a two-level CD table
//!   (`FORMAT_PSTF_ARM_SMMU_V3`).
//! - [`aarch64`]: the AArch64 stage-1 descriptors a context descriptor's TTB0 points to.
//! - [`x86`]: x86-64 first-stage entries (`FORMAT_PGTF_VTD`).

pub mod aarch64;
pub mod cd_table;
pub mod x86;

/// Page shift of the 4 KiB granule every implemented table format uses.
pub const PAGE_SHIFT: u32 = 12;
/// Index bits per table level: 512 entries of 8 bytes fill a 4 KiB table.
pub const LEVEL_BITS: u32 = 9;
/// Size of one table entry, descriptor or L1 CD-table descriptor.
pub const ENTRY_SIZE: u64 = 8;

/// Mask of bits `[hi:lo]` (`lo <= hi <= 63`).
#[must_use]
pub const fn bits(hi: u32, lo: u32) -> u64 {
    (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every constant against the bit numbers of `PROTOCOL.md` §9.6, spelled as hex.
    #[test]
    fn bit_positions() {
        assert_eq!(bits(51, 12), 0x000f_ffff_ffff_f000);
        assert_eq!(bits(63, 0), u64::MAX);
        assert_eq!(bits(7, 6), 0xc0);
        assert_eq!(bits(0, 0), 1);

        assert_eq!(aarch64::VALID | aarch64::TABLE_OR_PAGE, 0b11);
        assert_eq!(aarch64::AP_EL0 | aarch64::AP_RO, 0xc0);
        assert_eq!(aarch64::AF, 0x400);
        assert_eq!(aarch64::PXN | aarch64::UXN, 0x0060_0000_0000_0000);
        assert_eq!(aarch64::OA_MASK, 0x0000_ffff_ffff_f000);
        assert_eq!(aarch64::OA_RES0, 0x000f_0000_0000_0000);
        assert_eq!(aarch64::OA_MASK, bits(aarch64::OUTPUT_BITS - 1, PAGE_SHIFT));
        assert_eq!(aarch64::T0SZ_RANGE, 16..=39);

        assert_eq!(x86::P | x86::RW | x86::US | x86::A, 0x27);
        assert_eq!(x86::D | x86::PS, 0xc0);
        assert_eq!(x86::XD, 0x8000_0000_0000_0000);
        assert_eq!(x86::ADDR_MASK, bits(x86::OUTPUT_BITS - 1, PAGE_SHIFT));
        assert_eq!((x86::ADDR_WIDTH_4_LEVEL, x86::ADDR_WIDTH_5_LEVEL), (48, 57));

        use cd_table::*;
        assert_eq!(CD0_T0SZ_MASK, 0x3f);
        assert_eq!(CD0_TG0_MASK, 0xc0);
        assert_eq!(CD0_EPD0, 0x4000);
        assert_eq!(CD0_V, 0x8000_0000);
        assert_eq!(CD0_AA64, 0x200_0000_0000);
        assert_eq!(0xabcd_u64 << CD0_ASID_SHIFT, 0xabcd_0000_0000_0000);
        assert_eq!(CD1_TTB0_MASK, 0x000f_ffff_ffff_fff0);
        assert_eq!(CD1_TTB0_RES0, 0xff0);
        assert_eq!(L1_VALID, 1);
        assert_eq!(L1_L2PTR_MASK, 0x000f_ffff_ffff_f000);
        assert_eq!(
            (CD_SIZE, CD_WORDS, 1u64 << L2_CDS_LOG2),
            (64, 8, 4096 / CD_SIZE)
        );
    }
}
