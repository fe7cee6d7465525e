//! Seeds of `table_walk`: valid AArch64 and x86-64 tables (every level, 4 KiB pages, 2 MiB and
//! 1 GiB blocks), linear and two-level CD tables bound in the nested store, self-referencing
//! tables, and edits with and without invalidation.

use virtio_iommu_spec::ext::{InvalScope, VtdFlags, S1DSS_BYPASS, S1DSS_SSID0, S1FMT_4KL2};
use virtio_iommu_spec::formats::aarch64::{AF, AP_EL0, TABLE_OR_PAGE, VALID};
use virtio_iommu_spec::formats::cd_table::{CD0_AA64, CD0_ASID_SHIFT, CD0_EPD0, CD0_V, L1_VALID};
use virtio_iommu_spec::formats::x86::{P, PS, RW, US};
use virtio_iommu_spec::request::TableDesc;

use crate::tables::{WalkOp, WalkScenario};

const ARM_TABLE: u64 = VALID | TABLE_OR_PAGE;
const X86_TABLE: u64 = P | RW | US;

fn entry(table: u64, index: u64, v: u64) -> WalkOp {
    WalkOp::Entry(table + 8 * index, v)
}

/// AArch64, 48-bit input: L0 0x1000 → L1 0x2000 → L2 0x3000 → L3 0x4000; L3[5] → 0x8000,
/// L2[1] a 2 MiB block, L1[1] a 1 GiB block.
fn arm_tables() -> Vec<WalkOp> {
    vec![
        entry(0x1000, 0, 0x2000 | ARM_TABLE),
        entry(0x2000, 0, 0x3000 | ARM_TABLE),
        entry(0x3000, 0, 0x4000 | ARM_TABLE),
        entry(0x4000, 5, 0x8000 | ARM_TABLE | AF | AP_EL0),
        entry(0x3000, 1, 0x20_0000 | VALID | AF),
        entry(0x2000, 1, 0x4000_0000 | VALID | AF | AP_EL0),
    ]
}

/// x86-64: PML5 0xe000 → PML4 0x9000 → PDPT 0xa000 → PD 0xb000 → PT 0xc000; PT[1] → 0xd000,
/// PD[1] a 2 MiB page, PDPT[1] a 1 GiB page.
fn x86_tables() -> Vec<WalkOp> {
    vec![
        entry(0xe000, 0, 0x9000 | X86_TABLE),
        entry(0x9000, 0, 0xa000 | X86_TABLE),
        entry(0xa000, 0, 0xb000 | X86_TABLE),
        entry(0xb000, 0, 0xc000 | X86_TABLE),
        entry(0xc000, 1, 0xd000 | X86_TABLE),
        entry(0xb000, 1, 0x20_0000 | X86_TABLE | PS),
        entry(0xa000, 1, 0x4000_0000 | P | PS),
    ]
}

/// A linear CD table at 0x6000: CD 0 → the 48-bit AArch64 table (ASID 1), CD 1 → its L1 as a
/// 39-bit table (ASID 2), CD 2 with EPD0; a 4KL2 L1 table at 0x7000 whose entry 1 points at it.
fn cd_tables() -> Vec<WalkOp> {
    let cd0 = |t0sz: u64, asid: u64| CD0_V | CD0_AA64 | t0sz | (asid << CD0_ASID_SHIFT);
    vec![
        WalkOp::Entry(0x6000, cd0(16, 1)),
        WalkOp::Entry(0x6008, 0x1000),
        WalkOp::Entry(0x6040, cd0(25, 2)),
        WalkOp::Entry(0x6048, 0x2000),
        WalkOp::Entry(0x6080, cd0(16, 3) | CD0_EPD0),
        WalkOp::Entry(0x6088, 0x1000),
        WalkOp::Entry(0x7008, 0x6000 | L1_VALID),
    ]
}

fn arm(ttb0: u64, t0sz: u8, va: u64) -> WalkOp {
    WalkOp::Arm { ttb0, t0sz, va }
}

fn x86(pgd: u64, addr_width: u8, va: u64, privileged: bool) -> WalkOp {
    WalkOp::X86 {
        pgd,
        addr_width,
        flags: u8::try_from(VtdFlags::SRE.bits()).unwrap_or(0),
        va,
        privileged,
    }
}

fn translate(table: u8, pasid: Option<u32>, va: u64, access: u8) -> WalkOp {
    WalkOp::Translate {
        table,
        pasid,
        va,
        access,
    }
}

