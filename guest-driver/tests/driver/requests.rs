//! Requests: exact bytes on the queue, status and used-length handling, pre-flight checks,
//! PROBE decoding, the non-blocking API.

use crate::fake::{all_features, default_config, Answer, Desc, Fake, Iommu, B};
use virtio_iommu_driver::{
    AttachFlags, DriverOptions, EndpointInfo, Error, Features, InterruptStatus, InvalCaches,
    InvalScope, Invalidate, MapFlags, Mapping, PageRequestInfo, PageResp, PageRespCode, Reply,
    Request, ReservedRegion, ResvMemSubtype, TableDesc, MAX_REQUESTS_IN_FLIGHT,
};
use virtio_iommu_spec::ext::{PageRequestCaps, VtdFlags};
use virtio_iommu_spec::request::{Attach, Detach};
use virtio_iommu_spec::Property;

fn split(readable: usize, writable: u32) -> Vec<Desc> {
    vec![
        Desc {
            len: u32::try_from(readable).unwrap(),
            write: false,
        },
        Desc {
            len: writable,
            write: true,
        },
    ]
}

fn with_extensions() -> (Fake, Iommu) {
    let fake = Fake::new(all_features(), default_config());
    let opts = DriverOptions {
        extensions: Features::ATTACH_TABLE | Features::PAGE_REQUEST,
        max_spins: Some(10_000),
    };
    let iommu = Iommu::new_with(fake.transport(), opts).unwrap();
    (fake, iommu)
}

#[test]
fn every_request_is_laid_out_exactly() {
    let (fake, mut iommu) = with_extensions();
    iommu.attach(5, 0x0102_0304, AttachFlags::BYPASS).unwrap();
    iommu.detach(5, 9).unwrap();
    iommu
        .map(&Mapping {
            domain: 5,
            iova: 0x1000,
            paddr: 0x8000_0000,
            size: 0x2000,
            flags: MapFlags::READ | MapFlags::WRITE | MapFlags::MMIO,
        })
        .unwrap();
    iommu.unmap(5, 0x1000, 0x2000).unwrap();
    assert_eq!(iommu.probe(9).unwrap(), EndpointInfo::default());
    iommu
        .attach_table(
            5,
            9,
            TableDesc::Vtd {
                pasid: 3,
                addr_width: 48,
                pgd: 0x1234_5000,
                flags: VtdFlags::SRE,
            },
        )
        .unwrap();
    iommu
        .invalidate(&Invalidate {
            domain: 5,
            caches: InvalCaches::IOTLB,
            scope: InvalScope::Range {
                pasid: Some(3),
                start: 0x4000,
                nr_pages: 2,
                granule: 12,
            },
            archid: None,
            leaf: true,
        })
        .unwrap();
    iommu
        .page_response(&PageResp {
            endpoint: 9,
            pasid: Some(3),
            group_id: 0x21,
            code: PageRespCode::Success,
        })
        .unwrap();

    let want: Vec<(Vec<u8>, u32)> = vec![
        (
            B::default()
                .head(1)
                .u32(5)
                .u32(0x0102_0304)
                .u32(1)
                .zeros(4)
                .0,
            4,
        ),
        (B::default().head(2).u32(5).u32(9).zeros(8).0, 4),
        (
            B::default()
                .head(3)
                .u32(5)
                .u64(0x1000)
                .u64(0x2fff)
                .u64(0x8000_0000)
                .u32(7)
                .0,
            4,
        ),
        (
            B::default()
                .head(4)
                .u32(5)
                .u64(0x1000)
                .u64(0x2fff)
                .zeros(4)
                .0,
            4,
        ),
        (B::default().head(5).u32(9).zeros(64).0, 512 + 4),
        (
            B::default()
                .head(6)
                .u32(5)
                .u32(9)
                .u16(4)
                .u16(0)
                .u32(3)
                .u32(48)
                .u64(0x1234_5000)
                .u64(1)
                .zeros(36)
                .0,
            4,
        ),
        (
            B::default()
                .head(7)
                .u16(4) // INVAL_G_VA
                .u16(1) // IOTLB
                .u16(5) // PASID | LEAF
                .u16(0)
                .u32(5)
                .u32(3)
                .u32(0)
                .u64(0)
                .u64(0x4000)
                .u64(2)
                .u8(12)
                .zeros(11)
                .0,
            4,
        ),
        (
            B::default()
                .head(8)
                .u32(9)
                .u32(1)
                .u32(3)
                .u16(0x21)
                .u16(0)
                .zeros(8)
                .0,
            4,
        ),
    ];
    let seen = fake.seen();
    assert_eq!(seen.len(), want.len());
    for (s, (bytes, wlen)) in seen.iter().zip(&want) {
        assert_eq!(&s.readable, bytes);
        // One readable descriptor (the request without its tail), one writable (the tail,
        // after the properties area for PROBE).
        assert_eq!(s.descs, split(bytes.len(), *wlen));
    }
    // Blocking calls notify once each.
    assert_eq!(fake.lock().notifies[0], 8);
}

