//! `sva` tables: the exact descriptors in guest memory for known mappings (read back through
//! the test kit's guest RAM), block vs page choice, splits, unmap freeing, the
//! software walk, and the SMMUv3 CD table layouts.

use virtio_iommu_driver::sva::{
    CdLayout, CdTable, Perms, S1Dss, Stage1Arm, SvaError, Translation, X86FirstStage, X86Levels,
};
use virtio_iommu_driver::TableDesc;
use virtio_iommu_spec::ext::VtdFlags;
use virtio_iommu_spec::formats::aarch64::{
    AF as A_AF, AP_EL0 as A_USER, AP_RO as A_RO, PXN as A_PXN, TABLE_OR_PAGE as A_TABLE_PAGE,
    UXN as A_UXN, VALID as A_VALID,
};
use virtio_iommu_spec::formats::cd_table::{CD0_AA64 as CD_AA64, CD0_V as CD_V};
use virtio_iommu_spec::formats::x86::{
    A as X_A, D as X_D, P as X_P, PS as X_PS, RW as X_RW, US as X_US, XD as X_XD,
};
use virtio_iommu_testkit::{GuestHal, GuestMemory};

type Arm = Stage1Arm<GuestHal>;
type X86 = X86FirstStage<GuestHal>;
type Cds = CdTable<GuestHal>;

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const G1: u64 = 0x4000_0000;

/// Word `idx` of the table page at guest-physical `pa`.
fn word(pa: u64, idx: u64) -> u64 {
    GuestMemory::global()
        .read_obj::<u64>(pa + 8 * idx)
        .expect("table page in guest RAM")
}

/// Indices of the non-zero words of a 4 KiB table.
fn non_zero(pa: u64) -> Vec<u64> {
    (0..512).filter(|&i| word(pa, i) != 0).collect()
}

/// The table address in an Arm table descriptor, checking its low bits are exactly 0b11.
fn arm_next(desc: u64) -> u64 {
    assert_eq!(desc & 0xfff, 0b11, "table descriptor {desc:#x}");
    assert_eq!(desc >> 48, 0, "no upper attributes in {desc:#x}");
    desc & !0xfff
}

/// The table address in an x86 non-leaf entry, checking it is exactly `P|RW|US|A`.
fn x86_next(entry: u64) -> u64 {
    assert_eq!(entry & 0xfff, 0x27, "table entry {entry:#x}");
    assert_eq!(entry >> 52, 0, "no XD or upper bits in {entry:#x}");
    entry & !0xfff
}

/// VA with index `l0`..`l3` at the four Arm levels (or PML4..PT on x86).
fn va4(l0: u64, l1: u64, l2: u64, l3: u64) -> u64 {
    (l0 << 39) | (l1 << 30) | (l2 << 21) | (l3 << 12)
}

#[test]
fn arm_page_descriptors_are_exact() {
    let mut t = Arm::new(48).unwrap();
    assert_eq!(t.t0sz(), 16);
    assert_eq!(t.table_pages(), 1);
    let va = va4(3, 5, 7, 9);
    t.map(va, 0x8_0000_3000, K4, Perms::USER_READ_WRITE)
        .unwrap();
    let kx = Perms {
        write: false,
        user: false,
        exec: true,
    };
    t.map(va + K4, 0x8_0000_7000, K4, kx).unwrap();
    let ux = Perms {
        write: false,
        user: true,
        exec: true,
    };
    t.map(va + 2 * K4, 0x8_0000_8000, K4, ux).unwrap();

    let l0 = t.ttb0();
    assert_eq!(non_zero(l0), vec![3]);
    let l1 = arm_next(word(l0, 3));
    assert_eq!(non_zero(l1), vec![5]);
    let l2 = arm_next(word(l1, 5));
    assert_eq!(non_zero(l2), vec![7]);
    let l3 = arm_next(word(l2, 7));
    assert_eq!(non_zero(l3), vec![9, 10, 11]);
    // Page: valid | page | AP[1] (EL0) | AF, RW (AP[2] clear), PXN | UXN.
    assert_eq!(word(l3, 9), 0x0060_0008_0000_3443);
    assert_eq!(
        word(l3, 9),
        0x8_0000_3000 | A_VALID | A_TABLE_PAGE | A_USER | A_AF | A_PXN | A_UXN
    );
    // Privileged read-only executable: AP[2], UXN only.
    assert_eq!(
        word(l3, 10),
        0x8_0000_7000 | A_VALID | A_TABLE_PAGE | A_RO | A_AF | A_UXN
    );
    // User read-only executable: AP[1] | AP[2], PXN only.
    assert_eq!(
        word(l3, 11),
        0x8_0000_8000 | A_VALID | A_TABLE_PAGE | A_USER | A_RO | A_AF | A_PXN
    );
    assert_eq!(t.table_pages(), 4);

    assert_eq!(
        t.translate(va + 0x123),
        Some(Translation {
            pa: 0x8_0000_3123,
            perms: Perms::USER_READ_WRITE,
            page_size: K4,
        })
    );
    assert_eq!(t.translate(va + K4).unwrap().perms, kx);
    assert_eq!(t.translate(va + 2 * K4).unwrap().perms, ux);
    assert_eq!(t.translate(va + 3 * K4), None);
    assert_eq!(t.translate(va - K4), None);
}

