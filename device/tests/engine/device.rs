//! Device-level behaviour: framing, feature gating, config space and bypass, reset, limits,
//! host failures, the event queue, counters and the dump.

use crate::common::*;
use vhost_device_iommu::engine::{ConfigError, ConfigWriteError, Engine, EngineConfig, Limits};
use vhost_device_iommu::host::{Access, EmulatedHost, HostError};
use virtio_iommu_spec::event::{FaultFlags, FaultReason};
use virtio_iommu_spec::ext::{InvalCaches, InvalScope, PageRespCode, TableFormat, VtdFlags};
use virtio_iommu_spec::request::{AttachTable, Invalidate, MapFlags, PageResp, TableDesc};
use virtio_iommu_spec::{Event, FaultEvent, Features, PageRequest, Request, Status};
use zerocopy::IntoBytes;

// ---- framing -------------------------------------------------------------------------------

#[test]
fn writable_part_under_four_bytes_gets_nothing() {
    let mut v = dev(small_config());
    let enc = Request::Attach(virtio_iommu_spec::request::Attach {
        domain: 1,
        endpoint: 0,
        flags: Default::default(),
    })
    .encode();
    for len in 0..4 {
        let mut w = vec![0xaau8; len];
        assert_eq!(v.handle_request(enc.as_bytes(), &mut w), 0);
        assert!(w.iter().all(|b| *b == 0xaa));
    }
    assert_eq!(v.domain_of(0), None);
    assert_eq!(v.stats().requests.attach.no_reply, 4);
}

#[test]
fn tail_goes_in_the_last_four_bytes() {
    let mut v = dev(small_config());
    let enc = Request::Attach(virtio_iommu_spec::request::Attach {
        domain: 1,
        endpoint: 0,
        flags: Default::default(),
    })
    .encode();
    let mut w = vec![0xaau8; 12];
    assert_eq!(v.handle_request(enc.as_bytes(), &mut w), 12);
    assert_eq!(w, [0, 0, 0, 0, 0, 0, 0, 0, Status::Ok as u8, 0, 0, 0]);
    assert_eq!(v.domain_of(0), Some(1));
}

#[test]
fn unknown_or_unreadable_types_get_no_reply() {
    let mut v = dev(small_config());
    for readable in [&[9u8, 0, 0, 0][..], &[0u8; 20][..], &[0xff][..], &[][..]] {
        let (n, w) = raw(&mut v, readable, 4);
        assert_eq!(n, 0, "{readable:?}");
        assert_eq!(w, [0; 4]);
    }
    assert_eq!(v.stats().requests.unknown_type, 4);
}

#[test]
fn wrong_lengths_are_inval() {
    let mut v = dev(small_config());
    let enc = Request::Attach(virtio_iommu_spec::request::Attach {
        domain: 1,
        endpoint: 0,
        flags: Default::default(),
    })
    .encode();
    let b = enc.as_bytes();
    assert_eq!(raw_status(&mut v, &b[..19]), Status::Inval);
    let mut long = b.to_vec();
    long.push(0);
    assert_eq!(raw_status(&mut v, &long), Status::Inval);
    assert_eq!(raw_status(&mut v, &b[..1]), Status::Inval);
    assert_eq!(v.stats().requests.attach.inval, 3);
    assert_eq!(v.domain_of(0), None);
}

// ---- features ------------------------------------------------------------------------------

#[test]
fn offered_features() {
    let v = Engine::new(EngineConfig::default(), Box::new(EmulatedHost::new())).unwrap();
    let f = v.offered_features();
    assert_eq!(
        f,
        Features::MAP_UNMAP
            | Features::INPUT_RANGE
            | Features::DOMAIN_RANGE
            | Features::PROBE
            | Features::BYPASS_CONFIG
    );
    assert!(!f.contains(Features::BYPASS));
    let mut v = Engine::new(
        EngineConfig {
            offer_mmio: true,
            offer_attach_table: true,
            offer_page_request: true,
            ..EngineConfig::default()
        },
        Box::new(EmulatedHost::new()),
    )
    .unwrap();
    assert_eq!(
        v.offered_features(),
        f | Features::MMIO | Features::ATTACH_TABLE | Features::PAGE_REQUEST
    );
    v.negotiate(Features::all() | Features::from_bits_retain(1 << 40));
    assert_eq!(v.negotiated(), v.offered_features());
}