#[test]
fn every_status_maps_to_its_error() {
    let fake = Fake::standard();
    let mut iommu = Iommu::new(fake.transport()).unwrap();
    let cases = [
        (1, Error::IoErr),
        (2, Error::Unsupported),
        (3, Error::DevErr),
        (4, Error::Inval),
        (5, Error::Range),
        (6, Error::NoEnt),
        (7, Error::Fault),
        (8, Error::NoMem),
        (9, Error::UnknownStatus(9)),
        (0xff, Error::UnknownStatus(0xff)),
    ];
    for (byte, err) in cases {
        fake.respond(move |_, w| Some(Answer::status(byte, w)));
        assert_eq!(
            iommu.attach(1, 2, AttachFlags::empty()),
            Err(err),
            "status {byte}"
        );
        assert_eq!(iommu.probe(2), Err(err), "PROBE status {byte}");
        if byte <= 8 {
            assert_eq!(err.status().map(|s| s as u8), Some(byte));
        }
    }
    fake.respond(|_, w| Some(Answer::ok(w)));
    assert_eq!(iommu.attach(1, 2, AttachFlags::empty()), Ok(()));
}

#[test]
fn a_used_length_other_than_the_writable_size_is_an_error() {
    let fake = Fake::standard();
    let mut iommu = Iommu::new(fake.transport()).unwrap();
    for (used, err) in [
        (0, Error::NoReply),
        (
            3,
            Error::UsedLengthMismatch {
                expected: 4,
                got: 3,
            },
        ),
        (
            8,
            Error::UsedLengthMismatch {
                expected: 4,
                got: 8,
            },
        ),
    ] {
        fake.respond(move |_, w| {
            Some(Answer {
                used_len: used,
                ..Answer::ok(w)
            })
        });
        assert_eq!(iommu.detach(1, 2), Err(err));
    }
    // PROBE: only the tail written, or nothing.
    for (used, err) in [
        (
            4,
            Error::UsedLengthMismatch {
                expected: 516,
                got: 4,
            },
        ),
        (0, Error::NoReply),
    ] {
        fake.respond(move |_, w| {
            Some(Answer {
                used_len: used,
                ..Answer::ok(w)
            })
        });
        assert_eq!(iommu.probe(2), Err(err));
    }
}

#[test]
fn the_status_is_read_from_the_last_four_bytes() {
    let fake = Fake::standard();
    let mut iommu = Iommu::new(fake.transport()).unwrap();
    // A status-looking byte at the start of the properties area (in the type of an unknown
    // property, which the driver skips) is not the status.
    fake.respond(|_, w| {
        let mut a = Answer::ok(w);
        a.data[1] = 6;
        Some(a)
    });
    assert!(iommu.probe(3).is_ok());
    fake.respond(|_, w| Some(Answer::status(6, w)));
    assert_eq!(iommu.probe(3), Err(Error::NoEnt));
}

fn map(domain: u32, iova: u64, paddr: u64, size: u64, flags: MapFlags) -> Mapping {
    Mapping {
        domain,
        iova,
        paddr,
        size,
        flags,
    }
}

