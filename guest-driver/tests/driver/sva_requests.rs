//! `sva` requests: binding (PROBE checks, then ATTACH_TABLE), the INVALIDATE helpers and
//! page-request handling, checked byte for byte on the request queue of the fake device.

use crate::fake::{all_features, default_config, Answer, Fake, Iommu, B};
use virtio_iommu_driver::sva::{
    check_table, CdLayout, CdTable, Drained, PageRequestGroups, Perms, S1Dss, Stage1Arm, SvaError,
    X86FirstStage, X86Levels,
};
use virtio_iommu_driver::{
    DriverOptions, EndpointInfo, Error, FaultEvent, FaultReason, Features, PageRequest, PageResp,
    PageRespCode, TableDesc,
};
use virtio_iommu_spec::event::FaultFlags;
use virtio_iommu_spec::ext::{TableFormat, VtdFlags};
use virtio_iommu_spec::{Property, Status};
use virtio_iommu_testkit::GuestHal;

fn props(list: &[Property]) -> Vec<u8> {
    let mut area = Vec::new();
    for p in list {
        let mut buf = [0u8; 32];
        let n = p.write_to(&mut buf).unwrap();
        area.extend_from_slice(&buf[..n]);
    }
    area
}

/// A device with both extensions whose PROBE replies carry `list`; other requests get S_OK.
fn device(list: &[Property]) -> (Fake, Iommu) {
    let fake = Fake::new(all_features(), default_config());
    let area = props(list);
    fake.respond(move |r, w| {
        let mut a = Answer::ok(w);
        if r[0] == 5 {
            a.data[..area.len()].copy_from_slice(&area);
        }
        Some(a)
    });
    let opts = DriverOptions {
        extensions: Features::ATTACH_TABLE | Features::PAGE_REQUEST,
        max_spins: Some(10_000),
    };
    let iommu = Iommu::new_with(fake.transport(), opts).unwrap();
    (fake, iommu)
}

/// An endpoint offering both formats and 16 PASID bits.
fn sva_endpoint() -> Vec<Property> {
    vec![
        Property::PasidSize(16),
        Property::PasidTableFormat(2),
        Property::PageTableFormat(4),
    ]
}

fn types(fake: &Fake) -> Vec<u8> {
    fake.seen().iter().map(|s| s.readable[0]).collect()
}

#[test]
fn bind_probes_then_sends_attach_table() {
    let (fake, mut iommu) = device(&sva_endpoint());
    let s1 = Stage1Arm::<GuestHal>::new(48).unwrap();
    let mut cds = CdTable::<GuestHal>::new(CdLayout::TwoLevel, 16, S1Dss::Ssid0).unwrap();
    cds.set_cd(0, &s1, 1).unwrap();
    iommu.bind_table(3, 9, &cds.desc()).unwrap();

    let x86 = X86FirstStage::<GuestHal>::new(X86Levels::Five).unwrap();
    iommu
        .bind_table(3, 9, &x86.desc(0xffff, VtdFlags::SRE))
        .unwrap();

    let seen = fake.seen();
    assert_eq!(types(&fake), vec![5, 6, 5, 6]);
    assert_eq!(seen[0].readable, B::default().head(5).u32(9).zeros(64).0);
    assert_eq!(
        seen[1].readable,
        B::default()
            .head(6)
            .u32(3)
            .u32(9)
            .u16(2) // FORMAT_PSTF_ARM_SMMU_V3
            .u8(1) // S1FMT_4KL2
            .u8(2) // S1DSS_SSID0
            .u64(cds.s1contextptr())
            .u32(16)
            .zeros(48)
            .0
    );
    assert_eq!(
        seen[3].readable,
        B::default()
            .head(6)
            .u32(3)
            .u32(9)
            .u16(4) // FORMAT_PGTF_VTD
            .u16(0)
            .u32(0xffff)
            .u32(57)
            .u64(x86.pgd())
            .u64(1) // SRE
            .zeros(36)
            .0
    );
}