#[test]
fn map_unmap_without_the_feature_get_no_reply() {
    let mut v = dev_with(small_config(), Features::PROBE | Features::BYPASS_CONFIG);
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    for r in [
        Request::Map(virtio_iommu_spec::request::Map {
            domain: 1,
            virt_start: 0,
            virt_end: 0xfff,
            phys_start: 0,
            flags: MapFlags::READ,
        }),
        Request::Unmap(virtio_iommu_spec::request::Unmap {
            domain: 1,
            virt_start: 0,
            virt_end: 0xfff,
        }),
    ] {
        let (n, w) = raw(&mut v, r.encode().as_bytes(), 4);
        assert_eq!((n, w), (0, vec![0; 4]));
    }
    assert_eq!(mappings(&v, 1), vec![]);
    assert_eq!(v.stats().requests.map.no_reply, 1);
    assert_eq!(v.stats().requests.unmap.no_reply, 1);
}

fn ext_requests(endpoint: u32) -> [Request; 3] {
    [
        Request::AttachTable(AttachTable {
            domain: 1,
            endpoint,
            table: TableDesc::Vtd {
                pasid: 1,
                addr_width: 48,
                pgd: 0x1000,
                flags: VtdFlags::empty(),
            },
        }),
        Request::Invalidate(Invalidate {
            domain: 1,
            caches: InvalCaches::IOTLB,
            scope: InvalScope::Domain,
            archid: None,
            leaf: false,
        }),
        Request::PageResp(PageResp {
            endpoint,
            pasid: Some(1),
            group_id: 3,
            code: PageRespCode::Success,
        }),
    ]
}

#[test]
fn extension_requests_are_gated_then_checked() {
    let cfg = EngineConfig {
        offer_attach_table: true,
        offer_page_request: true,
        ..small_config()
    };
    // Offered but not negotiated: no reply.
    let mut v = dev_with(cfg.clone(), Features::MAP_UNMAP | Features::PROBE);
    for r in ext_requests(0) {
        let (n, _) = raw(&mut v, r.encode().as_bytes(), 4);
        assert_eq!(n, 0, "{r:?}");
    }
    // Not offered at all: no reply either.
    let mut v = dev(small_config());
    for r in ext_requests(0) {
        assert_eq!(raw(&mut v, r.encode().as_bytes(), 4).0, 0);
    }
    // Negotiated: endpoint 0 advertises no table format (S_UNSUPP), domain 1 does not exist
    // (S_NOENT), group 3 was never raised (S_INVAL); an unknown endpoint gets S_NOENT.
    let mut v = dev(cfg);
    let s: Vec<Status> = ext_requests(0)
        .into_iter()
        .map(|r| send(&mut v, r))
        .collect();
    assert_eq!(s, vec![Status::Unsupp, Status::NoEnt, Status::Inval]);
    assert_eq!(send(&mut v, ext_requests(99)[0]), Status::NoEnt);
    assert_eq!(v.stats().requests.attach_table.unsupp, 1);
    assert_eq!(v.stats().requests.attach_table.noent, 1);
}

#[test]
fn probe_reports_extension_properties_when_offered() {
    let mut cfg = EngineConfig {
        offer_attach_table: true,
        offer_page_request: true,
        ..small_config()
    };
    cfg.endpoints[0].pasid_bits = 20;
    cfg.endpoints[0].page_requests = true;
    cfg.endpoints[0].table_formats = vec![TableFormat::ArmSmmuV3];
    let mut v = dev(cfg);
    let (n, w) = probe(&mut v, 0, 512);
    assert_eq!(n, 516);
    let props: Vec<_> = virtio_iommu_spec::ProbeProperties::new(&w[..512]).collect();
    assert_eq!(props.len(), 4);
    assert_eq!(props[1], virtio_iommu_spec::Property::PasidSize(20));
    assert_eq!(
        props[2],
        virtio_iommu_spec::Property::PasidTableFormat(TableFormat::ArmSmmuV3.code())
    );
    assert!(matches!(
        props[3],
        virtio_iommu_spec::Property::PageRequest { .. }
    ));
}

// ---- config space and bypass ----------------------------------------------------------------

