//! Every status of ATTACH_TABLE, INVALIDATE and PAGE_RESP, the lifetime of bound tables, and
//! the PROBE property that advertises the page-request limit.

use std::time::Instant;

use super::guest::*;
use crate::common::{attach, send};
use vhost_device_iommu::engine::{DmaAttrs, DmaOp, DmaOutcome, DmaRequest};
use virtio_iommu_spec::ext::{
    InvalCaches, InvalScope, PageRequestCaps, PageRespCode, VtdFlags, S1DSS_SSID0, S1FMT_4KL2,
    S1FMT_64KL2, S1FMT_LINEAR,
};
use virtio_iommu_spec::request::{Attach, AttachFlags, Detach, Probe};
use virtio_iommu_spec::{ProbeProperties, Property, Request, Status};

#[test]
fn attach_table_statuses() {
    let (mut v, _g) = device(config());
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    assert_eq!(attach(&mut v, 2, 6), Status::Ok);
    let bypass = Request::Attach(Attach {
        domain: 3,
        endpoint: 1,
        flags: AttachFlags::BYPASS,
    });
    assert_eq!(send(&mut v, bypass), Status::Ok);
    let vtd = |pasid, w, pgd| vtd_table(pasid, w, pgd, VtdFlags::empty());
    let arm = |fmt, ptr, cdmax| arm_table(fmt, S1DSS_SSID0, ptr, cdmax);
    let cases = [
        // Unknown endpoint.
        (1, 99, vtd(1, 48, 0x1000), Status::NoEnt),
        // Format not advertised by the endpoint; 64 KiB L2 tables.
        (2, 6, vtd(1, 48, 0x1000), Status::Unsupp),
        (1, 0, arm(S1FMT_64KL2, 0x1000, 1), Status::Unsupp),
        // Not attached to this domain / attached elsewhere / bypass domain.
        (2, 0, vtd(1, 48, 0x1000), Status::Inval),
        (1, 2, vtd(1, 48, 0x1000), Status::Inval),
        (3, 1, vtd(1, 48, 0x1000), Status::Inval),
        // VT-d fields.
        (1, 0, vtd(1, 39, 0x1000), Status::Inval),
        (1, 0, vtd(1, 48, 0x1008), Status::Inval),
        (1, 0, vtd(256, 48, 0x1000), Status::Inval),
        // Arm fields.
        (1, 0, arm(S1FMT_LINEAR, 0x1040, 1), Status::Inval),
        (1, 0, arm(S1FMT_4KL2, 0x1000, 9), Status::Inval),
        // Valid ones.
        (1, 0, vtd(255, 57, 0x1000), Status::Ok),
        (1, 0, arm(S1FMT_4KL2, 0x2000, 8), Status::Ok),
    ];
    for (domain, ep, desc, want) in cases {
        assert_eq!(
            attach_table(&mut v, domain, ep, desc),
            want,
            "{domain} {ep} {desc:?}"
        );
    }
    assert_eq!(v.stats().tables, 2);
    // Rebinding replaces: still two.
    assert_eq!(attach_table(&mut v, 1, 0, vtd(255, 48, 0x3000)), Status::Ok);
    assert_eq!(
        attach_table(&mut v, 1, 0, arm(S1FMT_LINEAR, 0x3000, 0)),
        Status::Ok
    );
    assert_eq!(v.stats().tables, 2);
    assert_eq!(attach_table(&mut v, 1, 0, vtd(3, 48, 0x3000)), Status::Ok);
    assert_eq!(v.stats().tables, 3);
    // A move to another domain drops them; so do DETACH and reset.
    assert_eq!(attach(&mut v, 4, 0), Status::Ok);
    assert_eq!(v.stats().tables, 0);
    assert_eq!(attach_table(&mut v, 4, 0, vtd(3, 48, 0x3000)), Status::Ok);
    let det = Request::Detach(Detach {
        domain: 4,
        endpoint: 0,
    });
    assert_eq!(send(&mut v, det), Status::Ok);
    assert_eq!(v.stats().tables, 0);
    assert_eq!(attach(&mut v, 4, 0), Status::Ok);
    assert_eq!(attach_table(&mut v, 4, 0, vtd(3, 48, 0x3000)), Status::Ok);
    v.reset();
    assert_eq!(v.stats().tables, 0);
    let s = v.stats().requests.attach_table;
    assert_eq!((s.noent, s.unsupp, s.inval), (1, 2, 8));
}