#[test]
fn bind_refuses_what_the_endpoint_did_not_advertise() {
    // Only the Arm format, 8 PASID bits.
    let (fake, mut iommu) = device(&[Property::PasidSize(8), Property::PasidTableFormat(2)]);
    let x86 = X86FirstStage::<GuestHal>::new(X86Levels::Four).unwrap();
    assert_eq!(
        iommu.bind_table(1, 2, &x86.desc(1, VtdFlags::empty())),
        Err(SvaError::FormatNotAdvertised(TableFormat::Vtd))
    );
    let cds = CdTable::<GuestHal>::new(CdLayout::TwoLevel, 9, S1Dss::Terminate).unwrap();
    assert_eq!(
        iommu.bind_table(1, 2, &cds.desc()),
        Err(SvaError::PasidBitsTooFew {
            needed: 9,
            supported: 8
        })
    );
    let ok = CdTable::<GuestHal>::new(CdLayout::Linear, 8, S1Dss::Terminate).unwrap();
    iommu.bind_table(1, 2, &ok.desc()).unwrap();
    // Each refusal sent its PROBE and nothing else.
    assert_eq!(types(&fake), vec![5, 5, 5, 6]);
}

#[test]
fn check_table_rules() {
    let info = EndpointInfo {
        pasid_bits: Some(16),
        pasid_table_formats: vec![2],
        page_table_formats: vec![4],
        ..EndpointInfo::default()
    };
    let arm = |s1fmt, s1dss, s1contextptr, s1cdmax| TableDesc::ArmSmmuV3 {
        s1fmt,
        s1dss,
        s1contextptr,
        s1cdmax,
    };
    let vtd = |pasid, addr_width, pgd| TableDesc::Vtd {
        pasid,
        addr_width,
        pgd,
        flags: VtdFlags::empty(),
    };
    assert_eq!(check_table(&info, &arm(0, 0, 0x1000, 16)), Ok(()));
    assert_eq!(check_table(&info, &arm(1, 2, 0x1040, 0)), Ok(()));
    // 64KL2, an undefined s1dss, s1cdmax > 20, an unaligned or null pointer.
    for bad in [
        arm(2, 0, 0x1000, 4),
        arm(0, 3, 0x1000, 4),
        arm(1, 0, 0x1000, 21),
        arm(0, 0, 0x1020, 4),
        arm(0, 0, 0, 4),
    ] {
        assert_eq!(
            check_table(&info, &bad),
            Err(SvaError::BadTableDesc),
            "{bad:?}"
        );
    }
    assert_eq!(
        check_table(&info, &arm(1, 0, 0x1000, 17)),
        Err(SvaError::PasidBitsTooFew {
            needed: 17,
            supported: 16
        })
    );
    assert_eq!(check_table(&info, &vtd(0xffff, 48, 0x2000)), Ok(()));
    assert_eq!(
        check_table(&info, &vtd(0x1_0000, 48, 0x2000)),
        Err(SvaError::PasidBitsTooFew {
            needed: 17,
            supported: 16
        })
    );
    for bad in [vtd(1, 39, 0x2000), vtd(1, 57, 0x2800), vtd(1, 48, 0)] {
        assert_eq!(
            check_table(&info, &bad),
            Err(SvaError::BadTableDesc),
            "{bad:?}"
        );
    }
    // No PASID support: only PASID 0 / a single CD.
    let plain = EndpointInfo {
        page_table_formats: vec![4],
        pasid_table_formats: vec![2],
        ..EndpointInfo::default()
    };
    assert_eq!(check_table(&plain, &vtd(0, 48, 0x2000)), Ok(()));
    assert_eq!(check_table(&plain, &arm(0, 2, 0x1000, 0)), Ok(()));
    assert_eq!(
        check_table(&plain, &vtd(1, 48, 0x2000)),
        Err(SvaError::PasidBitsTooFew {
            needed: 1,
            supported: 0
        })
    );
    assert_eq!(
        check_table(&EndpointInfo::default(), &arm(0, 0, 0x1000, 0)),
        Err(SvaError::FormatNotAdvertised(TableFormat::ArmSmmuV3))
    );
}