#[test]
fn config_space_bytes() {
    let v = dev(EngineConfig {
        input_range: (0x1000, 0xffff_ffff_ffff),
        domain_range: (1, 0xffff),
        ..small_config()
    });
    let c = v.config_space();
    let mut want = [0u8; 40];
    want[..8].copy_from_slice(&0xffff_ffff_ffff_f000u64.to_le_bytes());
    want[8..16].copy_from_slice(&0x1000u64.to_le_bytes());
    want[16..24].copy_from_slice(&0xffff_ffff_ffffu64.to_le_bytes());
    want[24..28].copy_from_slice(&1u32.to_le_bytes());
    want[28..32].copy_from_slice(&0xffffu32.to_le_bytes());
    want[32..36].copy_from_slice(&512u32.to_le_bytes());
    assert_eq!(c.as_bytes(), &want);
}

#[test]
fn bypass_writes_reset_and_system_reset() {
    let mut v = dev(EngineConfig::default());
    assert_eq!(v.config_space().bypass, 1);
    // Boot bypass: unattached endpoints translate 1:1.
    assert_eq!(
        v.device_dma()
            .translate(3, None, 0x5000, 4, Access::Read)
            .unwrap()
            .gpa,
        0x5000
    );
    assert_eq!(v.write_config(36, &[0]), Ok(()));
    assert_eq!(v.config_space().bypass, 0);
    assert_eq!(
        v.device_dma()
            .translate(3, None, 0x5000, 4, Access::Read)
            .unwrap_err()
            .reason,
        FaultReason::Domain
    );
    // Illegal writes change nothing.
    assert_eq!(
        v.write_config(36, &[2]),
        Err(ConfigWriteError::InvalidBypass(2))
    );
    assert_eq!(
        v.write_config(36, &[0xff]),
        Err(ConfigWriteError::InvalidBypass(0xff))
    );
    assert_eq!(
        v.write_config(32, &[0, 0, 0, 0, 1]),
        Err(ConfigWriteError::ReadOnly { offset: 33 })
    );
    assert_eq!(
        v.write_config(37, &[1]),
        Err(ConfigWriteError::ReadOnly { offset: 37 })
    );
    assert_eq!(
        v.write_config(40, &[0]),
        Err(ConfigWriteError::OutOfRange { offset: 40, len: 1 })
    );
    assert_eq!(
        v.write_config(36, &[]),
        Err(ConfigWriteError::OutOfRange { offset: 36, len: 0 })
    );
    assert_eq!(
        v.write_config(u32::MAX, &[1]),
        Err(ConfigWriteError::OutOfRange {
            offset: u32::MAX,
            len: 1
        })
    );
    assert_eq!(v.config_space().bypass, 0);
    // Sticky across device reset.
    v.reset();
    assert_eq!(v.config_space().bypass, 0);
    assert!(v
        .device_dma()
        .translate(3, None, 0x5000, 4, Access::Read)
        .is_err());
    // A whole-space write that only changes bypass is fine.
    let mut all = v.config_space().as_bytes().to_vec();
    all[36] = 1;
    assert_eq!(v.write_config(0, &all), Ok(()));
    assert_eq!(v.config_space().bypass, 1);
    assert_eq!(v.write_config(36, &[0]), Ok(()));
    // System reset restores the boot value.
    v.system_reset();
    assert_eq!(v.config_space().bypass, 1);
    assert!(v
        .device_dma()
        .translate(3, None, 0x5000, 4, Access::Read)
        .is_ok());
}

#[test]
fn bypass_config_semantics_apply_when_offered_but_not_acked() {
    let mut v = dev_with(
        EngineConfig::default(),
        Features::MAP_UNMAP | Features::PROBE,
    );
    assert_eq!(
        v.device_dma()
            .translate(3, None, 0x5000, 4, Access::Write)
            .unwrap()
            .gpa,
        0x5000
    );
    assert_eq!(
        v.write_config(36, &[0]),
        Err(ConfigWriteError::NotNegotiated)
    );
    assert_eq!(v.write_config(36, &[1]), Ok(()));
    assert_eq!(v.config_space().bypass, 1);
    let mut v = dev_with(small_config(), Features::MAP_UNMAP | Features::PROBE);
    assert!(v
        .device_dma()
        .translate(3, None, 0x5000, 4, Access::Write)
        .is_err());
}