#[test]
fn forbidden_requests_are_refused_before_sending() {
    let fake = Fake::standard();
    let mut iommu = Iommu::new(fake.transport()).unwrap();
    let rw = MapFlags::READ | MapFlags::WRITE;
    let top = 1u64 << 48;
    let cases = [
        (map(1, 0x1800, 0, 0x1000, rw), Error::Unaligned),
        (map(1, 0x1000, 0x800, 0x1000, rw), Error::Unaligned),
        (map(1, 0x1000, 0, 0x1800, rw), Error::Unaligned),
        (map(1, 0x1000, 0, 0, rw), Error::EmptyRange),
        (map(1, top - 0x1000, 0, 0x2000, rw), Error::OutOfRange),
        (map(1, top, 0, 0x1000, rw), Error::OutOfRange),
        (map(0, 0x1000, 0, 0x1000, rw), Error::DomainOutOfRange),
        (map(1024, 0x1000, 0, 0x1000, rw), Error::DomainOutOfRange),
        (
            map(1, 0x1000, 0, 0x1000, MapFlags::from_bits_retain(0x10)),
            Error::UnknownFlags,
        ),
    ];
    for (m, err) in cases {
        assert_eq!(iommu.map(&m), Err(err), "{m:x?}");
        assert_eq!(iommu.map_batch(&[m]), Ok(vec![Err(err)]), "{m:x?}");
    }
    assert_eq!(iommu.unmap(2000, 0, 0x1000), Err(Error::DomainOutOfRange));
    assert_eq!(iommu.unmap(1, top - 0x1000, 0x2000), Err(Error::OutOfRange));
    assert_eq!(iommu.unmap(1, 0x1000, 0), Err(Error::EmptyRange));
    assert_eq!(
        iommu.attach(0, 1, AttachFlags::empty()),
        Err(Error::DomainOutOfRange)
    );
    assert_eq!(
        iommu.attach(1, 1, AttachFlags::from_bits_retain(2)),
        Err(Error::UnknownFlags)
    );
    assert_eq!(iommu.detach(1024, 1), Err(Error::DomainOutOfRange));
    // Extensions not negotiated.
    assert_eq!(
        iommu.attach_table(
            1,
            1,
            TableDesc::Vtd {
                pasid: 0,
                addr_width: 48,
                pgd: 0,
                flags: VtdFlags::empty()
            }
        ),
        Err(Error::NotNegotiated(Features::ATTACH_TABLE))
    );
    let inv = Invalidate {
        domain: 1,
        caches: InvalCaches::IOTLB,
        scope: InvalScope::Domain,
        archid: None,
        leaf: false,
    };
    assert_eq!(
        iommu.invalidate(&inv),
        Err(Error::NotNegotiated(Features::ATTACH_TABLE))
    );
    let resp = PageResp {
        endpoint: 1,
        pasid: None,
        group_id: 0,
        code: PageRespCode::Failure,
    };
    assert_eq!(
        iommu.page_response(&resp),
        Err(Error::NotNegotiated(Features::PAGE_REQUEST))
    );
    // Nothing reached the device.
    assert!(fake.seen().is_empty());
    assert_eq!(fake.lock().notifies[0], 0);
}

#[test]
fn features_the_device_lacks_gate_their_requests() {
    let fake = Fake::new(
        Features::MAP_UNMAP.bits() | virtio_iommu_spec::features::VIRTIO_F_VERSION_1,
        default_config(),
    );
    let mut iommu = Iommu::new(fake.transport()).unwrap();
    assert_eq!(
        iommu.map(&map(1, 0, 0x1000, 0x1000, MapFlags::READ | MapFlags::MMIO)),
        Err(Error::NotNegotiated(Features::MMIO))
    );
    assert_eq!(
        iommu.attach(1, 1, AttachFlags::BYPASS),
        Err(Error::NotNegotiated(Features::BYPASS_CONFIG))
    );
    assert_eq!(
        iommu.set_bypass(false),
        Err(Error::NotNegotiated(Features::BYPASS_CONFIG))
    );
    assert_eq!(iommu.probe(1), Err(Error::NotNegotiated(Features::PROBE)));
    assert!(fake.seen().is_empty());
    assert!(fake.lock().config_writes.is_empty());
    // Without DOMAIN_RANGE / INPUT_RANGE any domain and address is fine.
    iommu
        .map(&map(0, u64::MAX - 0xfff, 0, 0x1000, MapFlags::READ))
        .unwrap();
}