#[test]
fn arm_uses_blocks_only_when_aligned() {
    let mut t = Arm::new(48).unwrap();
    // 1 GiB + 2 MiB + 4 KiB, all aligned: one block of each size.
    t.map(G1, G1, G1 + M2 + K4, Perms::READ_WRITE).unwrap();
    let l0 = t.ttb0();
    let l1 = arm_next(word(l0, 0));
    assert_eq!(non_zero(l1), vec![1, 2]);
    // 1 GiB block at L1: bit 1 clear.
    assert_eq!(word(l1, 1), G1 | A_VALID | A_AF | A_PXN | A_UXN);
    let l2 = arm_next(word(l1, 2));
    assert_eq!(non_zero(l2), vec![0, 1]);
    assert_eq!(word(l2, 0), (2 * G1) | A_VALID | A_AF | A_PXN | A_UXN);
    let l3 = arm_next(word(l2, 1));
    assert_eq!(non_zero(l3), vec![0]);
    assert_eq!(
        word(l3, 0),
        (2 * G1 + M2) | A_VALID | A_TABLE_PAGE | A_AF | A_PXN | A_UXN
    );
    assert_eq!(t.table_pages(), 4);
    assert_eq!(t.translate(G1 + 0x1234_5678).unwrap().page_size, G1);
    assert_eq!(t.translate(2 * G1 + 0x1_2345).unwrap().page_size, M2);
    assert_eq!(t.translate(2 * G1 + M2 + 5).unwrap().page_size, K4);

    // VA 2 MiB aligned but PA only 4 KiB aligned: 512 pages, no block.
    let mut t = Arm::new(48).unwrap();
    t.map(M2, 0x4000_1000, M2, Perms::READ).unwrap();
    let l2 = arm_next(word(arm_next(word(t.ttb0(), 0)), 0));
    assert_eq!(non_zero(l2), vec![1]);
    let l3 = arm_next(word(l2, 1));
    assert_eq!(non_zero(l3).len(), 512);
    for i in 0..512 {
        assert_eq!(
            word(l3, i),
            (0x4000_1000 + i * K4) | A_VALID | A_TABLE_PAGE | A_RO | A_AF | A_PXN | A_UXN
        );
    }
}