#[test]
fn bind_needs_the_features() {
    let fake = Fake::new(all_features(), default_config());
    let mut iommu = Iommu::new(fake.transport()).unwrap(); // no extensions accepted
    let x86 = X86FirstStage::<GuestHal>::new(X86Levels::Four).unwrap();
    assert_eq!(
        iommu.bind_table(1, 2, &x86.desc(0, VtdFlags::empty())),
        Err(SvaError::Driver(Error::NotNegotiated(
            Features::ATTACH_TABLE
        )))
    );
    assert_eq!(
        iommu.invalidate_pasid(1, 0),
        Err(Error::NotNegotiated(Features::ATTACH_TABLE))
    );
    let req = PageRequest {
        endpoint: 2,
        pasid: None,
        address: 0,
        access: FaultFlags::READ,
        group_id: 1,
        last: true,
        private_data: None,
    };
    assert_eq!(
        iommu.respond(&req, PageRespCode::Success),
        Err(Error::NotNegotiated(Features::PAGE_REQUEST))
    );
    assert!(fake.seen().is_empty());
}

/// The readable part of an INVALIDATE.
fn inval(
    gran: u16,
    caches: u16,
    flags: u16,
    domain: u32,
    pasid: u32,
    range: (u64, u64, u8),
) -> Vec<u8> {
    B::default()
        .head(7)
        .u16(gran)
        .u16(caches)
        .u16(flags)
        .u16(0)
        .u32(domain)
        .u32(pasid)
        .u32(0)
        .u64(0)
        .u64(range.0)
        .u64(range.1)
        .u8(range.2)
        .zeros(11)
        .0
}

#[test]
fn invalidations_are_laid_out_exactly() {
    let (fake, mut iommu) = device(&[]);
    iommu.invalidate_range(5, 3, 0x4000, 0x2000).unwrap();
    // Unaligned ends widen to whole pages.
    iommu.invalidate_range(5, 3, 0x4800, 0x1000).unwrap();
    // 2 MiB- and 1 GiB-aligned ranges use the larger granule.
    iommu.invalidate_range(5, 3, 0x20_0000, 0x40_0000).unwrap();
    iommu
        .invalidate_range(6, 1, 0x4000_0000, 0x8000_0000)
        .unwrap();
    // The very top of the address space.
    iommu
        .invalidate_range(6, 1, 0xffff_ffff_ffff_f000, 0x1000)
        .unwrap();
    iommu.invalidate_pasid(5, 0x1234).unwrap();
    iommu.invalidate_domain(7).unwrap();
    assert_eq!(
        iommu.invalidate_range(5, 3, 0x4000, 0),
        Err(Error::EmptyRange)
    );
    assert_eq!(
        iommu.invalidate_range(5, 3, u64::MAX, 2),
        Err(Error::EmptyRange)
    );

    let want = vec![
        // G_VA, IOTLB | DEV_IOTLB, F_PASID.
        inval(4, 3, 1, 5, 3, (0x4000, 2, 12)),
        inval(4, 3, 1, 5, 3, (0x4000, 2, 12)),
        inval(4, 3, 1, 5, 3, (0x20_0000, 2, 21)),
        inval(4, 3, 1, 6, 1, (0x4000_0000, 2, 30)),
        inval(4, 3, 1, 6, 1, (0xffff_ffff_ffff_f000, 1, 12)),
        // G_PASID, every cache (PASID-table too), F_PASID.
        inval(2, 7, 1, 5, 0x1234, (0, 0, 0)),
        // G_DOMAIN, every cache, no flags.
        inval(1, 7, 0, 7, 0, (0, 0, 0)),
    ];
    let seen: Vec<Vec<u8>> = fake.seen().into_iter().map(|s| s.readable).collect();
    assert_eq!(seen, want);
}