#[test]
fn invalid_invalidation_granules_are_refused() {
    let (fake, mut iommu) = with_extensions();
    for granule in [0, 11, 64] {
        let inv = Invalidate {
            domain: 1,
            caches: InvalCaches::IOTLB,
            scope: InvalScope::Range {
                pasid: None,
                start: 0,
                nr_pages: 1,
                granule,
            },
            archid: None,
            leaf: false,
        };
        assert_eq!(iommu.invalidate(&inv), Err(Error::InvalidGranule));
    }
    assert!(fake.seen().is_empty());
}

#[test]
fn probe_properties_are_decoded_and_unknown_ones_skipped() {
    let fake = Fake::standard();
    let mut iommu = Iommu::new(fake.transport()).unwrap();
    let mut area = Vec::new();
    let mut push = |p: Property| {
        let mut buf = [0u8; 32];
        let n = p.write_to(&mut buf).unwrap();
        area.extend_from_slice(&buf[..n]);
    };
    push(Property::ResvMem {
        subtype: 1,
        start: 0xfee0_0000,
        end: 0xfeef_ffff,
    });
    let mut area2 = Vec::new();
    // An unknown type, then a RESV_MEM with a reserved type bit set: both skipped.
    area2.extend_from_slice(&B::default().u16(0x99).u16(4).u32(0xdead_beef).0);
    area2.extend_from_slice(
        &B::default()
            .u16(0x1001)
            .u16(20)
            .u8(0)
            .zeros(3)
            .u64(0)
            .u64(0xffff)
            .0,
    );
    let mut tail = Vec::new();
    let mut push2 = |p: Property| {
        let mut buf = [0u8; 32];
        let n = p.write_to(&mut buf).unwrap();
        tail.extend_from_slice(&buf[..n]);
    };
    push2(Property::ResvMem {
        subtype: 7,
        start: 0x1000,
        end: 0x1fff,
    });
    push2(Property::PageSizeMask(0x20_1000));
    push2(Property::InputRange {
        start: 0x1000,
        end: 0xffff_ffff,
    });
    push2(Property::OutputSize(48));
    push2(Property::PasidSize(20));
    push2(Property::PageTableFormat(4));
    push2(Property::PasidTableFormat(2));
    push2(Property::PageRequest {
        caps: PageRequestCaps::RESP_PASID_REQUIRED,
        max_groups: 32,
    });
    let mut props = area;
    props.extend_from_slice(&area2);
    props.extend_from_slice(&tail);
    fake.respond(move |_, w| {
        let mut a = Answer::ok(w);
        a.data[..props.len()].copy_from_slice(&props);
        Some(a)
    });
    let info = iommu.probe(4).unwrap();
    assert_eq!(
        info,
        EndpointInfo {
            reserved_regions: vec![
                ReservedRegion {
                    kind: ResvMemSubtype::Msi,
                    raw_subtype: 1,
                    start: 0xfee0_0000,
                    last: 0xfeef_ffff,
                },
                ReservedRegion {
                    kind: ResvMemSubtype::Reserved,
                    raw_subtype: 7,
                    start: 0x1000,
                    last: 0x1fff,
                },
            ],
            page_size_mask: Some(0x20_1000),
            input_range: Some((0x1000, 0xffff_ffff)),
            output_bits: Some(48),
            pasid_bits: Some(20),
            page_table_formats: vec![4],
            pasid_table_formats: vec![2],
            page_request: Some(PageRequestInfo {
                caps: PageRequestCaps::RESP_PASID_REQUIRED,
                max_groups: 32,
            }),
        }
    );
    assert_eq!(info.msi_region().map(|r| r.start), Some(0xfee0_0000));
}