#[test]
fn arm_39_bit_tables_start_at_level_1() {
    let mut t = Arm::new(39).unwrap();
    assert_eq!(t.t0sz(), 25);
    t.map(3 * G1, 5 * G1, G1, Perms::READ_WRITE).unwrap();
    // The first table is L1: the block sits in it directly.
    assert_eq!(non_zero(t.ttb0()), vec![3]);
    assert_eq!(word(t.ttb0(), 3), (5 * G1) | A_VALID | A_AF | A_PXN | A_UXN);
    assert_eq!(t.table_pages(), 1);
    let top = 1u64 << 39;
    assert_eq!(
        t.map(top - K4, 0, 2 * K4, Perms::READ),
        Err(SvaError::OutOfRange)
    );
    assert_eq!(t.map(top, 0, K4, Perms::READ), Err(SvaError::OutOfRange));
    t.map(top - K4, 0x1000, K4, Perms::READ).unwrap();
    assert_eq!(t.translate(top - 1).unwrap().pa, 0x1fff);
    assert_eq!(t.translate(top), None);
    assert_eq!(Arm::new(40).unwrap_err(), SvaError::UnsupportedWidth(40));
}

#[test]
fn arm_unmap_clears_and_detaches_empty_tables() {
    let mut t = Arm::new(48).unwrap();
    let va = va4(1, 2, 3, 4);
    t.map(va, 0x9000, K4, Perms::READ_WRITE).unwrap();
    t.map(va + K4, 0xa000, K4, Perms::READ_WRITE).unwrap();
    assert_eq!(t.table_pages(), 4);
    let l3 = arm_next(word(arm_next(word(arm_next(word(t.ttb0(), 1)), 2)), 3));

    assert_eq!(t.unmap(va, K4), Ok(K4));
    assert_eq!(non_zero(l3), vec![5]);
    assert_eq!(t.translate(va), None);
    assert_eq!(t.translate(va + K4).unwrap().pa, 0xa000);
    assert_eq!((t.table_pages(), t.detached_pages()), (4, 0));

    // The last page goes: every table below the root is unlinked but kept until freed.
    assert_eq!(t.unmap(va - M2, 4 * M2), Ok(K4));
    assert_eq!(non_zero(t.ttb0()), Vec::<u64>::new());
    assert_eq!((t.table_pages(), t.detached_pages()), (1, 3));
    t.free_detached();
    assert_eq!((t.table_pages(), t.detached_pages()), (1, 0));
    // Holes are not an error.
    assert_eq!(t.unmap(va, K4), Ok(0));
    // The range can be mapped again afterwards, as a block this time.
    t.map(va4(1, 2, 3, 0), 0x20_0000, M2, Perms::READ).unwrap();
    assert_eq!(t.translate(va).unwrap().page_size, M2);
}

#[test]
fn arm_partial_unmap_and_protect_split_blocks() {
    let mut t = Arm::new(48).unwrap();
    t.map(M2, 0x4020_0000, M2, Perms::READ_WRITE).unwrap();
    let l2 = arm_next(word(arm_next(word(t.ttb0(), 0)), 0));
    assert_eq!(word(l2, 1), 0x4020_0000 | A_VALID | A_AF | A_PXN | A_UXN);

    assert_eq!(t.unmap(M2 + K4, K4), Ok(K4));
    let l3 = arm_next(word(l2, 1));
    let live = non_zero(l3);
    assert_eq!(live.len(), 511);
    assert!(!live.contains(&1));
    assert_eq!(
        word(l3, 0),
        0x4020_0000 | A_VALID | A_TABLE_PAGE | A_AF | A_PXN | A_UXN
    );
    assert_eq!(
        word(l3, 511),
        0x403f_f000 | A_VALID | A_TABLE_PAGE | A_AF | A_PXN | A_UXN
    );
    assert_eq!(t.translate(M2 + K4), None);
    assert_eq!(
        t.translate(M2 + 2 * K4 + 8),
        Some(Translation {
            pa: 0x4020_2008,
            perms: Perms::READ_WRITE,
            page_size: K4,
        })
    );

    // Protect the first 2 MiB of a 1 GiB block: it splits into 512 blocks of 2 MiB.
    let mut t = Arm::new(48).unwrap();
    t.map(G1, G1, G1, Perms::USER_READ_WRITE).unwrap();
    assert_eq!(t.protect(G1, M2, Perms::READ), Ok(M2));
    let l1 = arm_next(word(t.ttb0(), 0));
    let l2 = arm_next(word(l1, 1));
    assert_eq!(non_zero(l2).len(), 512);
    assert_eq!(word(l2, 0), G1 | A_VALID | A_RO | A_AF | A_PXN | A_UXN);
    assert_eq!(
        word(l2, 1),
        (G1 + M2) | A_VALID | A_USER | A_AF | A_PXN | A_UXN
    );
    assert_eq!(t.translate(G1).unwrap().perms, Perms::READ);
    assert_eq!(t.translate(G1 + M2).unwrap().perms, Perms::USER_READ_WRITE);
    // Protecting a hole changes nothing.
    assert_eq!(t.protect(4 * G1, K4, Perms::READ), Ok(0));
}

