//! Hostile guests: tables outside RAM, self-referencing tables, random table bytes, a flood of
//! page requests nobody answers, page requests that cannot be delivered or time out, and a
//! guest that answers SUCCESS without fixing anything. Always a bounded outcome, never a hang,
//! a panic or unbounded memory.

use std::time::{Duration, Instant};

use super::guest::*;
use crate::common::attach;
use proptest::prelude::*;
use vhost_device_iommu::engine::{
    DmaAttrs, DmaOp, DmaOutcome, DmaRequest, Engine, Limits, PAGE_REQUESTS_PER_PAGE,
};
use virtio_iommu_spec::event::FaultReason;
use virtio_iommu_spec::ext::{PageRespCode, VtdFlags, S1DSS_SSID0, S1FMT_4KL2, S1FMT_LINEAR};
use virtio_iommu_spec::Status;

fn start(v: &mut Engine, ep: u32, pasid: u32, iova: u64, now: Instant) -> DmaOutcome {
    let req = DmaRequest {
        endpoint: ep,
        pasid: Some(pasid),
        iova,
        op: DmaOp::Read(8),
        attrs: DmaAttrs::default(),
    };
    v.device_dma().start(req, now)
}

fn fault_reason(o: DmaOutcome) -> FaultReason {
    match o {
        DmaOutcome::Fault(f) => f.reason,
        other => panic!("expected a fault, got {other:?}"),
    }
}

#[test]
fn tables_outside_ram_fault_unknown() {
    let outside = RAM_SIZE + 0x1000;
    // VT-d root outside RAM.
    let (mut v, _) = device(config());
    assert_eq!(attach(&mut v, 1, 4), Status::Ok);
    let d = vtd_table(1, 48, outside, VtdFlags::empty());
    assert_eq!(attach_table(&mut v, 1, 4, d), Status::Ok);
    assert_eq!(
        fault_reason(start(&mut v, 4, 1, 0, Instant::now())),
        FaultReason::Unknown
    );
    // Arm CD table and L1 table outside RAM, and at the very top of the address space.
    for (fmt, ptr) in [
        (S1FMT_LINEAR, outside),
        (S1FMT_4KL2, outside),
        (S1FMT_LINEAR, !0xfffu64),
    ] {
        let d = arm_table(fmt, S1DSS_SSID0, ptr, 8);
        assert_eq!(attach_table(&mut v, 1, 4, d), Status::Ok);
        assert_eq!(
            fault_reason(start(&mut v, 4, 255, 0, Instant::now())),
            FaultReason::Unknown
        );
    }
    // An intermediate entry pointing outside RAM, for both formats.
    for fmt in [Fmt::Arm, Fmt::Vtd(48)] {
        let mut s = Sva::new(fmt, 4);
        let pt = s.bind(1);
        let slot = pt.slot(&mut s.g, 0x1000, 1);
        s.g.put(slot, (RAM_SIZE << 4) | fmt.table_bits());
        assert_eq!(
            fault_reason(start(&mut s.v, 4, 1, 0x1000, Instant::now())),
            FaultReason::Unknown,
            "{fmt:?}"
        );
    }
}

