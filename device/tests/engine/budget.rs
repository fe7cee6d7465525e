//! The device-wide budget (PROTOCOL.md §6, "Resource limits"): mappings of all domains
//! together, bound tables, page-request groups of all endpoints. Past each bound the request
//! gets S_NOMEM and the dump, the translations and the counters of the state are unchanged;
//! whatever frees an item (UNMAP, a domain's death, DETACH, reset) gives its room back.

use std::time::Instant;

use crate::common::*;
use crate::sva::guest::{attach_table, config as sva_config, vtd_table, Fmt, Sva};
use vhost_device_iommu::engine::{
    DmaOp, DmaOutcome, DmaRequest, Engine, EngineConfig, Limits, Translation,
};
use vhost_device_iommu::host::{Access, DmaAttrs};
use virtio_iommu_spec::event::FaultReason;
use virtio_iommu_spec::ext::{VtdFlags, S1DSS_TERM, S1FMT_LINEAR};
use virtio_iommu_spec::{FaultEvent, Status};
use virtio_iommu_testkit::requests::arm_table;

/// Per domain 3 mappings, 5 in all.
fn budget_config() -> EngineConfig {
    EngineConfig {
        limits: Limits {
            max_mappings_per_domain: 3,
            max_mappings_total: 5,
            ..Limits::default()
        },
        ..small_config()
    }
}

fn page(i: u64) -> (u64, u64) {
    (i << 12, (i << 12) | 0xfff)
}

fn map_page(v: &mut Engine, domain: u32, i: u64) -> Status {
    let (a, l) = page(i);
    map(v, domain, a, l, 0x10_0000 + a, RW)
}

/// How endpoints 0..=3 see pages 0..=7 without PASID and with PASIDs 1..=3.
fn translations(v: &mut Engine) -> Vec<Result<Translation, FaultEvent>> {
    let mut out = Vec::new();
    for ep in 0..=3 {
        for pasid in [None, Some(1), Some(2), Some(3)] {
            for i in 0..=7 {
                out.push(
                    v.device_dma()
                        .translate(ep, pasid, i << 12, 8, Access::Read),
                );
            }
        }
    }
    while v.pop_event(48).is_some() {}
    out
}

#[test]
fn the_total_mapping_budget_spans_domains() {
    let mut v = dev(budget_config());
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    assert_eq!(attach(&mut v, 2, 1), Status::Ok);
    assert_eq!(attach(&mut v, 3, 2), Status::Ok);
    for i in 0..3 {
        assert_eq!(map_page(&mut v, 1, i), Status::Ok);
    }
    // The per-domain bound first, then the total one while domain 2 is below its own.
    assert_eq!(map_page(&mut v, 1, 3), Status::NoMem);
    assert_eq!(map_page(&mut v, 2, 0), Status::Ok);
    assert_eq!(map_page(&mut v, 2, 1), Status::Ok);
    let (dump, stats, seen) = (v.dump(), v.stats(), translations(&mut v));
    assert_eq!(stats.mappings, 5);
    for (domain, i) in [(2, 2), (3, 0), (3, 7)] {
        assert_eq!(map_page(&mut v, domain, i), Status::NoMem, "{domain}/{i}");
    }
    assert_eq!(v.dump(), dump);
    assert_eq!(translations(&mut v), seen);
    assert_eq!(v.stats().mappings, 5);
    assert_eq!(v.stats().requests.map.nomem, 4);
    // A refused MAP that would also overlap, or hit a reserved region, says so first.
    assert_eq!(map_page(&mut v, 2, 1), Status::Inval);

    // UNMAP gives room back.
    let (a, l) = page(0);
    assert_eq!(unmap(&mut v, 1, a, l), Status::Ok);
    assert_eq!(map_page(&mut v, 3, 0), Status::Ok);
    assert_eq!(map_page(&mut v, 3, 1), Status::NoMem);
    // So does a domain that dies with its mappings: endpoint 0 moves out of domain 1 (its
    // only endpoint), taking 2 mappings away.
    assert_eq!(attach(&mut v, 4, 0), Status::Ok);
    assert_eq!(v.stats().mappings, 3);
    assert_eq!(map_page(&mut v, 4, 0), Status::Ok);
    assert_eq!(map_page(&mut v, 4, 1), Status::Ok);
    assert_eq!(map_page(&mut v, 4, 2), Status::NoMem);
    // DETACH of a domain's last endpoint.
    assert_eq!(detach(&mut v, 2, 1), Status::Ok);
    assert_eq!(v.stats().mappings, 3);
    assert_eq!(map_page(&mut v, 3, 1), Status::Ok);
    assert_eq!(map_page(&mut v, 3, 2), Status::Ok);
    assert_eq!(map_page(&mut v, 4, 2), Status::NoMem);
    // A reset empties the budget.
    v.reset();
    assert_eq!(v.stats().mappings, 0);
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    for i in 0..3 {
        assert_eq!(map_page(&mut v, 1, i), Status::Ok);
    }
    assert_eq!(attach(&mut v, 2, 1), Status::Ok);
    assert_eq!(map_page(&mut v, 2, 0), Status::Ok);
    assert_eq!(map_page(&mut v, 2, 1), Status::Ok);
    assert_eq!(map_page(&mut v, 2, 2), Status::NoMem);
}

