//! What the device holds per resource, measured with the counting allocator (`counting_alloc`):
//! each figure stays under its `engine::footprint` constant, so the worst case those constants
//! give (README "Worst-case memory of the defaults") is a bound. Run with `--nocapture` to see
//! the figures.

use std::time::Instant;

use crate::common::*;
use crate::counting_alloc::live_bytes;
use crate::sva::guest::{attach_table, device, vtd_table, Fmt, Sva};
use vhost_device_iommu::engine::footprint::{
    DOMAIN_BYTES, ENDPOINT_BYTES, MAPPING_BYTES, PAGE_REQUEST_BYTES, TABLE_BYTES,
};
use vhost_device_iommu::engine::{
    DmaOp, DmaOutcome, DmaRequest, EndpointConfig, EngineConfig, Footprint, Limits,
};
use vhost_device_iommu::host::DmaAttrs;
use virtio_iommu_spec::ext::{TableFormat, VtdFlags, S1DSS_TERM, S1FMT_LINEAR};
use virtio_iommu_spec::Status;
use virtio_iommu_testkit::requests::arm_table;

/// Mappings per measurement: enough B-tree levels for the ratio to settle.
const MAPPINGS: u64 = 12_000;

/// Endpoints 0..=0xffff without reserved regions, limits out of the way.
fn roomy() -> EngineConfig {
    EngineConfig {
        endpoints: vec![eps(0..=0xffff, vec![])],
        boot_bypass: false,
        limits: Limits {
            max_mappings_per_domain: usize::MAX,
            max_mappings_total: usize::MAX,
            ..Limits::default()
        },
        ..EngineConfig::default()
    }
}

/// Heap bytes per item that `f` leaves behind, `f` making `n` items.
fn per_item(n: u64, f: impl FnOnce()) -> f64 {
    let before = live_bytes();
    f();
    #[allow(clippy::cast_precision_loss)] // byte counts far below 2^52
    let per = (live_bytes() - before) as f64 / n as f64;
    per
}

#[allow(clippy::cast_precision_loss)]
fn bound(bytes: u64) -> f64 {
    bytes as f64
}

fn page(i: u64) -> (u64, u64) {
    (i << 12, (i << 12) | 0xfff)
}

/// Bytes per live mapping after mapping the pages of `order`, then unmapping every `thin`-th
/// of them (0: none).
fn mapping_cost(order: &[u64], thin: usize) -> f64 {
    let mut v = dev(roomy());
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    let before = live_bytes();
    for &i in order {
        let (a, l) = page(i);
        assert_eq!(map(&mut v, 1, a, l, a, RW), Status::Ok);
    }
    let mut live = order.len();
    if thin > 0 {
        for &i in order.iter().step_by(thin) {
            let (a, l) = page(i);
            assert_eq!(unmap(&mut v, 1, a, l), Status::Ok);
            live -= 1;
        }
    }
    assert_eq!(v.stats().mappings, live as u64);
    #[allow(clippy::cast_precision_loss)]
    let per = (live_bytes() - before) as f64 / live as f64;
    per
}

#[test]
fn a_mapping_costs_at_most_mapping_bytes() {
    let seq: Vec<u64> = (0..MAPPINGS).collect();
    let rev: Vec<u64> = (0..MAPPINGS).rev().collect();
    // A permutation of the pages (odd multiplier modulo a power of two).
    let scrambled: Vec<u64> = (0..1u64 << 13).map(|i| (i * 40_503) & 0x1fff).collect();
    let mut worst: f64 = 0.0;
    for (name, order, thin) in [
        ("ascending", &seq, 0),
        ("descending", &rev, 0),
        ("scrambled", &scrambled, 0),
    ]
    .into_iter()
    .chain((5..=9).map(|k| ("ascending, every k-th unmapped", &seq, k)))
    {
        let per = mapping_cost(order, thin);
        eprintln!("mapping, {name} (k = {thin}): {per:.1} B");
        worst = worst.max(per);
    }
    eprintln!("mapping, worst: {worst:.1} B (bound {MAPPING_BYTES})");
    assert!(worst <= bound(MAPPING_BYTES), "{worst} B per mapping");
    // The emptiest leaves cost more than the 24 bytes of an entry: the allocator is counting.
    assert!(
        worst >= 40.0,
        "{worst}: is the counting allocator installed?"
    );
}

#[test]
fn refused_maps_cost_nothing() {
    let mut v = dev(EngineConfig {
        limits: Limits {
            max_mappings_total: 100,
            ..Limits::default()
        },
        ..roomy()
    });
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    for i in 0..100 {
        let (a, l) = page(i);
        assert_eq!(map(&mut v, 1, a, l, a, RW), Status::Ok);
    }
    let before = live_bytes();
    for i in 100..10_100 {
        let (a, l) = page(i);
        assert_eq!(map(&mut v, 1, a, l, a, RW), Status::NoMem);
    }
    assert_eq!(live_bytes(), before);
}