fn page_request(group_id: u16, pasid: Option<u32>, address: u64, last: bool) -> PageRequest {
    PageRequest {
        endpoint: 9,
        pasid,
        address,
        access: FaultFlags::READ | FaultFlags::WRITE,
        group_id,
        last,
        private_data: None,
    }
}

/// The readable part of a PAGE_RESP.
fn page_resp(endpoint: u32, pasid: Option<u32>, group: u16, code: u16) -> Vec<u8> {
    B::default()
        .head(8)
        .u32(endpoint)
        .u32(u32::from(pasid.is_some()))
        .u32(pasid.unwrap_or(0))
        .u16(group)
        .u16(code)
        .zeros(8)
        .0
}

#[test]
fn respond_echoes_endpoint_pasid_and_group() {
    let (fake, mut iommu) = device(&[]);
    iommu
        .respond(
            &page_request(0x1ff, Some(0xf_ffff), 0x1000, true),
            PageRespCode::Success,
        )
        .unwrap();
    iommu
        .respond(&page_request(3, None, 0x2000, true), PageRespCode::Failure)
        .unwrap();
    let seen: Vec<Vec<u8>> = fake.seen().into_iter().map(|s| s.readable).collect();
    assert_eq!(
        seen,
        vec![
            page_resp(9, Some(0xf_ffff), 0x1ff, 0),
            page_resp(9, None, 3, 2),
        ]
    );
}

#[test]
fn page_requests_are_answered_once_per_group_after_last() {
    let (fake, mut iommu) = device(&[]);
    let fault = FaultEvent {
        reason: FaultReason::Mapping,
        access: FaultFlags::WRITE,
        endpoint: 4,
        address: Some(0xdead_0000),
        pasid: Some(2),
    };
    // Group 5 (PASID 1) has three requests, the middle one unresolvable; group 6 has one,
    // without PASID; a fault sits in between.
    let events = [
        page_request(5, Some(1), 0x1000, false).encode().to_vec(),
        page_request(5, Some(1), 0x666_000, false).encode().to_vec(),
        fault.encode_ext().to_vec(),
        page_request(6, None, 0x3000, true).encode().to_vec(),
        page_request(5, Some(1), 0x2000, true).encode().to_vec(),
    ];
    for e in &events {
        assert!(fake.inject_event(e, 48));
    }
    let mut groups = PageRequestGroups::new();
    let mut mapped = Vec::new();
    let mut seen_requests = Vec::new();
    let drained = iommu
        .handle_page_requests(&mut groups, |iommu, req| {
            seen_requests.push(*req);
            if req.address == 0x666_000 {
                return PageRespCode::Invalid;
            }
            mapped.push(req.address);
            // The resolver maps, then invalidates through the driver it is handed.
            iommu
                .invalidate_range(1, req.pasid.unwrap_or(0), req.address, 0x1000)
                .unwrap();
            PageRespCode::Success
        })
        .unwrap();
    assert_eq!(
        drained,
        Drained {
            faults: vec![fault],
            responses: vec![
                PageResp {
                    endpoint: 9,
                    pasid: None,
                    group_id: 6,
                    code: PageRespCode::Success,
                },
                PageResp {
                    endpoint: 9,
                    pasid: Some(1),
                    group_id: 5,
                    code: PageRespCode::Invalid,
                },
            ],
            failed_responses: vec![],
            malformed_events: 0,
            more: false,
        }
    );
    assert_eq!(seen_requests.len(), 4);
    assert_eq!(mapped, vec![0x1000, 0x3000, 0x2000]);
    assert_eq!(groups.pending(), 0);
    // On the queue: INVALIDATE for 0x1000, (none for the invalid one), INVALIDATE + PAGE_RESP
    // for group 6, INVALIDATE + PAGE_RESP for group 5.
    assert_eq!(types(&fake), vec![7, 7, 8, 7, 8]);
    let seen = fake.seen();
    assert_eq!(seen[2].readable, page_resp(9, None, 6, 0));
    assert_eq!(seen[4].readable, page_resp(9, Some(1), 5, 1));
}