#[test]
fn one_mapping_of_the_whole_space_costs_one() {
    let mut v = dev(EngineConfig {
        endpoints: vec![eps(0..=15, vec![])],
        limits: Limits {
            max_mappings_total: 1,
            ..Limits::default()
        },
        ..small_config()
    });
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    assert_eq!(map(&mut v, 1, 0, u64::MAX, 0, RW), Status::Ok);
    assert_eq!(attach(&mut v, 2, 1), Status::Ok);
    assert_eq!(map_page(&mut v, 2, 0), Status::NoMem);
    assert_eq!(unmap(&mut v, 1, 0, u64::MAX), Status::Ok);
    assert_eq!(map_page(&mut v, 2, 0), Status::Ok);
}

/// Two tables at most.
fn table_config() -> EngineConfig {
    let mut c = sva_config();
    c.limits.max_tables = 2;
    c
}

#[test]
fn the_table_budget_counts_binds_not_replacements() {
    let mut s = Sva::with_config(Fmt::Vtd(48), 0, table_config());
    let vtd = |pasid, pgd| vtd_table(pasid, 48, pgd, VtdFlags::empty());
    let pt = s.bind(1);
    pt.map(&mut s.g, 0x3000, 0x8000);
    s.bind(2);
    assert_eq!(s.v.stats().tables, 2);
    let (dump, seen) = (s.v.dump(), translations(&mut s.v));
    assert_eq!(
        seen[8 + 3],
        Ok(Translation {
            gpa: 0x8000,
            len: 8
        })
    );
    // A third PASID, and a CD table for another endpoint: no room.
    assert_eq!(attach_table(&mut s.v, 1, 0, vtd(3, 0x1000)), Status::NoMem);
    assert_eq!(attach(&mut s.v, 1, 1), Status::Ok);
    let cd = arm_table(S1FMT_LINEAR, S1DSS_TERM, 0x1000, 4);
    assert_eq!(attach_table(&mut s.v, 1, 1, cd), Status::NoMem);
    assert_eq!(s.v.stats().tables, 2);
    assert_eq!(s.v.stats().requests.attach_table.nomem, 2);
    assert_eq!(detach(&mut s.v, 1, 1), Status::Ok);
    assert_eq!(s.v.dump(), dump);
    assert_eq!(translations(&mut s.v), seen);
    // Replacing PASID 1's table adds none.
    assert_eq!(attach_table(&mut s.v, 1, 0, vtd(1, 0x2000)), Status::Ok);
    assert_eq!(s.v.stats().tables, 2);
    // Leaving the domain drops the endpoint's tables and their room comes back.
    assert_eq!(detach(&mut s.v, 1, 0), Status::Ok);
    assert_eq!(s.v.stats().tables, 0);
    assert_eq!(attach(&mut s.v, 1, 1), Status::Ok);
    assert_eq!(attach_table(&mut s.v, 1, 1, cd), Status::Ok);
    // An Arm table replaced by another: still one.
    let cd2 = arm_table(S1FMT_LINEAR, S1DSS_TERM, 0x3000, 4);
    assert_eq!(attach_table(&mut s.v, 1, 1, cd2), Status::Ok);
    assert_eq!(attach(&mut s.v, 1, 0), Status::Ok);
    assert_eq!(attach_table(&mut s.v, 1, 0, vtd(5, 0x1000)), Status::Ok);
    assert_eq!(attach_table(&mut s.v, 1, 0, vtd(6, 0x1000)), Status::NoMem);
    assert_eq!(s.v.stats().tables, 2);
    s.v.reset();
    assert_eq!(s.v.stats().tables, 0);
}

fn dma(v: &mut Engine, ep: u32, page: u64) -> DmaOutcome {
    let req = DmaRequest {
        endpoint: ep,
        pasid: Some(1),
        iova: page << 12,
        op: DmaOp::Read(8),
        attrs: DmaAttrs::default(),
    };
    v.device_dma().start(req, Instant::now())
}

#[test]
fn page_request_groups_of_all_endpoints_are_bounded() {
    let mut c = sva_config();
    c.limits.max_page_request_groups = 4;
    c.limits.max_page_request_groups_total = 3;
    let mut s = Sva::with_config(Fmt::Vtd(48), 0, c);
    s.bind(1);
    // Endpoint 1 in the same domain, with its own empty table for PASID 1.
    assert_eq!(attach(&mut s.v, 1, 1), Status::Ok);
    let root = s.g.page();
    let t = vtd_table(1, 48, root, VtdFlags::empty());
    assert_eq!(attach_table(&mut s.v, 1, 1, t), Status::Ok);
    assert!(matches!(dma(&mut s.v, 0, 0), DmaOutcome::Pending(_)));
    assert!(matches!(dma(&mut s.v, 0, 1), DmaOutcome::Pending(_)));
    assert!(matches!(dma(&mut s.v, 1, 0), DmaOutcome::Pending(_)));
    let pending = s.v.pending_events();
    // Each endpoint is below its own 4, the device is at its 3: the fault is final at once.
    for ep in [0, 1] {
        match dma(&mut s.v, ep, 9) {
            DmaOutcome::Fault(f) => assert_eq!(f.reason, FaultReason::Mapping),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(s.v.outstanding_page_requests(0), 2);
    assert_eq!(s.v.outstanding_page_requests(1), 1);
    assert_eq!(s.v.device_dma().parked(), 3);
    // Two fault records more, no page request.
    assert_eq!(s.v.pending_events(), pending + 2);
    let c = s.v.stats().page_requests;
    assert_eq!((c.raised, c.refused, c.outstanding), (3, 2, 3));
}