#[test]
fn arm_bad_arguments_and_overlaps_change_nothing() {
    let mut t = Arm::new(48).unwrap();
    assert_eq!(t.map(0x800, 0, K4, Perms::READ), Err(SvaError::Unaligned));
    assert_eq!(t.map(0, 0x800, K4, Perms::READ), Err(SvaError::Unaligned));
    assert_eq!(t.map(0, 0, 0x800, Perms::READ), Err(SvaError::Unaligned));
    assert_eq!(t.map(0, 0, 0, Perms::READ), Err(SvaError::EmptyRange));
    assert_eq!(
        t.map(0, 1 << 48, K4, Perms::READ),
        Err(SvaError::OutputTooWide)
    );
    assert_eq!(
        t.map(0, u64::MAX - 0xfff, 2 * K4, Perms::READ),
        Err(SvaError::EmptyRange)
    );
    assert_eq!(t.table_pages(), 1);

    t.map(0x3000, 0x3000, K4, Perms::READ).unwrap();
    assert_eq!(
        t.map(0x1000, 0x10_1000, 4 * K4, Perms::READ_WRITE),
        Err(SvaError::AlreadyMapped { va: 0x3000 })
    );
    // What the failed call mapped before the overlap was taken back.
    assert_eq!(t.translate(0x1000), None);
    assert_eq!(t.translate(0x2000), None);
    assert_eq!(t.translate(0x3000).unwrap().pa, 0x3000);
    assert_eq!(t.translate(0x3000).unwrap().perms, Perms::READ);
    // A block over a page is refused too.
    assert_eq!(
        t.map(0, 0, M2, Perms::READ),
        Err(SvaError::AlreadyMapped { va: 0 })
    );
    assert_eq!(t.translate(0x3000).unwrap().pa, 0x3000);
}

// ---- SMMUv3 context descriptors ----------------------------------------------------------

#[test]
fn linear_cd_table_layout() {
    let s1 = Arm::new(48).unwrap();
    let s39 = Arm::new(39).unwrap();
    let mut cds = Cds::new(CdLayout::Linear, 4, S1Dss::Ssid0).unwrap();
    let base = cds.s1contextptr();
    assert_eq!(
        cds.desc(),
        TableDesc::ArmSmmuV3 {
            s1fmt: 0,
            s1dss: 2,
            s1contextptr: base,
            s1cdmax: 4,
        }
    );
    cds.set_cd(3, &s1, 0x1234).unwrap();
    cds.set_cd(15, &s39, 7).unwrap();
    // CD 3 at base + 64*3: T0SZ 16, V, AA64, ASID; TTB0; six zero words.
    assert_eq!(word(base, 24), 0x1234_0200_8000_0010);
    assert_eq!(word(base, 24), 16 | CD_V | CD_AA64 | (0x1234 << 48));
    assert_eq!(word(base, 25), s1.ttb0());
    assert_eq!(word(base, 15 * 8), 25 | CD_V | CD_AA64 | (7 << 48));
    assert_eq!(word(base, 15 * 8 + 1), s39.ttb0());
    assert_eq!(non_zero(base), vec![24, 25, 120, 121]);
    assert!(cds.is_set(3) && cds.is_set(15) && !cds.is_set(4));

    // Rebinding replaces both words.
    cds.set_cd(3, &s39, 9).unwrap();
    assert_eq!(word(base, 24), 25 | CD_V | CD_AA64 | (9 << 48));
    assert_eq!(word(base, 25), s39.ttb0());

    cds.clear_cd(3).unwrap();
    cds.clear_cd(4).unwrap();
    assert_eq!(non_zero(base), vec![120, 121]);
    assert!(!cds.is_set(3));
    assert_eq!(
        cds.set_cd(16, &s1, 1),
        Err(SvaError::PasidOutOfRange {
            pasid: 16,
            cdmax: 4
        })
    );
    assert_eq!(
        cds.clear_cd(u32::MAX),
        Err(SvaError::PasidOutOfRange {
            pasid: u32::MAX,
            cdmax: 4
        })
    );

    // 1024 CDs (64 KiB) is the linear limit; the last CD lies 63 KiB in.
    let mut big = Cds::new(CdLayout::Linear, 10, S1Dss::Terminate).unwrap();
    big.set_cd(1023, &s1, 1).unwrap();
    assert_eq!(word(big.s1contextptr() + 1023 * 64, 1), s1.ttb0());
    assert_eq!(
        Cds::new(CdLayout::Linear, 11, S1Dss::Terminate).unwrap_err(),
        SvaError::CdMaxTooLarge(11)
    );
}