#[test]
fn a_group_may_span_calls_and_refused_responses_are_reported() {
    let (fake, mut iommu) = device(&[]);
    assert!(fake.inject_event(&page_request(7, Some(3), 0x1000, false).encode(), 48));
    let mut groups = PageRequestGroups::new();
    let first = iommu
        .handle_page_requests(&mut groups, |_, _| PageRespCode::Failure)
        .unwrap();
    assert_eq!(first, Drained::default());
    assert_eq!(groups.pending(), 1);
    assert!(fake.seen().is_empty());

    // The device has forgotten the group by the time LAST is answered: S_NOENT.
    fake.respond(|r, w| {
        Some(if r[0] == 8 {
            Answer::status(Status::NoEnt as u8, w)
        } else {
            Answer::ok(w)
        })
    });
    assert!(fake.inject_event(&page_request(7, Some(3), 0x2000, true).encode(), 48));
    let second = iommu
        .handle_page_requests(&mut groups, |_, _| PageRespCode::Success)
        .unwrap();
    // The earlier Failure wins over this request's Success.
    let resp = PageResp {
        endpoint: 9,
        pasid: Some(3),
        group_id: 7,
        code: PageRespCode::Failure,
    };
    assert_eq!(second.failed_responses, vec![(resp, Error::NoEnt)]);
    assert!(second.responses.is_empty());
    assert_eq!(groups.pending(), 0);
    assert_eq!(
        fake.seen().last().unwrap().readable,
        page_resp(9, Some(3), 7, 2)
    );
}

#[test]
fn groups_are_scoped_to_their_endpoint() {
    let mut groups = PageRequestGroups::new();
    let mut other = page_request(5, Some(1), 0x1000, false);
    other.endpoint = 10;
    assert_eq!(groups.record(&other, PageRespCode::Invalid), None);
    assert_eq!(
        groups.record(
            &page_request(5, Some(1), 0x1000, false),
            PageRespCode::Success
        ),
        None
    );
    assert_eq!(groups.pending(), 2);
    // Endpoint 9's group 5 ends with Success: endpoint 10's Invalid does not leak into it.
    assert_eq!(
        groups.record(
            &page_request(5, Some(1), 0x2000, true),
            PageRespCode::Success
        ),
        Some(PageResp {
            endpoint: 9,
            pasid: Some(1),
            group_id: 5,
            code: PageRespCode::Success,
        })
    );
    assert_eq!(groups.pending(), 1);
}

#[test]
fn a_resolver_can_map_the_faulting_page() {
    // The whole guest-side flow of a page request against a real table.
    let (fake, mut iommu) = device(&sva_endpoint());
    let mut process = X86FirstStage::<GuestHal>::new(X86Levels::Four).unwrap();
    iommu
        .bind_table(1, 9, &process.desc(1, VtdFlags::empty()))
        .unwrap();
    assert!(fake.inject_event(&page_request(2, Some(1), 0x7000_1234, true).encode(), 48));
    let mut groups = PageRequestGroups::new();
    let drained = iommu
        .handle_page_requests(&mut groups, |iommu, req| {
            let va = req.address & !0xfff;
            match process.map(va, 0x30_0000, 0x1000, Perms::USER_READ_WRITE) {
                Ok(()) => {
                    iommu.invalidate_range(1, 1, va, 0x1000).unwrap();
                    PageRespCode::Success
                }
                Err(_) => PageRespCode::Invalid,
            }
        })
        .unwrap();
    assert_eq!(drained.responses.len(), 1);
    assert_eq!(drained.responses[0].code, PageRespCode::Success);
    assert_eq!(process.translate(0x7000_1234).unwrap().pa, 0x30_0234);
    assert_eq!(types(&fake), vec![5, 6, 7, 8]);
}