#[test]
fn invalidate_statuses() {
    let (mut v, _g) = device(config());
    let range = |start, nr_pages, granule| InvalScope::Range {
        pasid: None,
        start,
        nr_pages,
        granule,
    };
    // Unknown domain; domain without tables.
    assert_eq!(
        invalidate(&mut v, 1, ALL_CACHES, InvalScope::Domain),
        Status::NoEnt
    );
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    assert_eq!(
        invalidate(&mut v, 1, ALL_CACHES, InvalScope::Domain),
        Status::Ok
    );
    assert_eq!(
        invalidate(&mut v, 1, ALL_CACHES, InvalScope::Pasid(3)),
        Status::Ok
    );
    // Ranges: no pages, past 2^64 − 1, exactly to 2^64 − 1.
    assert_eq!(
        invalidate(&mut v, 1, ALL_CACHES, range(0x1000, 0, 12)),
        Status::Inval
    );
    assert_eq!(
        invalidate(&mut v, 1, ALL_CACHES, range(0x1000, 1 << 52, 12)),
        Status::Range
    );
    assert_eq!(
        invalidate(&mut v, 1, ALL_CACHES, range(0, 1 << 52, 12)),
        Status::Ok
    );
    assert_eq!(
        invalidate(&mut v, 1, ALL_CACHES, range(1 << 63, 1, 63)),
        Status::Ok
    );
    assert_eq!(
        invalidate(&mut v, 1, ALL_CACHES, range(u64::MAX, 1, 12)),
        Status::Range
    );
    // With tables bound too.
    assert_eq!(
        attach_table(&mut v, 1, 0, vtd_table(1, 48, 0x1000, VtdFlags::empty())),
        Status::Ok
    );
    assert_eq!(
        invalidate(&mut v, 1, InvalCaches::IOTLB, range(0, 3, 21)),
        Status::Ok
    );
    // Decoder errors: PASID granularity without the PASID flag, reserved bytes.
    let mut raw = Request::Invalidate(virtio_iommu_spec::request::Invalidate {
        domain: 1,
        caches: InvalCaches::IOTLB,
        scope: InvalScope::Domain,
        archid: None,
        leaf: false,
    })
    .encode()
    .as_bytes()
    .to_vec();
    raw[4] = 2; // INVAL_G_PASID
    let mut w = [0u8; 4];
    assert_eq!(v.handle_request(&raw, &mut w), 4);
    assert_eq!(w[0], Status::Inval as u8);
    let s = v.stats().requests.invalidate;
    assert_eq!((s.noent, s.inval, s.range, s.ok), (1, 2, 2, 5));
}

#[test]
fn page_resp_statuses() {
    let mut s = Sva::new(Fmt::Vtd(48), 0);
    s.bind(1);
    let req = DmaRequest {
        endpoint: 0,
        pasid: Some(1),
        iova: 0x5000,
        op: DmaOp::Read(4),
        attrs: DmaAttrs::default(),
    };
    let DmaOutcome::Pending(t) = s.v.device_dma().start(req, Instant::now()) else {
        panic!("expected a page request")
    };
    let v = &mut s.v;
    // Unknown endpoint; endpoint without this group; unknown group.
    assert_eq!(
        page_resp(v, 99, Some(1), 0, PageRespCode::Success),
        Status::NoEnt
    );
    assert_eq!(
        page_resp(v, 1, Some(1), 0, PageRespCode::Success),
        Status::Inval
    );
    assert_eq!(
        page_resp(v, 0, Some(1), 1, PageRespCode::Success),
        Status::Inval
    );
    // Wrong PASID: refused, the group stays.
    assert_eq!(
        page_resp(v, 0, Some(2), 0, PageRespCode::Success),
        Status::Inval
    );
    assert_eq!(v.outstanding_page_requests(0), 1);
    // Right one (without the PASID: the endpoint does not require it).
    assert_eq!(page_resp(v, 0, None, 0, PageRespCode::Invalid), Status::Ok);
    assert_eq!(
        page_resp(v, 0, None, 0, PageRespCode::Invalid),
        Status::Inval
    );
    assert!(matches!(
        v.device_dma().resume(t, Instant::now()),
        Some(DmaOutcome::Fault(_))
    ));
    // A bad response code is a decode error.
    let mut raw = Request::PageResp(virtio_iommu_spec::request::PageResp {
        endpoint: 0,
        pasid: None,
        group_id: 0,
        code: PageRespCode::Success,
    })
    .encode()
    .as_bytes()
    .to_vec();
    raw[18] = 3;
    let mut w = [0u8; 4];
    assert_eq!(v.handle_request(&raw, &mut w), 4);
    assert_eq!(w[0], Status::Inval as u8);
    let c = v.stats().requests.page_resp;
    assert_eq!((c.noent, c.inval, c.ok), (1, 5, 1));
}

#[test]
fn probe_advertises_the_group_limit() {
    let (mut v, _g) = device(config());
    let enc = Request::Probe(Probe { endpoint: 0 }).encode();
    let mut w = vec![0u8; 516];
    assert_eq!(v.handle_request(enc.as_bytes(), &mut w), 516);
    let pr: Vec<_> = ProbeProperties::new(&w[..512])
        .filter(|p| matches!(p, Property::PageRequest { .. }))
        .collect();
    assert_eq!(
        pr,
        vec![Property::PageRequest {
            caps: PageRequestCaps::empty(),
            max_groups: 4
        }]
    );
}
