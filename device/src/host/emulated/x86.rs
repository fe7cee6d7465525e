//! x86-64 IA-32e paging as a VT-d first-stage table: 4 levels (48-bit input) or 5 (57-bit),
//! so at most five entry reads.
//!
//! Entry bits: P 0, R/W 1, U/S 2, A 5 and D 6 (neither read nor set), PS 7 (PDPT → 1 GiB, PD →
//! 2 MiB; at PML4/PML5 malformed), address [51:12], XD 63. A PS leaf needs its address bits
//! below the page size zero. R/W and U/S are ANDed and XD ORed across the levels.

use virtio_iommu_spec::ext::VtdFlags;
use virtio_iommu_spec::formats::x86::{
    ADDR_MASK as ADDR, ADDR_WIDTH_4_LEVEL, ADDR_WIDTH_5_LEVEL, P, PS, RW, US, XD,
};
use virtio_iommu_spec::formats::{bits, PAGE_SHIFT};

use super::walk::{entry_addr, Leaf, LeafPerms, TableMemory, WalkError};

/// Entry reads of one walk at most: one per level, five levels.
pub const MAX_READS: u32 = 5;

/// Whether `va` is canonical for a `width`-bit input space: bits 63..width−1 all equal. Every
/// address is canonical for 64 bits; none for a width of 0 or above 64.
#[must_use]
pub fn canonical(va: u64, width: u32) -> bool {
    let Some(shift) = width.checked_sub(1).filter(|s| *s < 64) else {
        return false;
    };
    let hi = va >> shift;
    hi == 0 || hi == u64::MAX >> shift
}

/// Walks the table at `pgd` for `va`. `addr_width` is 48 or 57 (anything else is malformed).
///
/// # Errors
/// `AddressSize` (non-canonical), `Forbidden` (privileged without `SRE`), `NotPresent`,
/// `Malformed`. Permissions are not checked here: the leaf carries them.
pub fn walk(
    mem: &impl TableMemory,
    pgd: u64,
    addr_width: u32,
    flags: VtdFlags,
    va: u64,
    privileged: bool,
) -> Result<Leaf, WalkError> {
    let levels = match addr_width {
        ADDR_WIDTH_4_LEVEL => 4,
        ADDR_WIDTH_5_LEVEL => 5,
        _ => return Err(WalkError::Malformed),
    };
    if !canonical(va, addr_width) {
        return Err(WalkError::AddressSize);
    }
    if privileged && !flags.contains(VtdFlags::SRE) {
        return Err(WalkError::Forbidden);
    }
    let (mut rw, mut us, mut xd) = (true, true, false);
    let mut table = pgd;
    for level in (0..levels).rev() {
        let shift = PAGE_SHIFT + 9 * level;
        let e = mem.read_entry(entry_addr(table, (va >> shift) & 0x1ff)?)?;
        if e & P == 0 {
            return Err(WalkError::NotPresent);
        }
        rw &= e & RW != 0;
        us &= e & US != 0;
        xd |= e & XD != 0;
        let addr = e & ADDR;
        // Bit 7 of a PT entry is PAT, not PS.
        let leaf = level == 0 || e & PS != 0;
        if !leaf {
            table = addr;
            continue;
        }
        if level >= 3 || addr & bits(shift - 1, 0) != 0 {
            return Err(WalkError::Malformed);
        }
        return Ok(Leaf {
            va: va & !bits(shift - 1, 0),
            gpa: addr,
            shift,
            perms: perms(rw, us, xd, flags),
        });
    }
    // Unreachable: level 0 always returns.
    Err(WalkError::Malformed)
}