#[test]
fn reset_tears_everything_down() {
    let (mut v, _knobs, spaces) = test_dev(small_config());
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    assert_eq!(attach(&mut v, 2, 1), Status::Ok);
    assert_eq!(attach_bypass(&mut v, 3, 2), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x1000, 0x1fff, 0x8000, RW), Status::Ok);
    assert_eq!(*spaces.lock().unwrap(), 2);
    assert!(v
        .device_dma()
        .translate(0, None, 0x9000, 1, Access::Read)
        .is_err());
    assert!(v.has_events());
    let negotiated = v.negotiated();
    v.reset();
    assert_eq!(v.dump().domains, vec![]);
    assert!(!v.has_events());
    assert_eq!(*spaces.lock().unwrap(), 0);
    assert_eq!(v.stats().domains, 0);
    assert_eq!(v.stats().mappings, 0);
    assert_eq!(v.stats().attached_endpoints, 0);
    assert_eq!(v.negotiated(), negotiated);
    // The host forgot the attachments too: endpoint 2 is no longer in bypass.
    assert_eq!(
        v.device_dma()
            .translate(2, None, 0x1000, 1, Access::Read)
            .unwrap_err()
            .reason,
        FaultReason::Domain
    );
    // Counters are cumulative.
    assert_eq!(v.stats().requests.attach.ok, 3);
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x1000, 0x1fff, 0x8000, RW), Status::Ok);
}

// ---- limits and host failures ---------------------------------------------------------------

#[test]
fn limits_fail_with_nomem_and_change_nothing() {
    let cfg = EngineConfig {
        limits: Limits {
            max_mappings_per_domain: 2,
            max_domains: 2,
            max_attached_endpoints: 3,
            ..Limits::default()
        },
        ..small_config()
    };
    let mut v = dev(cfg);
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x1000, 0x1fff, 0, RW), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x2000, 0x2fff, 0, RW), Status::Ok);
    let before = v.dump();
    assert_eq!(map(&mut v, 1, 0x3000, 0x3fff, 0, RW), Status::NoMem);
    assert_eq!(v.dump(), before);
    // Freeing one makes room again.
    assert_eq!(unmap(&mut v, 1, 0x1000, 0x1fff), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x3000, 0x3fff, 0, RW), Status::Ok);

    assert_eq!(attach(&mut v, 2, 1), Status::Ok);
    let before = v.dump();
    assert_eq!(attach(&mut v, 3, 2), Status::NoMem);
    assert_eq!(attach_bypass(&mut v, 3, 2), Status::NoMem);
    assert_eq!(v.dump(), before);
    // Joining an existing domain needs no new one.
    assert_eq!(attach(&mut v, 2, 2), Status::Ok);
    // Moving the only endpoint of domain 1 into a new domain frees domain 1 first.
    assert_eq!(attach(&mut v, 4, 0), Status::Ok);
    let ids: Vec<u32> = v.dump().domains.iter().map(|d| d.id).collect();
    assert_eq!(ids, vec![2, 4]);
    // Three endpoints attached: a fourth is refused, moves are fine.
    let before = v.dump();
    assert_eq!(attach(&mut v, 4, 3), Status::NoMem);
    assert_eq!(v.dump(), before);
    assert_eq!(attach(&mut v, 4, 1), Status::Ok);
    assert_eq!(v.stats().requests.attach.nomem, 3);
}

