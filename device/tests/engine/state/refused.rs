//! Streams that do not fit are refused with the difference named, and the destination keeps
//! exactly the state it had: truncated, corrupt, foreign and future streams; a destination
//! configured differently; states no guest could have built; a host that refuses.

use std::time::Instant;

use super::rich::{build, config, destination, RW};
use crate::common::{attach, map, test_dev};
use vhost_device_iommu::engine::{Engine, EngineConfig, SavedState, StateError};
use vhost_device_iommu::host::HostError;
use virtio_iommu_spec::event::{FaultFlags, FaultReason};
use virtio_iommu_spec::ext::VtdFlags;
use virtio_iommu_spec::request::TableDesc;
use virtio_iommu_spec::{Event, FaultEvent, Features, Status};

/// Fixes the header's length and the checksum after a test edited the bytes.
pub fn reseal(b: &mut [u8]) {
    let len = b.len() as u64;
    b[16..24].copy_from_slice(&len.to_le_bytes());
    let n = b.len() - 4;
    let crc = crc32fast::hash(&b[..n]);
    b[n..].copy_from_slice(&crc.to_le_bytes());
}

/// A destination with a state of its own (domain 77, one mapping).
fn busy_destination(g: &crate::sva::guest::Guest, cfg: EngineConfig) -> Engine {
    let mut b = destination(cfg, g);
    b.negotiate(b.offered_features());
    assert_eq!(attach(&mut b, 77, 20), Status::Ok);
    assert_eq!(map(&mut b, 77, 0x1000, 0x1fff, 0x5000, RW), Status::Ok);
    b
}

#[test]
fn truncated_corrupt_and_foreign_streams_change_nothing() {
    let now = Instant::now();
    let a = build(now);
    let good = a.v.save_state(now);
    let mut b = busy_destination(&a.g, config());
    let before = b.save_state(now);
    // Every prefix.
    for n in 0..good.len() {
        let e = b.load_state(&good[..n], now).unwrap_err();
        match (n, &e) {
            (
                0..=7,
                StateError::Truncated {
                    section: "header", ..
                },
            ) => {}
            (
                8..=23,
                StateError::Truncated {
                    section: "header", ..
                },
            ) => {}
            (24.., StateError::Length { declared, actual }) => {
                assert_eq!((*declared, *actual), (good.len() as u64, n));
            }
            _ => panic!("prefix of {n} bytes: {e}"),
        }
    }
    // Every single-bit error is caught (by the header checks or the checksum).
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 1 << (i % 8);
        assert!(b.load_state(&bad, now).is_err(), "flip at {i}");
    }
    // A longer stream with the old header.
    let mut long = good.clone();
    long.push(0);
    assert!(matches!(
        b.load_state(&long, now),
        Err(StateError::Length { .. })
    ));
    // Not a state at all; a future version.
    let mut foreign = good.clone();
    foreign[..8].copy_from_slice(b"QEMU\0\0\0\x01");
    assert!(matches!(
        b.load_state(&foreign, now),
        Err(StateError::BadMagic(_))
    ));
    let mut future = good.clone();
    future[8] = 2;
    reseal(&mut future);
    let e = b.load_state(&future, now).unwrap_err();
    assert_eq!(
        e.to_string(),
        "state version 2 is not supported (this device reads version 1)"
    );
    // Cut inside DOMAINS, header and checksum made consistent: the section is truncated.
    let s = SavedState::decode(&good).unwrap();
    let mut cut = s.encode();
    let domains_at = find_section(&cut, 3);
    cut.truncate(domains_at + 16 + 40);
    cut.extend([0; 4]);
    reseal(&mut cut);
    assert!(matches!(
        b.load_state(&cut, now),
        Err(StateError::Truncated {
            section: "DOMAINS",
            ..
        })
    ));
    // A section out of order.
    let mut swapped = good.clone();
    let tables_at = find_section(&swapped, 4);
    swapped[tables_at] = 9;
    reseal(&mut swapped);
    assert_eq!(
        b.load_state(&swapped, now).unwrap_err(),
        StateError::Section {
            expected: "TABLES",
            found: 9
        }
    );
    assert_eq!(b.save_state(now), before, "the destination is unchanged");
}