/// Permissions of a leaf with the accumulated R/W, U/S and XD. Privileged accesses need SRE
/// (checked before the walk); a privileged write ignores R/W unless WPE is set.
fn perms(rw: bool, us: bool, xd: bool, flags: VtdFlags) -> LeafPerms {
    let sre = flags.contains(VtdFlags::SRE);
    let mut p = LeafPerms::empty();
    p.set(LeafPerms::USER_READ, us);
    p.set(LeafPerms::USER_WRITE, us && rw);
    p.set(LeafPerms::USER_EXEC, us && !xd);
    p.set(LeafPerms::PRIV_READ, sre);
    p.set(
        LeafPerms::PRIV_WRITE,
        sre && (rw || !flags.contains(VtdFlags::WPE)),
    );
    p.set(LeafPerms::PRIV_EXEC, sre && !xd);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GuestRam;
    use vm_memory::{Bytes, GuestAddress};

    fn put(m: &GuestRam, gpa: u64, v: u64) {
        m.write_slice(&v.to_le_bytes(), GuestAddress(gpa)).unwrap();
    }

    #[test]
    fn canonical_addresses() {
        assert!(canonical(0x7fff_ffff_ffff, 48));
        assert!(!canonical(0x8000_0000_0000, 48));
        assert!(canonical(0xffff_8000_0000_0000, 48));
        assert!(canonical(0x00ff_ffff_ffff_ffff, 57));
        assert!(!canonical(0x0100_0000_0000_0000, 57));
        assert!(canonical(u64::MAX, 64) && canonical(1 << 63, 64));
        assert!(!canonical(0, 0) && !canonical(0, 65));
    }

    #[test]
    fn levels_pages_and_errors() {
        let m = GuestRam::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let t = P | RW | US;
        // PML5 0x1000 → PML4 0x2000 → PDPT 0x3000 → PD 0x4000 → PT 0x5000 → 0x9000.
        put(&m, 0x1000, 0x2000 | t);
        put(&m, 0x2000, 0x3000 | t);
        put(&m, 0x3000, 0x4000 | t);
        put(&m, 0x4000, 0x5000 | P | US);
        put(&m, 0x5008, 0x9000 | t | XD);
        let l = walk(&m, 0x2000, 48, VtdFlags::empty(), 0x1abc, false).unwrap();
        assert_eq!((l.va, l.gpa, l.shift), (0x1000, 0x9000, 12));
        assert_eq!(l.perms, LeafPerms::USER_READ);
        assert_eq!(
            walk(&m, 0x1000, 57, VtdFlags::empty(), 0x1abc, false)
                .unwrap()
                .gpa,
            0x9000
        );
        assert_eq!(
            walk(&m, 0x2000, 48, VtdFlags::empty(), 0x2000, false),
            Err(WalkError::NotPresent)
        );
        assert_eq!(
            walk(&m, 0x2000, 48, VtdFlags::empty(), 1 << 47, false),
            Err(WalkError::AddressSize)
        );
        assert_eq!(
            walk(&m, 0x2000, 48, VtdFlags::empty(), 0x1000, true),
            Err(WalkError::Forbidden)
        );
        let sre = walk(&m, 0x2000, 48, VtdFlags::SRE, 0x1000, true).unwrap();
        assert!(sre.perms.contains(LeafPerms::PRIV_WRITE));
        let wpe = walk(&m, 0x2000, 48, VtdFlags::SRE | VtdFlags::WPE, 0x1000, true).unwrap();
        assert!(!wpe.perms.contains(LeafPerms::PRIV_WRITE));
        // 2 MiB and 1 GiB pages; misaligned ones and PS at PML4 are malformed.
        put(&m, 0x4008, 0x20_0000 | t | PS);
        let l = walk(&m, 0x2000, 48, VtdFlags::empty(), 0x20_1234, false).unwrap();
        assert_eq!((l.va, l.gpa, l.shift), (0x20_0000, 0x20_0000, 21));
        put(&m, 0x3008, (1 << 30) | t | PS);
        let l = walk(&m, 0x2000, 48, VtdFlags::empty(), (1 << 30) + 5, false).unwrap();
        assert_eq!((l.gpa, l.shift), (1 << 30, 30));
        put(&m, 0x4010, 0x20_1000 | t | PS);
        assert_eq!(
            walk(&m, 0x2000, 48, VtdFlags::empty(), 0x40_0000, false),
            Err(WalkError::Malformed)
        );
        put(&m, 0x2008, 0x3000 | t | PS);
        assert_eq!(
            walk(&m, 0x2000, 48, VtdFlags::empty(), 1 << 39, false),
            Err(WalkError::Malformed)
        );
        assert_eq!(
            walk(&m, 0x2000, 39, VtdFlags::empty(), 0, false),
            Err(WalkError::Malformed)
        );
    }
}