#[test]
fn self_referencing_tables_terminate() {
    for fmt in [Fmt::Arm, Fmt::Vtd(48), Fmt::Vtd(57)] {
        let mut s = Sva::new(fmt, 4);
        let pt = s.bind(1);
        // Every entry 0 points at the root itself: VA 0 walks the root at every level and
        // ends on the root page as its leaf (the recursive mapping trick). Arm needs AF/AP at
        // the leaf, which are ignored bits in a table descriptor.
        let bits = match fmt {
            Fmt::Arm => ARM_PAGE_RW,
            Fmt::Vtd(_) => X86_PAGE_RW,
        };
        s.g.put(pt.root, pt.root | bits);
        let out = start(&mut s.v, 4, 1, 0, Instant::now());
        let want = (pt.root | bits).to_le_bytes().to_vec();
        assert_eq!(out, DmaOutcome::Done(want), "{fmt:?}");
        // Entry 1 points at itself through the last level: a 2-level cycle still ends.
        s.g.put(pt.root + 8, pt.root | fmt.table_bits());
        let va = match fmt {
            Fmt::Arm | Fmt::Vtd(48) => 1 << 39,
            Fmt::Vtd(_) => 1 << 48,
        };
        let out = start(&mut s.v, 4, 1, va, Instant::now());
        assert!(!matches!(out, DmaOutcome::Pending(_)), "{fmt:?}: {out:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Random bytes in every table the walk can reach and in the CD: the walk ends with some
    /// outcome and the DMA never touches memory outside RAM.
    #[test]
    fn random_tables_never_panic(
        words in prop::collection::vec(any::<u64>(), 16),
        va in prop_oneof![any::<u64>(), 0u64..0x1_0000],
        arm in any::<bool>(),
        write in any::<bool>(),
        privileged in any::<bool>(),
    ) {
        let fmt = if arm { Fmt::Arm } else { Fmt::Vtd(48) };
        let mut s = Sva::new(fmt, 4);
        let pt = s.bind(1);
        // Point every level's entry for `va` at RAM holding random words (a chain of tables
        // whose entries are random), and the CD's words too.
        let table = |i: usize| TABLES + 0x40_0000 + 0x1000 * i as u64;
        let levels = fmt.levels();
        let mut cur = pt.root;
        for d in 0..levels {
            let shift = 12 + 9 * (levels - 1 - d);
            let slot = cur + ((va >> shift) & 0x1ff) * 8;
            let w = words[d as usize];
            // Half the time a plausible pointer to the next random table, else raw bytes.
            let e = if w & 1 == 0 { w } else { table(d as usize) | (w & 0xfff) };
            s.g.put(slot, e);
            cur = table(d as usize);
        }
        if arm {
            s.g.put(s.cds + 64, words[8]);
            s.g.put(s.cds + 72, words[9]);
        }
        let req = DmaRequest {
            endpoint: 4, // no page requests: every fault is final
            pasid: Some(1),
            iova: va,
            op: if write { DmaOp::Write(vec![0xa5; 16]) } else { DmaOp::Read(16) },
            attrs: DmaAttrs { privileged, exec: false },
        };
        let out = s.v.device_dma().start(req, Instant::now());
        prop_assert!(!matches!(out, DmaOutcome::Pending(_)));
        prop_assert!(s.v.pending_events() <= 256);
    }
}

#[test]
fn a_million_unanswered_page_requests_stay_bounded() {
    let mut s = Sva::new(Fmt::Vtd(48), 0);
    s.bind(1);
    let now = Instant::now();
    let mut pending = 0u32;
    for i in 0..(1u64 << 20) {
        if let DmaOutcome::Pending(_) = start(&mut s.v, 0, 1, i << 12, now) {
            pending += 1;
        }
        assert!(s.v.outstanding_page_requests(0) <= 4);
    }
    // Faults past the limit push page requests out of the full event queue; the device fails
    // those groups itself, so new ones can be raised, but never more than the limits allow.
    assert!(pending >= 4);
    assert!(s.v.device_dma().parked() <= Limits::default().max_page_request_groups_total);
    assert!(s.v.pending_events() <= Limits::default().max_pending_events);
    let c = s.v.stats().page_requests;
    assert_eq!(c.raised, u64::from(pending));
    assert!(c.refused >= (1 << 20) - u64::from(pending));
    // Everything expires.
    assert!(s.v.expire_page_requests(now + Duration::from_secs(2)) <= 4);
    assert_eq!(s.v.outstanding_page_requests(0), 0);
}

#[test]
fn unanswered_requests_time_out() {
    let mut s = Sva::new(Fmt::Arm, 0);
    s.bind(1);
    let t0 = Instant::now();
    let DmaOutcome::Pending(t) = start(&mut s.v, 0, 1, 0x1000, t0) else {
        panic!()
    };
    // Not delivered yet, and the deadline passes: the device fails the group itself and
    // withdraws the request; the guest's late answer is stale.
    let late = t0 + Duration::from_millis(1000);
    assert!(
        matches!(s.v.device_dma().resume(t, late), Some(DmaOutcome::Fault(f)) if f.address == Some(0x1000))
    );
    assert_eq!(s.v.stats().page_requests.timed_out, 1);
    let ev = s.v.pop_event(48).unwrap();
    assert_eq!(
        ev.as_bytes()[4] & 0x20,
        0,
        "only the fault is left, not the page request"
    );
    assert_eq!(
        page_resp(&mut s.v, 0, Some(1), 0, PageRespCode::Success),
        Status::Inval
    );
    // expire_page_requests does the same without anyone resuming.
    let DmaOutcome::Pending(t) = start(&mut s.v, 0, 1, 0x2000, t0) else {
        panic!()
    };
    assert_eq!(s.v.expire_page_requests(t0 + Duration::from_millis(999)), 0);
    assert_eq!(s.v.expire_page_requests(late), 1);
    assert!(matches!(
        s.v.device_dma().resume(t, t0),
        Some(DmaOutcome::Fault(_))
    ));
}

#[test]
fn undeliverable_page_requests_fail() {
    let mut s = Sva::new(Fmt::Vtd(48), 0);
    s.bind(1);
    let DmaOutcome::Pending(t) = start(&mut s.v, 0, 1, 0x1000, Instant::now()) else {
        panic!()
    };
    // The driver only posts 24-byte buffers: the request cannot be delivered.
    let ev = s.v.pop_event(24);
    assert!(ev.is_none());
    assert_eq!(s.v.stats().events.page_requests_failed, 1);
    assert!(matches!(
        s.v.device_dma().resume(t, Instant::now()),
        Some(DmaOutcome::Fault(_))
    ));
    assert_eq!(s.v.outstanding_page_requests(0), 0);
    // Cancelling a parked DMA completes its group too.
    let DmaOutcome::Pending(t) = start(&mut s.v, 0, 1, 0x1000, Instant::now()) else {
        panic!()
    };
    s.v.device_dma().cancel(t);
    assert_eq!(s.v.outstanding_page_requests(0), 0);
    assert_eq!(s.v.device_dma().parked(), 0);
    assert_eq!(s.v.device_dma().resume(t, Instant::now()), None);
}

#[test]
fn success_without_a_fix_is_retried_a_bounded_number_of_times() {
    let mut s = Sva::new(Fmt::Arm, 0);
    s.bind(1);
    let mut out = start(&mut s.v, 0, 1, 0x1000, Instant::now());
    let mut requests = 0;
    while let DmaOutcome::Pending(t) = out {
        requests += 1;
        assert!(requests <= PAGE_REQUESTS_PER_PAGE, "unbounded retries");
        let ev = s.v.pop_event(48).unwrap();
        let gid = u16::from_le_bytes([ev.as_bytes()[24], ev.as_bytes()[25]]);
        assert_eq!(
            page_resp(&mut s.v, 0, Some(1), gid, PageRespCode::Success),
            Status::Ok
        );
        out = s.v.device_dma().resume(t, Instant::now()).unwrap();
    }
    assert_eq!(requests, PAGE_REQUESTS_PER_PAGE);
    assert_eq!(fault_reason(out), FaultReason::Mapping);
    assert_eq!(s.v.stats().page_requests.refused, 1);
}
