//! Format-specific vSVA rules: SMMUv3 `s1dss` (TERM / BYPASS / SSID0), 2-level CD tables, the
//! CD cache and ASID (ARCHID) invalidation, EPD0, access flag and AP bits; VT-d large pages,
//! U/S, SRE / WPE, XD and canonical addresses.

use std::time::Instant;

use super::guest::*;
use crate::common::{attach, send};
use vhost_device_iommu::engine::{DmaAttrs, DmaOp, DmaOutcome, DmaRequest, Engine};
use virtio_iommu_spec::event::FaultReason;
use virtio_iommu_spec::ext::{
    InvalCaches, InvalScope, VtdFlags, S1DSS_BYPASS, S1DSS_SSID0, S1DSS_TERM, S1FMT_4KL2,
    S1FMT_LINEAR,
};
use virtio_iommu_spec::request::{Invalidate, Map, MapFlags};
use virtio_iommu_spec::{Request, Status};

fn run(v: &mut Engine, pasid: Option<u32>, iova: u64, op: DmaOp, attrs: DmaAttrs) -> DmaOutcome {
    let req = DmaRequest {
        endpoint: 4, // no page requests: stage-1 faults come back at once
        pasid,
        iova,
        op,
        attrs,
    };
    v.device_dma().start(req, Instant::now())
}

fn wr(v: &mut Engine, pasid: Option<u32>, iova: u64, b: u8) -> DmaOutcome {
    run(v, pasid, iova, DmaOp::Write(vec![b]), DmaAttrs::default())
}

fn rd(v: &mut Engine, pasid: Option<u32>, iova: u64, attrs: DmaAttrs) -> DmaOutcome {
    run(v, pasid, iova, DmaOp::Read(1), attrs)
}

fn reason(o: DmaOutcome) -> FaultReason {
    match o {
        DmaOutcome::Fault(f) => f.reason,
        other => panic!("expected a fault, got {other:?}"),
    }
}

const DONE: DmaOutcome = DmaOutcome::Done(Vec::new());
const PRIV: DmaAttrs = DmaAttrs {
    privileged: true,
    exec: false,
};

/// Endpoint 4 in domain 1 with MAP 0x1000 → 0x50_0000 and an Arm CD table bound.
fn arm(s1fmt: u8, s1dss: u8) -> (Engine, Guest, u64, PageTable) {
    let (mut v, mut g) = device(config());
    assert_eq!(attach(&mut v, 1, 4), Status::Ok);
    let m = Request::Map(Map {
        domain: 1,
        virt_start: 0x1000,
        virt_end: 0x1fff,
        phys_start: 0x50_0000,
        flags: MapFlags::READ | MapFlags::WRITE,
    });
    assert_eq!(send(&mut v, m), Status::Ok);
    let pt = PageTable::new(&mut g, Fmt::Arm);
    pt.map(&mut g, 0x1000, 0x30_0000);
    let ptr = g.page();
    let cd0 = match s1fmt {
        S1FMT_LINEAR => ptr,
        _ => {
            let l2 = g.page();
            g.put(ptr, l2 | 1);
            l2
        }
    };
    write_cd(&g, cd0, 1, pt.root);
    assert_eq!(
        attach_table(&mut v, 1, 4, arm_table(s1fmt, s1dss, ptr, 8)),
        Status::Ok
    );
    (v, g, ptr, pt)
}