#[test]
fn host_failures_roll_back() {
    let (mut v, knobs, spaces) = test_dev(small_config());
    let set = |f: &dyn Fn(&mut Knobs)| f(&mut knobs.lock().unwrap());

    set(&|k| k.fail_alloc = Some(HostError::NoMem));
    assert_eq!(attach(&mut v, 1, 0), Status::NoMem);
    assert_eq!(v.dump().domains, vec![]);
    set(&|k| k.fail_attach = Some(HostError::Failed));
    assert_eq!(attach(&mut v, 1, 0), Status::DevErr);
    assert_eq!(v.dump().domains, vec![]);
    assert_eq!(*spaces.lock().unwrap(), 0, "the new space was destroyed");

    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x1000, 0x1fff, 0x8000, RW), Status::Ok);
    for (e, s) in [
        (HostError::NoMem, Status::NoMem),
        (HostError::Unsupported, Status::Unsupp),
        (HostError::Invalid, Status::DevErr),
        (HostError::Failed, Status::DevErr),
    ] {
        set(&|k| k.fail_map = Some(e));
        assert_eq!(map(&mut v, 1, 0x2000, 0x2fff, 0x9000, RW), s);
        assert_eq!(mappings(&v, 1).len(), 1);
    }
    set(&|k| k.fail_unmap = Some(HostError::Failed));
    assert_eq!(unmap(&mut v, 1, 0, u64::MAX), Status::DevErr);
    assert_eq!(mappings(&v, 1).len(), 1);
    assert_eq!(
        v.device_dma()
            .translate(0, None, 0x1000, 1, Access::Read)
            .unwrap()
            .gpa,
        0x8000
    );
    set(&|k| k.fail_detach = Some(HostError::Failed));
    assert_eq!(detach(&mut v, 1, 0), Status::DevErr);
    assert_eq!(v.domain_of(0), Some(1));
    // A failed move leaves the endpoint where it was.
    set(&|k| k.fail_attach = Some(HostError::Failed));
    assert_eq!(attach(&mut v, 2, 0), Status::DevErr);
    assert_eq!(v.domain_of(0), Some(1));
    assert_eq!(*spaces.lock().unwrap(), 1);
    assert_eq!(
        v.device_dma()
            .translate(0, None, 0x1000, 1, Access::Read)
            .unwrap()
            .gpa,
        0x8000
    );
    // And everything still works afterwards.
    assert_eq!(map(&mut v, 1, 0x2000, 0x2fff, 0x9000, RW), Status::Ok);
    assert_eq!(detach(&mut v, 1, 0), Status::Ok);
    assert_eq!(*spaces.lock().unwrap(), 0);
}

#[test]
fn bad_configurations_are_refused() {
    let new = |cfg| Engine::new(cfg, Box::new(EmulatedHost::new())).unwrap_err();
    assert_eq!(
        new(EngineConfig {
            probe_size: 8,
            ..small_config()
        }),
        ConfigError::ProbeSizeTooSmall {
            need: 24,
            probe_size: 8
        }
    );
    assert_eq!(
        new(EngineConfig {
            endpoints: vec![eps(0..=4, vec![]), eps(4..=8, vec![])],
            ..small_config()
        }),
        ConfigError::OverlappingEndpoints(0..=4, 4..=8)
    );
    assert_eq!(
        new(EngineConfig {
            page_size_mask: 0,
            ..small_config()
        }),
        ConfigError::NoPageSize
    );
}

// ---- events --------------------------------------------------------------------------------

#[test]
fn fault_records_and_the_bounded_queue() {
    let cfg = EngineConfig {
        limits: Limits {
            max_pending_events: 2,
            ..Limits::default()
        },
        ..small_config()
    };
    let mut v = dev(cfg);
    for ep in 1..=3 {
        let f = v
            .device_dma()
            .translate(ep, None, 0x4000 + u64::from(ep), 1, Access::Write)
            .unwrap_err();
        assert_eq!(
            f,
            FaultEvent {
                reason: FaultReason::Domain,
                access: FaultFlags::WRITE,
                endpoint: ep,
                address: Some(0x4000 + u64::from(ep)),
                pasid: None,
            }
        );
    }
    assert_eq!(v.stats().events.queued, 3);
    assert_eq!(v.stats().events.dropped, 1);
    // A buffer under 24 bytes gets nothing and the event stays.
    assert_eq!(v.pop_event(23), None);
    let e = v.pop_event(24).unwrap();
    let mut want = [0u8; 24];
    want[0] = FaultReason::Domain as u8;
    want[4..8].copy_from_slice(&0x102u32.to_le_bytes()); // WRITE | ADDRESS
    want[8..12].copy_from_slice(&2u32.to_le_bytes());
    want[16..24].copy_from_slice(&0x4002u64.to_le_bytes());
    assert_eq!(e.as_bytes(), &want);
    // Without PAGE_REQUEST a big buffer still gets the upstream record.
    assert_eq!(v.pop_event(64).unwrap().len, 24);
    assert_eq!(v.pop_event(64), None);
    assert!(!v.has_events());
    assert_eq!(v.stats().events.delivered, 2);
    // Unknown endpoints are not behind this IOMMU: the fault is returned, not queued.
    assert_eq!(
        v.device_dma()
            .translate(99, None, 0, 1, Access::Read)
            .unwrap_err()
            .reason,
        FaultReason::Unknown
    );
    assert!(!v.has_events());
}