#[test]
fn two_level_cd_table_layout() {
    let s1 = Arm::new(48).unwrap();
    let mut cds = Cds::new(CdLayout::TwoLevel, 16, S1Dss::Bypass).unwrap();
    let l1 = cds.s1contextptr();
    assert_eq!(
        cds.desc(),
        TableDesc::ArmSmmuV3 {
            s1fmt: 1,
            s1dss: 1,
            s1contextptr: l1,
            s1cdmax: 16,
        }
    );
    // 2^10 L1 descriptors: two pages, all invalid.
    assert!((0..1024).all(|i| word(l1, i) == 0));
    assert_eq!(cds.leaf_tables(), 0);

    // PASID 677 = L1 entry 10, CD 37 of its leaf table.
    cds.set_cd(677, &s1, 0x42).unwrap();
    let d = word(l1, 10);
    assert_eq!(d & 0xfff, 1, "valid bit only");
    let leaf = d & !0xfff;
    assert_eq!(word(leaf, 37 * 8), 16 | CD_V | CD_AA64 | (0x42 << 48));
    assert_eq!(word(leaf, 37 * 8 + 1), s1.ttb0());
    assert_eq!(non_zero(leaf), vec![37 * 8, 37 * 8 + 1]);
    assert_eq!((0..1024).filter(|&i| word(l1, i) != 0).count(), 1);

    // PASID 640 shares the leaf (CD 0); 65535 is the last CD of the last leaf.
    cds.set_cd(640, &s1, 1).unwrap();
    assert_eq!(cds.leaf_tables(), 1);
    assert_eq!(word(leaf, 1), s1.ttb0());
    cds.set_cd(65535, &s1, 2).unwrap();
    assert_eq!(cds.leaf_tables(), 2);
    let last = word(l1, 1023) & !0xfff;
    assert_eq!(word(l1, 1023) & 0xfff, 1);
    assert_eq!(word(last, 63 * 8), 16 | CD_V | CD_AA64 | (2 << 48));

    // Clearing keeps the leaf table (the device may cache the L1 descriptor).
    cds.clear_cd(677).unwrap();
    assert_eq!(non_zero(leaf), vec![0, 1]);
    assert_eq!(word(l1, 10), d);
    // Clearing a PASID whose leaf was never allocated allocates nothing.
    cds.clear_cd(5).unwrap();
    assert_eq!(cds.leaf_tables(), 2);
    assert_eq!(
        cds.set_cd(65536, &s1, 1),
        Err(SvaError::PasidOutOfRange {
            pasid: 65536,
            cdmax: 16
        })
    );

    // Fewer than 64 PASIDs: a single L1 descriptor.
    let mut small = Cds::new(CdLayout::TwoLevel, 3, S1Dss::Terminate).unwrap();
    small.set_cd(7, &s1, 3).unwrap();
    let leaf = word(small.s1contextptr(), 0) & !0xfff;
    assert_eq!(word(leaf, 7 * 8 + 1), s1.ttb0());
    assert!(Cds::new(CdLayout::TwoLevel, 20, S1Dss::Terminate).is_ok());
    assert_eq!(
        Cds::new(CdLayout::TwoLevel, 21, S1Dss::Terminate).unwrap_err(),
        SvaError::CdMaxTooLarge(21)
    );
}