#[test]
fn arm_s1dss_semantics() {
    // SSID0: DMA without PASID uses CD 0 (so does PASID 0).
    let (mut v, g, _, _) = arm(S1FMT_LINEAR, S1DSS_SSID0);
    assert_eq!(wr(&mut v, None, 0x1000, 1), DONE);
    assert_eq!(wr(&mut v, Some(0), 0x1001, 2), DONE);
    assert_eq!(g.read(0x30_0000, 2), vec![1, 2]);
    assert_eq!(g.read(0x50_0000, 1), vec![0]);
    // BYPASS: DMA without PASID uses the domain's MAP mappings.
    let (mut v, g, _, _) = arm(S1FMT_LINEAR, S1DSS_BYPASS);
    assert_eq!(wr(&mut v, None, 0x1000, 3), DONE);
    assert_eq!(wr(&mut v, Some(0), 0x1000, 4), DONE);
    assert_eq!(g.read(0x50_0000, 1), vec![3]);
    assert_eq!(g.read(0x30_0000, 1), vec![4]);
    assert_eq!(reason(wr(&mut v, None, 0x2000, 3)), FaultReason::Mapping);
    // TERM: DMA without PASID is aborted.
    let (mut v, _, _, _) = arm(S1FMT_LINEAR, S1DSS_TERM);
    assert_eq!(reason(wr(&mut v, None, 0x1000, 5)), FaultReason::Domain);
    assert_eq!(wr(&mut v, Some(0), 0x1000, 5), DONE);
    // DETACH drops the table: PASID DMA then has nothing to go through.
    let st = send(
        &mut v,
        Request::Detach(virtio_iommu_spec::request::Detach {
            domain: 1,
            endpoint: 4,
        }),
    );
    assert_eq!(st, Status::Ok);
    assert_eq!(v.stats().tables, 0);
    assert_eq!(reason(wr(&mut v, Some(0), 0x1000, 5)), FaultReason::Domain);
}

#[test]
fn arm_two_level_cd_table_and_cd_cache() {
    let (mut v, mut g, l1, _) = arm(S1FMT_4KL2, S1DSS_SSID0);
    // PASID 67: L1 index 1, CD 3 of a second L2 table.
    let l2 = g.page();
    g.put(l1 + 8, l2 | 1);
    let pt = PageTable::new(&mut g, Fmt::Arm);
    pt.map(&mut g, 0x7000, 0x31_0000);
    write_cd(&g, l2 + 3 * 64, 67, pt.root);
    assert_eq!(wr(&mut v, Some(67), 0x7000, 7), DONE);
    assert_eq!(g.read(0x31_0000, 1), vec![7]);
    // PASIDs whose L1 entry or CD is invalid, or beyond 2^s1cdmax: DOMAIN.
    assert_eq!(
        reason(wr(&mut v, Some(130), 0x7000, 7)),
        FaultReason::Domain
    );
    assert_eq!(reason(wr(&mut v, Some(66), 0x7000, 7)), FaultReason::Domain);
    assert_eq!(
        reason(wr(&mut v, Some(256), 0x7000, 7)),
        FaultReason::Domain
    );
    // Repoint CD 67 at another table without invalidating the PASID cache: the cached CD is
    // used for a page the IOTLB does not hold.
    let pt2 = PageTable::new(&mut g, Fmt::Arm);
    pt2.map(&mut g, 0x8000, 0x32_0000);
    pt.map(&mut g, 0x8000, 0x33_0000);
    write_cd(&g, l2 + 3 * 64, 67, pt2.root);
    assert_eq!(wr(&mut v, Some(67), 0x8000, 8), DONE);
    assert_eq!(g.read(0x33_0000, 1), vec![8]);
    assert_eq!(
        invalidate(&mut v, 1, InvalCaches::PASID, InvalScope::Pasid(67)),
        Status::Ok
    );
    assert_eq!(wr(&mut v, Some(67), 0x8000, 9), DONE);
    assert_eq!(g.read(0x32_0000, 1), vec![9]);
}

#[test]
fn arm_asid_invalidation() {
    let (mut v, mut g, _, pt) = arm(S1FMT_LINEAR, S1DSS_SSID0);
    assert_eq!(wr(&mut v, Some(0), 0x1000, 1), DONE);
    pt.map(&mut g, 0x1000, 0x34_0000);
    let inv = |archid| {
        Request::Invalidate(Invalidate {
            domain: 1,
            caches: InvalCaches::IOTLB,
            scope: InvalScope::Domain,
            archid: Some(archid),
            leaf: true,
        })
    };
    // CD 0 has ASID 1: ASID 2 (and an ARCHID beyond 16 bits) leave it cached.
    assert_eq!(send(&mut v, inv(2)), Status::Ok);
    assert_eq!(send(&mut v, inv(0x1_0001)), Status::Ok);
    assert_eq!(wr(&mut v, Some(0), 0x1000, 2), DONE);
    assert_eq!(g.read(0x30_0000, 1), vec![2]);
    assert_eq!(send(&mut v, inv(1)), Status::Ok);
    assert_eq!(wr(&mut v, Some(0), 0x1000, 3), DONE);
    assert_eq!(g.read(0x34_0000, 1), vec![3]);
}

