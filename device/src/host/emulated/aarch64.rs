//! AArch64 VMSAv8-64 stage-1 walk, 4 KiB granule, TTB0 only (the subset `PROTOCOL.md` §9.6
//! defines): at most four descriptor reads, so no table can make it loop.
//!
//! Descriptor bits: 0 valid; 1 table (L0–L2) / page (L3), clear = block at L1 (1 GiB) and L2
//! (2 MiB); output address [47:12] with [51:48] zero; AP[1] bit 6 (EL0 access); AP[2] bit 7
//! (read-only); AF bit 10; PXN bit 53; UXN bit 54. Hierarchical table attributes are ignored.

use virtio_iommu_spec::formats::aarch64::{
    AF, AP_EL0, AP_RO, OA_MASK as OA, OA_RES0 as HIGH_OA, PXN, T0SZ_RANGE, TABLE_OR_PAGE, UXN,
    VALID,
};
use virtio_iommu_spec::formats::{bits, PAGE_SHIFT};

use super::walk::{entry_addr, Leaf, LeafPerms, TableMemory, WalkError};

/// Descriptor reads of one walk at most: one per level, four levels.
pub const MAX_READS: u32 = 4;

/// Walks the table at `ttb0` for `va` with a `64 − t0sz`-bit input space.
///
/// # Errors
/// `AddressSize` for an input beyond the space, `NotPresent`, `AccessFlag`, `Malformed`
/// (L0 block, L3 entry with bit 1 clear, reserved output bits, table outside RAM). Permissions
/// are not checked here: the leaf carries them.
pub fn walk(mem: &impl TableMemory, ttb0: u64, t0sz: u32, va: u64) -> Result<Leaf, WalkError> {
    if !T0SZ_RANGE.contains(&t0sz) {
        return Err(WalkError::Malformed);
    }
    let va_bits = 64 - t0sz;
    if va >> va_bits != 0 {
        return Err(WalkError::AddressSize);
    }
    // Levels needed to resolve va_bits − 12 bits, 9 per level: 48 → L0, 39 → L1, 30 → L2.
    let levels = (va_bits - PAGE_SHIFT).div_ceil(9);
    let mut table = ttb0;
    for level in (4 - levels)..=3 {
        let shift = PAGE_SHIFT + 9 * (3 - level);
        let desc = mem.read_entry(entry_addr(table, (va >> shift) & 0x1ff)?)?;
        if desc & VALID == 0 {
            return Err(WalkError::NotPresent);
        }
        if desc & HIGH_OA != 0 {
            return Err(WalkError::Malformed);
        }
        let oa = desc & OA;
        let bit1 = desc & TABLE_OR_PAGE != 0;
        if level < 3 && bit1 {
            table = oa;
            continue;
        }
        if level == 0 || (level == 3 && !bit1) {
            return Err(WalkError::Malformed);
        }
        // A block's output address must be aligned to the block.
        if oa & bits(shift - 1, 0) != 0 {
            return Err(WalkError::Malformed);
        }
        if desc & AF == 0 {
            return Err(WalkError::AccessFlag);
        }
        return Ok(Leaf {
            va: va & !bits(shift - 1, 0),
            gpa: oa,
            shift,
            perms: perms(desc),
        });
    }
    // Unreachable: level 3 always returns.
    Err(WalkError::Malformed)
}

/// AP[2:1] and the XN bits as format-neutral permissions. Privileged reads are always allowed.
fn perms(desc: u64) -> LeafPerms {
    let el0 = desc & AP_EL0 != 0;
    let rw = desc & AP_RO == 0;
    let mut p = LeafPerms::PRIV_READ;
    p.set(LeafPerms::PRIV_WRITE, rw);
    p.set(LeafPerms::PRIV_EXEC, desc & PXN == 0);
    p.set(LeafPerms::USER_READ, el0);
    p.set(LeafPerms::USER_WRITE, el0 && rw);
    p.set(LeafPerms::USER_EXEC, el0 && desc & UXN == 0);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GuestRam;
    use vm_memory::{Bytes, GuestAddress};

    fn mem() -> GuestRam {
        GuestRam::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn put(m: &GuestRam, gpa: u64, v: u64) {
        m.write_slice(&v.to_le_bytes(), GuestAddress(gpa)).unwrap();
    }

    const TBL: u64 = VALID | TABLE_OR_PAGE;

    #[test]
    fn four_levels_blocks_and_errors() {
        let m = mem();
        // L0 0x1000 → L1 0x2000 → L2 0x3000 → L3 0x4000 → page 0x8000.
        put(&m, 0x1000, 0x2000 | TBL);
        put(&m, 0x2000, 0x3000 | TBL);
        put(&m, 0x3000, 0x4000 | TBL);
        put(&m, 0x4000 + 8 * 5, 0x8000 | TBL | AF | AP_EL0 | AP_RO);
        let l = walk(&m, 0x1000, 16, 0x5123).unwrap();
        assert_eq!((l.va, l.gpa, l.shift), (0x5000, 0x8000, 12));
        assert_eq!(
            l.perms,
            LeafPerms::PRIV_READ
                | LeafPerms::PRIV_EXEC
                | LeafPerms::USER_READ
                | LeafPerms::USER_EXEC
        );
        assert_eq!(walk(&m, 0x1000, 16, 0x6000), Err(WalkError::NotPresent));
        assert_eq!(walk(&m, 0x1000, 16, 1 << 48), Err(WalkError::AddressSize));
        // 2 MiB block at L2 index 1.
        put(&m, 0x3008, 0x20_0000 | VALID | AF);
        let l = walk(&m, 0x1000, 16, 0x20_1234).unwrap();
        assert_eq!((l.va, l.gpa, l.shift), (0x20_0000, 0x20_0000, 21));
        // Misaligned block, L3 "block", reserved output bits, access flag.
        put(&m, 0x3010, 0x20_1000 | VALID | AF);
        assert_eq!(walk(&m, 0x1000, 16, 0x40_0000), Err(WalkError::Malformed));
        put(&m, 0x4000 + 8 * 6, 0x9000 | VALID | AF);
        assert_eq!(walk(&m, 0x1000, 16, 0x6000), Err(WalkError::Malformed));
        put(&m, 0x4000 + 8 * 7, (1 << 48) | 0x9000 | TBL | AF);
        assert_eq!(walk(&m, 0x1000, 16, 0x7000), Err(WalkError::Malformed));
        put(&m, 0x4000 + 8 * 8, 0x9000 | TBL);
        assert_eq!(walk(&m, 0x1000, 16, 0x8000), Err(WalkError::AccessFlag));
        // L0 block is malformed; a table outside RAM too.
        put(&m, 0x1008, VALID | AF);
        assert_eq!(walk(&m, 0x1000, 16, 1 << 39), Err(WalkError::Malformed));
        put(&m, 0x1010, 0x7f_0000_0000 | TBL);
        assert_eq!(walk(&m, 0x1000, 16, 2 << 39), Err(WalkError::Malformed));
        // 39 VA bits start at L1: ttb0 is the L1 table here.
        let l = walk(&m, 0x2000, 25, 0x5000).unwrap();
        assert_eq!(l.gpa, 0x8000);
        assert_eq!(walk(&m, 0x2000, 25, 1 << 39), Err(WalkError::AddressSize));
        // 30 VA bits start at L2.
        assert_eq!(walk(&m, 0x3000, 34, 0x5000).unwrap().gpa, 0x8000);
        assert_eq!(walk(&m, 0x3000, 40, 0), Err(WalkError::Malformed));
    }
}