#[test]
fn domains_and_endpoints_cost_at_most_their_bounds() {
    // Around the host's hash tables growing (at 7/8 of a power of two) and between.
    for n in [3_000u64, 28_673, 65_535] {
        let count = u32::try_from(n).unwrap();
        let mut v = dev(roomy());
        let d = per_item(n, || {
            for i in 0..count {
                assert_eq!(attach(&mut v, i + 1, i), Status::Ok);
            }
        });
        let mut v = dev(roomy());
        assert_eq!(attach(&mut v, 1, 0), Status::Ok);
        let e = per_item(n, || {
            for i in 1..=count {
                assert_eq!(attach(&mut v, 1, i.min(0xffff)), Status::Ok);
            }
        });
        eprintln!("n = {n}: domain with its endpoint {d:.1} B, endpoint {e:.1} B");
        assert!(d <= bound(DOMAIN_BYTES), "{n} domains: {d} B each");
        assert!(e <= bound(ENDPOINT_BYTES), "{n} endpoints: {e} B each");
    }
}

/// Endpoints 0..=0xffff with 20 PASID bits, page requests and both formats; limits out of the
/// way.
fn sva_roomy() -> EngineConfig {
    EngineConfig {
        endpoints: vec![EndpointConfig {
            ids: 0..=0xffff,
            reserved: Vec::new(),
            pasid_bits: 20,
            page_requests: true,
            table_formats: vec![TableFormat::ArmSmmuV3, TableFormat::Vtd],
        }],
        boot_bypass: false,
        offer_attach_table: true,
        offer_page_request: true,
        limits: Limits {
            max_page_request_groups: 65_535,
            max_page_request_groups_total: usize::MAX,
            max_pending_events: 1 << 20,
            ..Limits::default()
        },
        ..EngineConfig::default()
    }
}

#[test]
fn tables_cost_at_most_table_bytes() {
    for n in [3_000u32, 28_673] {
        // VT-d: one table per PASID of one endpoint.
        let (mut v, _g) = device(sva_roomy());
        assert_eq!(attach(&mut v, 1, 0), Status::Ok);
        let vtd = per_item(n.into(), || {
            for pasid in 0..n {
                let t = vtd_table(pasid, 48, 0x1000, VtdFlags::empty());
                assert_eq!(attach_table(&mut v, 1, 0, t), Status::Ok);
            }
        });
        // Arm: one CD table per endpoint.
        let (mut v, _g) = device(sva_roomy());
        for ep in 0..n {
            assert_eq!(attach(&mut v, 1, ep), Status::Ok);
        }
        let arm = per_item(n.into(), || {
            for ep in 0..n {
                let t = arm_table(S1FMT_LINEAR, S1DSS_TERM, 0x1000, 4);
                assert_eq!(attach_table(&mut v, 1, ep, t), Status::Ok);
            }
        });
        assert_eq!(v.stats().tables, u64::from(n));
        eprintln!("n = {n}: VT-d table {vtd:.1} B, Arm table {arm:.1} B");
        assert!(vtd.max(arm) <= bound(TABLE_BYTES), "{n}: {vtd} / {arm} B");
    }
}

#[test]
fn page_requests_cost_at_most_page_request_bytes() {
    const N: u32 = 10_000;
    let mut s = Sva::with_config(Fmt::Vtd(48), 0, sva_roomy());
    s.bind(1);
    let now = Instant::now();
    let per = per_item(N.into(), || {
        for i in 0..N {
            let req = DmaRequest {
                endpoint: 0,
                pasid: Some(1),
                iova: u64::from(i) << 12,
                op: DmaOp::Write(vec![0]),
                attrs: DmaAttrs::default(),
            };
            assert!(matches!(
                s.v.device_dma().start(req, now),
                DmaOutcome::Pending(_)
            ));
        }
    });
    assert_eq!(s.v.outstanding_page_requests(0), N);
    eprintln!("page request with its parked DMA and queued event: {per:.1} B");
    assert!(per <= bound(PAGE_REQUEST_BYTES), "{per} B");
}

#[test]
fn the_defaults_fit_a_small_host() {
    let f = Footprint::of(&Limits::default());
    let mib = |b: u64| b >> 20;
    eprintln!("{f:?}: {} MiB", mib(f.total()));
    // README "Worst-case memory of the defaults".
    assert_eq!(mib(f.mappings), 64);
    assert_eq!(mib(f.total()), 129, "{f:?}");
}