/// Byte offset of section `id` (walks the section headers).
fn find_section(b: &[u8], id: u32) -> usize {
    let mut at = 24;
    loop {
        let sid = u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        if sid == id {
            return at;
        }
        let len = u64::from_le_bytes(b[at + 8..at + 16].try_into().unwrap());
        at += 16 + usize::try_from(len).unwrap();
    }
}

/// A change to a configuration.
type ConfigEdit = Box<dyn Fn(&mut EngineConfig)>;
/// A change to a saved state.
type StateEdit = Box<dyn Fn(&mut SavedState)>;

fn mismatch(e: &StateError) -> &str {
    match e {
        StateError::Mismatch { what, .. } => what,
        other => panic!("expected a mismatch, got {other}"),
    }
}

#[test]
fn a_destination_configured_differently_is_named() {
    let now = Instant::now();
    let a = build(now);
    let good = a.v.save_state(now);
    let cases: Vec<(&str, ConfigEdit)> = vec![
        (
            "page_size_mask",
            Box::new(|c| c.page_size_mask = 0xffff_ffff_ffff_0000),
        ),
        (
            "input_range",
            Box::new(|c| c.input_range = (0, 0xffff_ffff_ffff)),
        ),
        ("domain_range", Box::new(|c| c.domain_range = (0, 0xffff))),
        ("probe_size", Box::new(|c| c.probe_size = 1024)),
        ("boot bypass", Box::new(|c| c.boot_bypass = true)),
        ("offered features", Box::new(|c| c.offer_mmio = true)),
        (
            "limit max_mappings_per_domain",
            Box::new(|c| c.limits.max_mappings_per_domain = 1000),
        ),
        ("limit max_domains", Box::new(|c| c.limits.max_domains = 8)),
        (
            "limit max_pending_events",
            Box::new(|c| c.limits.max_pending_events = 16),
        ),
        (
            "limit max_page_request_groups",
            Box::new(|c| c.limits.max_page_request_groups = 8),
        ),
        (
            "page-request timeout (µs)",
            Box::new(|c| c.limits.page_request_timeout = std::time::Duration::from_secs(5)),
        ),
        (
            "PASID bits of endpoints 0x0-0x3",
            Box::new(|c| c.endpoints[0].pasid_bits = 16),
        ),
        (
            "page-request capability of endpoints 0x4-0x5",
            Box::new(|c| c.endpoints[1].page_requests = true),
        ),
        (
            "table formats of endpoints 0x6-0x6",
            Box::new(|c| {
                c.endpoints[2].table_formats = vec![virtio_iommu_spec::ext::TableFormat::Vtd];
            }),
        ),
        (
            "reserved regions of endpoints 0x10-0x1f",
            Box::new(|c| c.endpoints[3].reserved.clear()),
        ),
        (
            "endpoint range 3",
            Box::new(|c| c.endpoints[3].ids = 16..=47),
        ),
        (
            "endpoint range count",
            Box::new(|c| c.endpoints.push(crate::common::eps(100..=100, Vec::new()))),
        ),
    ];
    for (what, edit) in cases {
        let mut cfg = config();
        edit(&mut cfg);
        let mut b = destination(cfg, &a.g);
        let before = b.save_state(now);
        let e = b.load_state(&good, now).unwrap_err();
        assert_eq!(mismatch(&e), what, "{e}");
        assert_eq!(
            b.save_state(now),
            before,
            "{what}: the destination is unchanged"
        );
    }
    let mut cfg = config();
    cfg.page_size_mask = 0xffff_ffff_ffff_0000;
    let e = destination(cfg, &a.g).load_state(&good, now).unwrap_err();
    assert_eq!(
        e.to_string(),
        "page_size_mask differs: 0xfffffffffffff000 in the stream, 0xffffffffffff0000 on \
         this device"
    );
}

fn invalid(e: StateError) -> (&'static str, String) {
    match e {
        StateError::Invalid { section, why } => (section, why),
        other => panic!("expected an invalid state, got {other}"),
    }
}

