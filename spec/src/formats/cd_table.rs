//! SMMUv3 context descriptors (CDs) and the L1 descriptors of a two-level CD table
//! (`PROTOCOL.md` §9.6, `FORMAT_PSTF_ARM_SMMU_V3`).
//!
//! A CD is 64 bytes, eight little-endian words, of which only words 0 and 1 have a meaning
//! here. A linear table holds the CD of PASID `p` at `s1contextptr + 64·p`; a two-level table
//! (`S1FMT_4KL2`) has 8-byte L1 descriptors indexed by `p >> L2_CDS_LOG2`, each pointing to a
//! 4 KiB leaf table of CDs indexed by `p & (2^L2_CDS_LOG2 − 1)`.

use super::bits;

/// Size of a CD in bytes.
pub const CD_SIZE: u64 = 64;
/// Words (u64) per CD.
pub const CD_WORDS: usize = 8;
/// Word 0, bits `[5:0]`: T0SZ, the input space is `64 − T0SZ` bits
/// ([`super::aarch64::T0SZ_RANGE`]).
pub const CD0_T0SZ_MASK: u64 = bits(5, 0);
/// Word 0, bits `[7:6]`: TG0, which must be 0 (4 KiB granule).
pub const CD0_TG0_MASK: u64 = bits(7, 6);
/// Word 0, bit 14: EPD0, TTB0 walks disabled.
pub const CD0_EPD0: u64 = 1 << 14;
/// Word 0, bit 31: V, the CD is valid.
pub const CD0_V: u64 = 1 << 31;
/// Word 0, bit 41: AA64, which must be 1 (AArch64 tables).
pub const CD0_AA64: u64 = 1 << 41;
/// Word 0, bits `[63:48]`: the ASID (the tag `InvalFlags::ARCHID` names).
pub const CD0_ASID_SHIFT: u32 = 48;
/// Word 1, bits `[51:4]`: TTB0, the stage-1 table.
pub const CD1_TTB0_MASK: u64 = bits(51, 4);
/// Word 1, bits `[11:4]` of TTB0, which must be zero (the table is 4 KiB aligned).
pub const CD1_TTB0_RES0: u64 = bits(11, 4);
/// L1 descriptor, bit 0: valid.
pub const L1_VALID: u64 = 1 << 0;
/// L1 descriptor, bits `[51:12]`: the leaf table of CDs.
pub const L1_L2PTR_MASK: u64 = bits(51, 12);
/// log2 of the CDs in one 4 KiB leaf table (64).
pub const L2_CDS_LOG2: u32 = 6;