// ---- x86-64 first stage ------------------------------------------------------------------

#[test]
fn x86_four_level_entries_are_exact() {
    let mut t = X86::new(X86Levels::Four).unwrap();
    let va = va4(3, 5, 7, 9);
    t.map(va, 0x8_0000_3000, K4, Perms::USER_READ_WRITE)
        .unwrap();
    let kx = Perms {
        write: false,
        user: false,
        exec: true,
    };
    t.map(va + K4, 0xf_ffff_ffff_f000, K4, kx).unwrap();

    let pml4 = t.pgd();
    assert_eq!(non_zero(pml4), vec![3]);
    let pdpt = x86_next(word(pml4, 3));
    assert_eq!(non_zero(pdpt), vec![5]);
    let pd = x86_next(word(pdpt, 5));
    assert_eq!(non_zero(pd), vec![7]);
    let pt = x86_next(word(pd, 7));
    assert_eq!(non_zero(pt), vec![9, 10]);
    assert_eq!(word(pt, 9), 0x8000_0008_0000_3067);
    assert_eq!(
        word(pt, 9),
        0x8_0000_3000 | X_P | X_RW | X_US | X_A | X_D | X_XD
    );
    // Supervisor, read-only, executable; the top of the 52-bit output space.
    assert_eq!(word(pt, 10), 0xf_ffff_ffff_f000 | X_P | X_A);
    assert_eq!(t.table_pages(), 4);
    assert_eq!(
        t.translate(va + 0xabc),
        Some(Translation {
            pa: 0x8_0000_3abc,
            perms: Perms::USER_READ_WRITE,
            page_size: K4,
        })
    );
    assert_eq!(t.translate(va + K4).unwrap().perms, kx);
    assert_eq!(
        t.map(va + 2 * K4, 1 << 52, K4, Perms::READ),
        Err(SvaError::OutputTooWide)
    );
    assert_eq!(
        t.desc(9, VtdFlags::SRE),
        TableDesc::Vtd {
            pasid: 9,
            addr_width: 48,
            pgd: pml4,
            flags: VtdFlags::SRE,
        }
    );
}

#[test]
fn x86_large_pages_set_ps() {
    let mut t = X86::new(X86Levels::Four).unwrap();
    t.map(G1, 7 * G1, G1 + M2, Perms::READ_WRITE).unwrap();
    let pdpt = x86_next(word(t.pgd(), 0));
    assert_eq!(non_zero(pdpt), vec![1, 2]);
    assert_eq!(
        word(pdpt, 1),
        (7 * G1) | X_P | X_RW | X_A | X_D | X_PS | X_XD
    );
    let pd = x86_next(word(pdpt, 2));
    assert_eq!(non_zero(pd), vec![0]);
    assert_eq!(word(pd, 0), (8 * G1) | X_P | X_RW | X_A | X_D | X_PS | X_XD);
    assert_eq!(t.translate(G1 + 5).unwrap().page_size, G1);
    assert_eq!(t.translate(2 * G1 + 5).unwrap().pa, 8 * G1 + 5);
    assert_eq!(t.translate(2 * G1 + 5).unwrap().page_size, M2);

    // Splitting a 1 GiB page on unmap: 2 MiB pages with PS, one hole.
    assert_eq!(t.unmap(G1 + M2, M2), Ok(M2));
    let pd1 = x86_next(word(pdpt, 1));
    assert_eq!(non_zero(pd1).len(), 511);
    assert_eq!(word(pd1, 1), 0);
    assert_eq!(
        word(pd1, 2),
        (7 * G1 + 2 * M2) | X_P | X_RW | X_A | X_D | X_PS | X_XD
    );
    assert_eq!(t.translate(G1 + M2), None);
    assert_eq!(t.translate(G1 + 2 * M2).unwrap().pa, 7 * G1 + 2 * M2);
}

