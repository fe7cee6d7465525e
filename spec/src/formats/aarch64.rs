//! AArch64 VMSAv8-64 stage-1 descriptors, 4 KiB granule, TTB0 only: the subset of
//! `PROTOCOL.md` §9.6.
//!
//! A descriptor is valid with bit 0 set. At L0–L2 bit 1 set makes it a table descriptor; at L1
//! and L2 bit 1 clear makes it a block (1 GiB, 2 MiB); at L3 bit 1 must be set (page). An L0
//! block and an L3 entry with bit 1 clear are reserved encodings. Hierarchical table attributes
//! (APTable, XNTable) are not used.

use super::bits;

/// Bit 0: the descriptor is valid.
pub const VALID: u64 = 1 << 0;
/// Bit 1: table (L0–L2) or page (L3); clear for a block at L1 / L2.
pub const TABLE_OR_PAGE: u64 = 1 << 1;
/// AP\[1\], bit 6: accessible from EL0 (unprivileged).
pub const AP_EL0: u64 = 1 << 6;
/// AP\[2\], bit 7: read-only.
pub const AP_RO: u64 = 1 << 7;
/// Bit 10: the access flag, which a walker never sets (clear: access-flag fault).
pub const AF: u64 = 1 << 10;
/// Bit 53: privileged execute-never.
pub const PXN: u64 = 1 << 53;
/// Bit 54: unprivileged execute-never.
pub const UXN: u64 = 1 << 54;
/// Output address bits `[47:12]`.
pub const OA_MASK: u64 = bits(47, 12);
/// Output address bits `[51:48]`, which must be zero (48-bit output).
pub const OA_RES0: u64 = bits(51, 48);
/// Output address size.
pub const OUTPUT_BITS: u32 = 48;
/// The T0SZ values a 4 KiB granule allows: an input space of 48 (walk from L0) down to 25 bits.
pub const T0SZ_RANGE: core::ops::RangeInclusive<u32> = 16..=39;