/// Seeds of `table_walk`.
#[must_use]
pub fn table_walk() -> Vec<WalkScenario> {
    let mut arm_ops = arm_tables();
    arm_ops.extend([
        arm(0x1000, 16, 0x5123),
        arm(0x1000, 16, 0x20_1234),
        arm(0x1000, 16, 0x4000_5000),
        arm(0x1000, 16, 0x6000),
        arm(0x1000, 16, 1 << 48),
        arm(0x2000, 25, 0x5000),
        arm(0x3000, 34, 0x20_0000),
    ]);
    let mut x86_ops = x86_tables();
    x86_ops.extend([
        x86(0x9000, 48, 0x1abc, false),
        x86(0x9000, 48, 0x20_1234, true),
        x86(0x9000, 48, 0x4000_0000, false),
        x86(0xe000, 57, 0x1000, false),
        x86(0x9000, 48, 0xffff_8000_0000_0000, false),
        x86(0x9000, 48, 0x8000_0000_0000, false),
    ]);
    let mut nested_ops = arm_tables();
    nested_ops.extend(x86_tables());
    nested_ops.extend(cd_tables());
    nested_ops.extend([
        WalkOp::Cd {
            s1fmt: 0,
            ptr: 0x6000,
            s1cdmax: 2,
            ssid: 1,
        },
        WalkOp::Cd {
            s1fmt: S1FMT_4KL2,
            ptr: 0x7000,
            s1cdmax: 8,
            ssid: 65,
        },
        WalkOp::Bind(TableDesc::ArmSmmuV3 {
            s1fmt: 0,
            s1dss: S1DSS_SSID0,
            s1contextptr: 0x6000,
            s1cdmax: 2,
        }),
        WalkOp::Bind(TableDesc::ArmSmmuV3 {
            s1fmt: S1FMT_4KL2,
            s1dss: S1DSS_BYPASS,
            s1contextptr: 0x7000,
            s1cdmax: 8,
        }),
        WalkOp::Bind(TableDesc::Vtd {
            pasid: 3,
            addr_width: 48,
            pgd: 0x9000,
            flags: VtdFlags::SRE,
        }),
        WalkOp::Bind(TableDesc::Vtd {
            pasid: 4,
            addr_width: 57,
            pgd: 0xe000,
            flags: VtdFlags::empty(),
        }),
        translate(0, None, 0x5010, 0),
        translate(0, Some(1), 0x5010, 1),
        translate(0, Some(2), 0x5010, 0),
        translate(1, Some(65), 0x20_0008, 4),
        translate(1, Some(66), 0x20_0008, 0),
        translate(2, None, 0x1008, 5),
        translate(2, None, 0x1010, 1),
        translate(3, Some(4), 0x1008, 4),
        translate(3, None, 0x20_1000, 0),
    ]);
    // Each table points at itself at every level: walks end (a leaf at the table itself), in
    // at most four and five reads.
    let self_ref = WalkScenario {
        ops: vec![
            WalkOp::Entry(0x5000, 0x5000 | ARM_TABLE | AF),
            WalkOp::Entry(0xf000, 0xf000 | X86_TABLE),
            arm(0x5000, 16, 0),
            x86(0xf000, 57, 0, false),
            x86(0xf000, 48, 0, true),
            WalkOp::Bind(TableDesc::Vtd {
                pasid: 0,
                addr_width: 57,
                pgd: 0xf000,
                flags: VtdFlags::empty(),
            }),
            translate(0, None, 0x10, 0),
        ],
    };
    // Cached walks stay cached across an edit; invalidation makes the store see it.
    let mut edits = x86_tables();
    edits.extend([
        WalkOp::Bind(TableDesc::Vtd {
            pasid: 1,
            addr_width: 48,
            pgd: 0x9000,
            flags: VtdFlags::empty(),
        }),
        translate(0, None, 0x1000, 1),
        entry(0xc000, 1, 0xe000 | X86_TABLE),
        translate(0, None, 0x1000, 1),
        WalkOp::Invalidate {
            table: 0,
            caches: 1,
            scope: InvalScope::Range {
                pasid: Some(1),
                start: 0x1000,
                nr_pages: 1,
                granule: 12,
            },
            archid: None,
        },
        translate(0, None, 0x1000, 1),
        WalkOp::InvalidateAll,
        translate(0, None, 0x1000, 0),
        WalkOp::Entry(0x1_0000_0000, 0x1_0000_1000 | X86_TABLE),
        x86(0x1_0000_0000, 48, 0, false),
    ]);
    vec![
        WalkScenario { ops: arm_ops },
        WalkScenario { ops: x86_ops },
        WalkScenario { ops: nested_ops },
        self_ref,
        WalkScenario { ops: edits },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_seeds_encode_decode_and_run() {
        let o: Vec<_> = table_walk()
            .iter()
            .map(|s| {
                assert_eq!(WalkScenario::decode(&s.encode()), *s);
                crate::tables::run(s)
            })
            .collect();
        let got = |x: &crate::tables::WalkOutcome| (x.leaves, x.blocks, x.cds, x.compared);
        // AArch64: a page, a 2 MiB and a 1 GiB block at 48 bits, the page at 39 bits, the 2 MiB
        // block at 30 bits.
        assert_eq!(got(&o[0]), (5, 3, 0, 0), "{:?}", o[0]);
        assert_eq!(o[0].max_reads, 4);
        // x86-64: the page at 48 and 57 bits, a 2 MiB and a 1 GiB page.
        assert_eq!(got(&o[1]), (4, 2, 0, 0), "{:?}", o[1]);
        assert_eq!(o[1].max_reads, 5);
        // The nested store agrees with the walkers for every translation: six leaves through
        // CDs 0 and 1 (once found through the L1 table, a privileged read of an EL1 block) and
        // both x86-64 tables; EPD0 twice, privileged without SRE. A CD through the L1 table
        // and a 39-bit walk: six reads.
        assert_eq!(got(&o[2]), (6, 2, 7, 9), "{:?}", o[2]);
        assert_eq!(o[2].max_reads, 6);
        // Self-referencing tables end at a leaf.
        assert_eq!((o[3].leaves, o[3].max_reads), (4, 5), "{:?}", o[3]);
        // Edits: compared before the edit and after the full invalidation only.
        assert_eq!(o[4].compared, 2, "{:?}", o[4]);
    }
}