#[test]
fn set_bypass_writes_the_config_byte() {
    let fake = Fake::standard();
    let mut iommu = Iommu::new(fake.transport()).unwrap();
    assert_eq!(iommu.config().bypass, Some(true));
    iommu.set_bypass(false).unwrap();
    assert_eq!(iommu.config().bypass, Some(false));
    iommu.set_bypass(true).unwrap();
    assert_eq!(fake.lock().config_writes, [(36, vec![0]), (36, vec![1])]);
    assert_eq!(fake.lock().config[36], 1);
    // A later config change is picked up on request.
    fake.lock().config[36] = 0;
    assert_eq!(iommu.read_config().unwrap().bypass, Some(false));
}

fn attach_req(domain: u32) -> Request {
    Request::Attach(Attach {
        domain,
        endpoint: 1,
        flags: AttachFlags::empty(),
    })
}

#[test]
fn non_blocking_requests_complete_in_any_order() {
    let fake = Fake::standard();
    let mut iommu = Iommu::new(fake.transport()).unwrap();
    fake.respond(|_, _| None);
    let a = iommu.enqueue(&attach_req(1)).unwrap();
    let b = iommu
        .enqueue(&Request::Detach(Detach {
            domain: 2,
            endpoint: 1,
        }))
        .unwrap();
    assert!(fake.seen().is_empty(), "enqueue does not notify");
    iommu.notify();
    assert_eq!(fake.seen().len(), 2);
    assert_eq!(fake.lock().notifies[0], 1);
    assert_eq!(iommu.poll(a), Ok(None));
    assert_eq!(iommu.poll(b), Ok(None));
    fake.lock().reverse = true;
    fake.release_held();
    assert_eq!(iommu.poll(b), Ok(Some(Reply::Done)));
    assert_eq!(iommu.wait(a), Ok(Reply::Done));
    assert_eq!(iommu.poll(a), Err(Error::UnknownToken), "tokens are spent");

    // Errors come back through poll too.
    fake.lock().reverse = false;
    fake.respond(|_, w| Some(Answer::status(4, w)));
    let c = iommu.submit(&attach_req(3)).unwrap();
    assert_eq!(iommu.poll(c), Err(Error::Inval));
}

#[test]
fn the_ring_holds_a_bounded_number_of_requests() {
    let fake = Fake::standard();
    let mut iommu = Iommu::new(fake.transport()).unwrap();
    fake.respond(|_, _| None);
    let tokens: Vec<_> = (0..MAX_REQUESTS_IN_FLIGHT)
        .map(|i| {
            iommu
                .enqueue(&attach_req(u32::try_from(i).unwrap() + 1))
                .unwrap()
        })
        .collect();
    assert!(!iommu.has_room());
    assert_eq!(iommu.enqueue(&attach_req(1)), Err(Error::QueueFull));
    iommu.notify();
    fake.release_held();
    for t in tokens {
        assert_eq!(iommu.poll(t), Ok(Some(Reply::Done)));
    }
    assert!(iommu.has_room());
}

#[test]
fn a_silent_device_times_out_and_its_late_reply_is_discarded() {
    let fake = Fake::standard();
    let opts = DriverOptions {
        max_spins: Some(1000),
        ..DriverOptions::default()
    };
    let mut iommu = Iommu::new_with(fake.transport(), opts).unwrap();
    fake.respond(|_, _| None);
    assert_eq!(
        iommu.attach(1, 1, AttachFlags::empty()),
        Err(Error::Timeout)
    );
    fake.respond(|_, w| Some(Answer::status(6, w)));
    fake.release_held();
    // The late OK is dropped; the next request gets its own status.
    assert_eq!(iommu.detach(1, 1), Err(Error::NoEnt));
    assert!(iommu.has_room());
}

#[test]
fn ack_interrupt_reports_the_pending_interrupt() {
    let fake = Fake::standard();
    let mut iommu = Iommu::new(fake.transport()).unwrap();
    assert_eq!(
        iommu.ack_interrupt().bits(),
        InterruptStatus::empty().bits()
    );
    iommu.detach(1, 1).unwrap();
    assert_eq!(
        iommu.ack_interrupt().bits(),
        InterruptStatus::QUEUE_INTERRUPT.bits()
    );
    assert_eq!(
        iommu.ack_interrupt().bits(),
        InterruptStatus::empty().bits()
    );
}