#[test]
fn states_no_guest_could_build_change_nothing() {
    let now = Instant::now();
    let a = build(now);
    let good = a.v.saved_state(now);
    let fault = |endpoint| {
        Event::Fault(FaultEvent {
            reason: FaultReason::Mapping,
            access: FaultFlags::READ,
            endpoint,
            address: Some(0),
            pasid: None,
        })
    };
    // Domains by ID: 1 (endpoint 0, a table), 2 (16, 17: the pages), 3 (18, bypass), 4 (1).
    let cases: Vec<(&str, &str, StateEdit)> = vec![
        (
            "DOMAINS",
            "out of order",
            Box::new(|s| s.domains.swap(0, 1)),
        ),
        (
            "DOMAINS",
            "has no endpoint",
            Box::new(|s| s.domains[1].endpoints.clear()),
        ),
        (
            "DOMAINS",
            "does not exist",
            Box::new(|s| s.domains[1].endpoints = vec![40]),
        ),
        (
            "DOMAINS",
            "is in domains 2 and 3",
            Box::new(|s| s.domains[2].endpoints = vec![16]),
        ),
        (
            "DOMAINS",
            "endpoint 0x10 is out of order",
            Box::new(|s| s.domains[1].endpoints = vec![17, 16]),
        ),
        (
            "DOMAINS",
            "bypass domain 3 has mappings",
            Box::new(|s| {
                let m = s.domains[1].mappings[0];
                s.domains[2].mappings.push(m);
            }),
        ),
        (
            "DOMAINS",
            "overlaps or precedes",
            Box::new(|s| {
                s.domains[1].mappings[1].virt_start = s.domains[1].mappings[0].virt_start;
                s.domains[1].mappings[1].virt_last = s.domains[1].mappings[0].virt_last;
            }),
        ),
        (
            "DOMAINS",
            "not aligned",
            Box::new(|s| s.domains[1].mappings[3].phys_start += 8),
        ),
        (
            "DOMAINS",
            "inverted",
            Box::new(|s| s.domains[1].mappings[3].virt_last = 0),
        ),
        (
            "DOMAINS",
            "unknown flags",
            Box::new(|s| s.domains[1].mappings[3].flags = 8),
        ),
        (
            "DOMAINS",
            "MMIO without MMIO negotiated",
            Box::new(|s| s.domains[1].mappings[3].flags = 4),
        ),
        (
            "DOMAINS",
            "output past 2^64",
            Box::new(|s| s.domains[0].mappings[1].phys_start = u64::MAX - 0xfff),
        ),
        (
            "DOMAINS",
            "on the reserved region [0xfee00000, 0xfeefffff]",
            Box::new(|s| {
                let m = s.domains[1].mappings.last_mut().unwrap();
                m.virt_start = 0xfee0_0000;
                m.virt_last = 0xfee0_0fff;
            }),
        ),
        (
            "DOMAINS",
            "without MAP_UNMAP negotiated",
            Box::new(|s| s.negotiated.remove(Features::MAP_UNMAP)),
        ),
        (
            "DOMAINS",
            "without BYPASS_CONFIG negotiated",
            Box::new(|s| s.negotiated.remove(Features::BYPASS_CONFIG)),
        ),
        (
            "TABLES",
            "not in domain 2",
            Box::new(|s| s.tables[0].domain = 2),
        ),
        (
            "TABLES",
            "not in domain 1",
            Box::new(|s| s.tables[0].endpoint = 2),
        ),
        (
            "TABLES",
            "bound twice",
            Box::new(|s| {
                let t = s.tables[0];
                s.tables.insert(0, t);
            }),
        ),
        (
            "TABLES",
            "invalid descriptor",
            Box::new(|s| {
                if let TableDesc::Vtd { pasid, .. } = &mut s.tables[0].table {
                    *pasid = 300;
                }
            }),
        ),
        (
            "TABLES",
            "format not supported",
            Box::new(|s| {
                s.tables[0].table = TableDesc::Vtd {
                    pasid: 1,
                    addr_width: 48,
                    pgd: 0,
                    flags: VtdFlags::empty(),
                };
                s.domains[0].endpoints = vec![6];
                s.tables[0].endpoint = 6;
            }),
        ),
        (
            "TABLES",
            "bypass domain",
            Box::new(|s| {
                s.tables[1].domain = 3;
                s.tables[1].endpoint = 18;
            }),
        ),
        (
            "PAGE_REQUESTS",
            "does not exist",
            Box::new(|s| s.groups[0].endpoint = 1000),
        ),
        (
            "PAGE_REQUESTS",
            "more time left",
            Box::new(|s| s.groups[0].remaining = std::time::Duration::from_secs(2)),
        ),
        (
            "PAGE_REQUESTS",
            "listed twice",
            Box::new(|s| {
                let g = s.groups[0];
                s.groups.push(g);
            }),
        ),
        (
            "PAGE_REQUESTS",
            "more than 4 groups",
            Box::new(|s| {
                let g = s.groups[0];
                s.groups = (0..5)
                    .map(|i| vhost_device_iommu::engine::state::SavedGroup { group_id: i, ..g })
                    .collect();
            }),
        ),
        (
            "PAGE_REQUESTS",
            "stopped endpoint 0x3e8 does not exist",
            Box::new(|s| s.stopped_endpoints.push(1000)),
        ),
        (
            "PAGE_REQUESTS",
            "without PAGE_REQUEST negotiated",
            Box::new(|s| s.negotiated.remove(Features::PAGE_REQUEST)),
        ),
        (
            "EVENTS",
            "300 events, the limit is 256",
            Box::new(move |s| s.events = vec![fault(0); 300]),
        ),
        (
            "EVENTS",
            "endpoint 0x3e8 does not exist",
            Box::new(move |s| s.events.push(fault(1000))),
        ),
        (
            "DEVICE",
            "are not all offered",
            Box::new(|s| s.negotiated.insert(Features::MMIO)),
        ),
    ];
    let mut b = busy_destination(&a.g, config());
    let before = b.save_state(now);
    for (section, why, edit) in cases {
        let mut s = good.clone();
        edit(&mut s);
        let (sec, msg) = invalid(b.restore_state(&s, now).expect_err(why));
        assert_eq!(sec, section, "{msg}");
        assert!(msg.contains(why), "{section}: {msg:?} should say {why:?}");
        // The same through the stream.
        let (sec, _) = invalid(b.load_state(&s.encode(), now).unwrap_err());
        assert_eq!(sec, section);
        assert_eq!(
            b.save_state(now),
            before,
            "{why}: the destination is unchanged"
        );
    }
}

