//! x86-64 (IA-32e) paging entries as a VT-d first-stage table: 4 levels for a 48-bit input,
//! 5 for 57 bits (`PROTOCOL.md` §9.6).
//!
//! PS makes a PDPT entry a 1 GiB page and a PD entry a 2 MiB page; PS at PML4 / PML5 is
//! malformed, and bit 7 of a PT entry is PAT, not PS. R/W and U/S apply ANDed over every
//! level, XD ORed.

use super::bits;

/// Bit 0: present.
pub const P: u64 = 1 << 0;
/// Bit 1: writable (R/W).
pub const RW: u64 = 1 << 1;
/// Bit 2: user-accessible (U/S).
pub const US: u64 = 1 << 2;
/// Bit 5: accessed (neither checked nor set by the device).
pub const A: u64 = 1 << 5;
/// Bit 6: dirty (neither checked nor set by the device).
pub const D: u64 = 1 << 6;
/// Bit 7: page size, at PDPT (1 GiB) and PD (2 MiB).
pub const PS: u64 = 1 << 7;
/// Bit 63: execute-disable.
pub const XD: u64 = 1 << 63;
/// Address bits `[51:12]`.
pub const ADDR_MASK: u64 = bits(51, 12);
/// Physical address width of the entries.
pub const OUTPUT_BITS: u32 = 52;
/// ATTACH_TABLE `addr_width` of 4-level paging.
pub const ADDR_WIDTH_4_LEVEL: u32 = 48;
/// ATTACH_TABLE `addr_width` of 5-level paging.
pub const ADDR_WIDTH_5_LEVEL: u32 = 57;