#[test]
fn arm_descriptor_bits() {
    let (mut v, mut g, ptr, pt) = arm(S1FMT_LINEAR, S1DSS_SSID0);
    // Read-only page: reads fine, writes fault.
    pt.map_bits(&mut g, 0x2000, 0x30_1000, ARM_PAGE_RO);
    assert_eq!(
        rd(&mut v, Some(0), 0x2000, DmaAttrs::default()),
        DmaOutcome::Done(vec![0])
    );
    assert_eq!(reason(wr(&mut v, Some(0), 0x2000, 1)), FaultReason::Mapping);
    // AP[1] clear: EL1 only. Unprivileged faults, privileged reads and writes work.
    pt.map_bits(&mut g, 0x3000, 0x30_2000, ARM_PAGE_RW & !ARM_AP_EL0);
    assert_eq!(
        reason(rd(&mut v, Some(0), 0x3000, DmaAttrs::default())),
        FaultReason::Mapping
    );
    assert_eq!(rd(&mut v, Some(0), 0x3000, PRIV), DmaOutcome::Done(vec![0]));
    let w = run(&mut v, Some(0), 0x3000, DmaOp::Write(vec![1]), PRIV);
    assert_eq!(w, DONE);
    // Access flag clear, UXN for user exec, PXN for privileged exec.
    pt.map_bits(&mut g, 0x4000, 0x30_3000, ARM_PAGE_RW & !ARM_AF);
    assert_eq!(reason(wr(&mut v, Some(0), 0x4000, 1)), FaultReason::Mapping);
    pt.map_bits(&mut g, 0x5000, 0x30_4000, ARM_PAGE_RW | ARM_UXN);
    let uexec = DmaAttrs {
        privileged: false,
        exec: true,
    };
    let pexec = DmaAttrs {
        privileged: true,
        exec: true,
    };
    assert_eq!(
        reason(rd(&mut v, Some(0), 0x5000, uexec)),
        FaultReason::Mapping
    );
    assert_eq!(
        rd(&mut v, Some(0), 0x5000, pexec),
        DmaOutcome::Done(vec![0])
    );
    // 2 MiB block at L2.
    let l2_slot = pt.slot(&mut g, 0x20_0000, 2);
    g.put(l2_slot, 0x40_0000 | ARM_VALID | ARM_AF | ARM_AP_EL0);
    assert_eq!(wr(&mut v, Some(0), 0x2f_fff0, 6), DONE);
    assert_eq!(g.read(0x4f_fff0, 1), vec![6]);
    // Input beyond 2^48: address-size fault.
    assert_eq!(
        reason(wr(&mut v, Some(0), 1 << 48, 1)),
        FaultReason::Mapping
    );
    // EPD0 and a malformed CD (TG0 ≠ 0) on CD 1.
    let (w0, w1) = cd_words(5, pt.root);
    g.put(ptr + 64, w0 | (1 << 14));
    g.put(ptr + 72, w1);
    assert_eq!(reason(wr(&mut v, Some(1), 0x1000, 1)), FaultReason::Mapping);
    g.put(ptr + 128, w0 | (1 << 6));
    g.put(ptr + 136, w1);
    assert_eq!(reason(wr(&mut v, Some(2), 0x1000, 1)), FaultReason::Unknown);
}

/// Endpoint 4 in domain 1 with a VT-d table for PASID 1.
fn vtd(width: u32, flags: VtdFlags) -> (Engine, Guest, PageTable) {
    let (mut v, mut g) = device(config());
    assert_eq!(attach(&mut v, 1, 4), Status::Ok);
    let pt = PageTable::new(&mut g, Fmt::Vtd(width));
    assert_eq!(
        attach_table(&mut v, 1, 4, vtd_table(1, width, pt.root, flags)),
        Status::Ok
    );
    (v, g, pt)
}