#[test]
fn limits_of_the_destination_bound_the_state() {
    let now = Instant::now();
    let mut cfg = config();
    cfg.limits.max_mappings_per_domain = 50;
    cfg.limits.max_domains = 3;
    cfg.domain_range = (0, 2);
    let a = build(now);
    let mut s = a.v.saved_state(now);
    s.config.limits = cfg.limits.clone();
    s.config.domain_range = cfg.domain_range;
    let mut b = destination(cfg, &a.g);
    let (_, why) = invalid(b.restore_state(&s, now).unwrap_err());
    assert_eq!(why, "4 domains, the limit is 3");
    s.domains.pop();
    s.tables.retain(|t| t.domain < 3);
    let (_, why) = invalid(b.restore_state(&s, now).unwrap_err());
    assert_eq!(why, "domain 2 has 100 mappings, the limit is 50");
    s.domains[1].mappings.truncate(50);
    let (_, why) = invalid(b.restore_state(&s, now).unwrap_err());
    assert_eq!(why, "domain 3 is outside the domain range");
    s.domains.pop();
    b.restore_state(&s, now).expect("within the limits");
    assert_eq!(b.stats().mappings, 52);
}

#[test]
fn a_host_that_refuses_leaves_the_device_reset() {
    let now = Instant::now();
    let a = build(now);
    let (mut b, knobs, spaces) = test_dev(config());
    knobs.lock().unwrap().fail_map = Some(HostError::NoMem);
    let e = b.load_state(&a.v.save_state(now), now).unwrap_err();
    assert_eq!(
        e.to_string(),
        "rebuilding the state failed at MAP [0x4000, 0x7fff] of domain 1: S_NOMEM; the device \
         was reset"
    );
    assert!(b.dump().domains.is_empty());
    assert_eq!(b.stats().attached_endpoints, 0);
    assert_eq!(*spaces.lock().unwrap(), 0, "no host space left behind");
}