#[test]
fn x86_five_levels_and_canonical_addresses() {
    let mut t = X86::new(X86Levels::Five).unwrap();
    // PML5 index 2, then 3, 5, 7, 9.
    let va = (2u64 << 48) | va4(3, 5, 7, 9);
    t.map(va, 0x5000, K4, Perms::USER_READ_WRITE).unwrap();
    let pml5 = t.pgd();
    assert_eq!(non_zero(pml5), vec![2]);
    let pml4 = x86_next(word(pml5, 2));
    assert_eq!(non_zero(pml4), vec![3]);
    let pt = x86_next(word(x86_next(word(x86_next(word(pml4, 3)), 5)), 7));
    assert_eq!(word(pt, 9), 0x5000 | X_P | X_RW | X_US | X_A | X_D | X_XD);
    assert_eq!(t.table_pages(), 5);
    assert_eq!(t.translate(va + 1).unwrap().pa, 0x5001);
    assert_eq!(
        t.desc(7, VtdFlags::SRE | VtdFlags::WPE),
        TableDesc::Vtd {
            pasid: 7,
            addr_width: 57,
            pgd: pml5,
            flags: VtdFlags::SRE | VtdFlags::WPE,
        }
    );
    // Bit 56 set without the upper bits: not canonical for 57 bits.
    assert_eq!(
        t.map(1 << 56, 0, K4, Perms::READ),
        Err(SvaError::OutOfRange)
    );
    // The upper half: PML5 index 511 for the top page.
    t.map(u64::MAX - 0xfff, 0x6000, K4, Perms::READ).unwrap();
    assert_eq!(non_zero(pml5), vec![2, 511]);
    assert_eq!(t.translate(u64::MAX).unwrap().pa, 0x6fff);
    assert_eq!(
        t.map(u64::MAX - 0xfff, 0x7000, K4, Perms::READ),
        Err(SvaError::AlreadyMapped {
            va: u64::MAX - 0xfff
        })
    );

    // 4 levels: 0xffff_8000_0000_0000 is PML4 index 256; 0x0000_8000_0000_0000 is not canonical.
    let mut t = X86::new(X86Levels::Four).unwrap();
    let kernel = 0xffff_8000_0000_0000u64;
    t.map(kernel, 0x9000, K4, Perms::READ_WRITE).unwrap();
    assert_eq!(non_zero(t.pgd()), vec![256]);
    assert_eq!(t.translate(kernel + 4).unwrap().pa, 0x9004);
    assert_eq!(t.translate(0x0000_8000_0000_0000), None);
    assert_eq!(
        t.map(0x0000_8000_0000_0000, 0, K4, Perms::READ),
        Err(SvaError::OutOfRange)
    );
    // A range must stay in one half.
    assert_eq!(
        t.map(0x7fff_ffff_f000, 0, 2 * K4, Perms::READ),
        Err(SvaError::OutOfRange)
    );
    assert_eq!(t.unmap(kernel, K4), Ok(K4));
    assert_eq!(non_zero(t.pgd()), Vec::<u64>::new());
    assert_eq!((t.table_pages(), t.detached_pages()), (1, 3));
}

#[test]
fn x86_protect_rewrites_leaf_bits() {
    let mut t = X86::new(X86Levels::Four).unwrap();
    t.map(0x40_0000, 0x80_0000, 2 * K4, Perms::USER_READ_WRITE)
        .unwrap();
    let user_rx = Perms {
        write: false,
        user: true,
        exec: true,
    };
    assert_eq!(t.protect(0x40_1000, 3 * K4, user_rx), Ok(K4));
    let pt = x86_next(word(x86_next(word(x86_next(word(t.pgd(), 0)), 0)), 2));
    assert_eq!(
        word(pt, 0),
        0x80_0000 | X_P | X_RW | X_US | X_A | X_D | X_XD
    );
    assert_eq!(word(pt, 1), 0x80_1000 | X_P | X_US | X_A);
    assert_eq!(t.translate(0x40_1000).unwrap().perms, user_rx);
}