#[test]
fn vtd_large_pages_and_canonical_addresses() {
    let (mut v, mut g, pt) = vtd(48, VtdFlags::empty());
    // 2 MiB page at the PD.
    let pd = pt.slot(&mut g, 0x60_0000, 2);
    g.put(pd, 0x40_0000 | X86_PAGE_RW | X86_PS);
    assert_eq!(wr(&mut v, Some(1), 0x7f_fffe, 1), DONE);
    assert_eq!(g.read(0x5f_fffe, 1), vec![1]);
    // A misaligned 2 MiB page is malformed; a 1 GiB page outside RAM is a bus error.
    let pd = pt.slot(&mut g, 0x80_0000, 2);
    g.put(pd, 0x40_1000 | X86_PAGE_RW | X86_PS);
    assert_eq!(
        reason(wr(&mut v, Some(1), 0x80_0000, 1)),
        FaultReason::Unknown
    );
    let pdpt = pt.slot(&mut g, 1 << 30, 1);
    g.put(pdpt, (1 << 30) | X86_PAGE_RW | X86_PS);
    assert_eq!(
        reason(wr(&mut v, Some(1), 1 << 30, 1)),
        FaultReason::Unknown
    );
    // Non-canonical for 48 bits; canonical upper half just not mapped.
    assert_eq!(
        reason(wr(&mut v, Some(1), 1 << 47, 1)),
        FaultReason::Mapping
    );
    assert_eq!(
        reason(wr(&mut v, Some(1), 0xffff_8000_0000_0000, 1)),
        FaultReason::Mapping
    );
    // 57 bits: addresses above 2^47 are fine.
    let (mut v, mut g, pt) = vtd(57, VtdFlags::empty());
    pt.map(&mut g, 1 << 50, 0x30_0000);
    assert_eq!(wr(&mut v, Some(1), (1 << 50) + 3, 2), DONE);
    assert_eq!(g.read(0x30_0003, 1), vec![2]);
}

#[test]
fn vtd_permission_bits() {
    let (mut v, mut g, pt) = vtd(48, VtdFlags::empty());
    // U/S clear at the PD level only: user accesses fault, privileged need SRE.
    pt.map(&mut g, 0x1000, 0x30_0000);
    let pdpt_entry = pt.slot(&mut g, 0x1000, 2);
    let e = g.get(pdpt_entry);
    g.put(pdpt_entry, e & !X86_US);
    assert_eq!(reason(wr(&mut v, Some(1), 0x1000, 1)), FaultReason::Mapping);
    assert_eq!(
        reason(rd(&mut v, Some(1), 0x1000, PRIV)),
        FaultReason::Mapping
    );
    // XD forbids exec.
    pt.map_bits(&mut g, 0x40_0000, 0x30_1000, X86_PAGE_RW | X86_XD);
    let uexec = DmaAttrs {
        privileged: false,
        exec: true,
    };
    assert_eq!(
        reason(rd(&mut v, Some(1), 0x40_0000, uexec)),
        FaultReason::Mapping
    );
    assert_eq!(
        rd(&mut v, Some(1), 0x40_0000, DmaAttrs::default()),
        DmaOutcome::Done(vec![0])
    );

    // SRE: privileged allowed; without WPE a privileged write ignores R/W.
    let (mut v, mut g, pt) = vtd(48, VtdFlags::SRE);
    pt.map_bits(&mut g, 0x1000, 0x30_0000, X86_PAGE_RO);
    let pw = run(&mut v, Some(1), 0x1000, DmaOp::Write(vec![7]), PRIV);
    assert_eq!(pw, DONE);
    assert_eq!(reason(wr(&mut v, Some(1), 0x1000, 1)), FaultReason::Mapping);
    assert_eq!(g.read(0x30_0000, 1), vec![7]);
    // WPE: it does not.
    let (mut v, mut g, pt) = vtd(48, VtdFlags::SRE | VtdFlags::WPE);
    pt.map_bits(&mut g, 0x1000, 0x30_0000, X86_PAGE_RO);
    let pw = run(&mut v, Some(1), 0x1000, DmaOp::Write(vec![8]), PRIV);
    assert_eq!(reason(pw), FaultReason::Mapping);
    g.write(0x30_0000, &[7]);
    assert_eq!(rd(&mut v, Some(1), 0x1000, PRIV), DmaOutcome::Done(vec![7]));
}