fn page_request(last: bool) -> PageRequest {
    PageRequest {
        endpoint: 1,
        pasid: Some(5),
        address: 0x7000,
        access: FaultFlags::READ | FaultFlags::WRITE,
        group_id: 12,
        last,
        private_data: None,
    }
}

#[test]
fn page_requests_are_delivered_or_failed() {
    let cfg = EngineConfig {
        offer_page_request: true,
        ..small_config()
    };
    let (mut v, knobs, _) = test_dev(cfg.clone());
    knobs
        .lock()
        .unwrap()
        .events
        .push_back(Event::PageRequest(page_request(true)));
    assert_eq!(v.poll_host(), 1);
    let e = v.pop_event(48).unwrap();
    assert_eq!(e.len, 48);
    assert_eq!(
        Event::parse(e.as_bytes()).unwrap(),
        Event::PageRequest(page_request(true))
    );
    // Extended faults carry the PASID.
    let f = v
        .device_dma()
        .translate(1, Some(5), 0x1000, 1, Access::Read)
        .unwrap_err();
    let e = v.pop_event(48).unwrap();
    assert_eq!(Event::parse(e.as_bytes()).unwrap(), Event::Fault(f));

    // Driver without PAGE_REQUEST: the device fails the group itself and moves on.
    let (h, knobs, _) = TestHost::new();
    let mut v = Engine::new(cfg, Box::new(h)).unwrap();
    v.negotiate(Features::MAP_UNMAP | Features::PROBE | Features::BYPASS_CONFIG);
    {
        let mut k = knobs.lock().unwrap();
        k.events.push_back(Event::PageRequest(page_request(false)));
        k.events.push_back(Event::PageRequest(page_request(true)));
    }
    assert_eq!(v.poll_host(), 2);
    let f = v
        .device_dma()
        .translate(1, None, 0x1000, 1, Access::Read)
        .unwrap_err();
    let e = v.pop_event(48).unwrap();
    assert_eq!(e.as_bytes(), &f.encode_legacy());
    assert_eq!(
        knobs.lock().unwrap().page_responses,
        vec![(1, Some(5), 12, PageRespCode::Failure)]
    );
    assert_eq!(v.stats().events.page_requests_failed, 2);
    assert_eq!(v.stats().events.delivered, 1);
}

// ---- counters and dump ---------------------------------------------------------------------

#[test]
fn counters_and_dump_serialise() {
    let mut v = dev(small_config());
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    assert_eq!(attach_bypass(&mut v, 2, 1), Status::Ok);
    assert_eq!(
        map(&mut v, 1, 0x1000, 0x1fff, 0x8000, MapFlags::READ),
        Status::Ok
    );
    assert_eq!(
        map(&mut v, 1, 0x1001, 0x1fff, 0x8000, MapFlags::READ),
        Status::Range
    );
    assert_eq!(
        map(&mut v, 9, 0x1000, 0x1fff, 0x8000, MapFlags::READ),
        Status::NoEnt
    );
    let s = v.stats();
    assert_eq!(
        (
            s.requests.attach.ok,
            s.requests.map.ok,
            s.requests.map.range,
            s.requests.map.noent
        ),
        (2, 1, 1, 1)
    );
    assert_eq!((s.domains, s.mappings, s.attached_endpoints), (2, 1, 2));
    let json = serde_json::to_value(s).unwrap();
    assert_eq!(json["map"]["range"], 1);
    assert_eq!(json["events"]["dropped"], 0);
    assert_eq!(
        serde_json::to_string(&v.dump()).unwrap(),
        concat!(
            r#"{"bypass":false,"domains":["#,
            r#"{"id":1,"bypass":false,"endpoints":[0],"mappings":[{"virt_start":4096,"virt_last":8191,"phys_start":32768,"flags":1}]},"#,
            r#"{"id":2,"bypass":true,"endpoints":[1],"mappings":[]}]}"#
        )
    );
}
