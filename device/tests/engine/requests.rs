//! Every row of the request tables of `spec/PROTOCOL.md` §6, the seven UNMAP
//! examples of the specification, and the status choices this device makes where the
//! specification is loose.

use crate::common::*;
use vhost_device_iommu::engine::{DomainDump, Dump, EngineConfig};
use vhost_device_iommu::host::{Access, ReservedRegion};
use virtio_iommu_spec::event::FaultReason;
use virtio_iommu_spec::request::{Attach, AttachFlags, Detach, MapFlags, Unmap};
use virtio_iommu_spec::{Features, ProbeProperties, Property, Request, Status};

fn attach_bytes(domain: u32, endpoint: u32) -> Vec<u8> {
    Request::Attach(Attach {
        domain,
        endpoint,
        flags: AttachFlags::empty(),
    })
    .encode()
    .as_bytes()
    .to_vec()
}

// ---- ATTACH --------------------------------------------------------------------------------

#[test]
fn attach_reserved_not_zero_is_inval() {
    let mut v = dev(small_config());
    let mut b = attach_bytes(1, 0);
    b[19] = 1;
    assert_eq!(raw_status(&mut v, &b), Status::Inval);
    assert_eq!(v.domain_of(0), None);
}

#[test]
fn attach_unknown_flag_is_inval() {
    let mut v = dev(small_config());
    let mut b = attach_bytes(1, 0);
    b[12] = 2;
    assert_eq!(raw_status(&mut v, &b), Status::Inval);
    assert_eq!(v.dump().domains, vec![]);
}

#[test]
fn attach_unknown_endpoint_is_noent() {
    let mut v = dev(small_config());
    assert_eq!(attach(&mut v, 1, 16), Status::NoEnt);
    assert_eq!(attach(&mut v, 1, u32::MAX), Status::NoEnt);
    assert_eq!(v.dump().domains, vec![]);
}

#[test]
fn attach_creates_the_domain_and_shares_it() {
    let mut v = dev(small_config());
    assert_eq!(attach(&mut v, 7, 0), Status::Ok);
    assert_eq!(attach(&mut v, 7, 3), Status::Ok);
    assert_eq!(
        v.dump(),
        Dump {
            bypass: false,
            domains: vec![DomainDump {
                id: 7,
                bypass: false,
                endpoints: vec![0, 3],
                mappings: vec![],
            }],
        }
    );
    // Both endpoints see the domain's mappings.
    assert_eq!(map(&mut v, 7, 0x1000, 0x1fff, 0x8000, RW), Status::Ok);
    for ep in [0, 3] {
        assert_eq!(
            v.device_dma()
                .translate(ep, None, 0x1010, 4, Access::Read)
                .unwrap()
                .gpa,
            0x8010
        );
    }
    // Attaching again to the same domain changes nothing.
    assert_eq!(attach(&mut v, 7, 0), Status::Ok);
    assert_eq!(v.stats().domains, 1);
    assert_eq!(v.stats().attached_endpoints, 2);
}

#[test]
fn attach_bypass_flag_inconsistent_with_domain_is_inval() {
    let mut v = dev(small_config());
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    assert_eq!(attach_bypass(&mut v, 1, 1), Status::Inval);
    assert_eq!(attach_bypass(&mut v, 2, 1), Status::Ok);
    assert_eq!(attach(&mut v, 2, 3), Status::Inval);
    assert_eq!(v.domain_of(1), Some(2));
    assert_eq!(v.domain_of(3), None);
}

#[test]
fn attach_moves_the_endpoint_and_the_old_domain_vanishes() {
    let mut v = dev(small_config());
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x1000, 0x1fff, 0x8000, RW), Status::Ok);
    assert_eq!(attach(&mut v, 2, 0), Status::Ok);
    assert_eq!(v.domain_of(0), Some(2));
    let ids: Vec<u32> = v.dump().domains.iter().map(|d| d.id).collect();
    assert_eq!(ids, vec![2]);
    assert_eq!(v.stats().mappings, 0);
    // The old mapping is unreachable and domain 1 is gone.
    assert_eq!(
        v.device_dma()
            .translate(0, None, 0x1000, 1, Access::Read)
            .unwrap_err()
            .reason,
        FaultReason::Mapping
    );
    assert_eq!(map(&mut v, 1, 0x1000, 0x1fff, 0x8000, RW), Status::NoEnt);
    // A move out of a shared domain keeps it.
    assert_eq!(attach(&mut v, 2, 1), Status::Ok);
    assert_eq!(map(&mut v, 2, 0x1000, 0x1fff, 0x8000, RW), Status::Ok);
    assert_eq!(attach(&mut v, 3, 1), Status::Ok);
    assert_eq!(mappings(&v, 2), vec![(0x1000, 0x1fff, 0x8000, 3)]);
}

#[test]
fn attach_with_incompatible_reserved_regions_is_unsupp() {
    let cfg = EngineConfig {
        endpoints: vec![
            eps(0..=3, vec![resv(0x10_0000, 0x10_ffff)]),
            eps(4..=7, vec![]),
        ],
        ..small_config()
    };
    let mut v = dev(cfg);
    assert_eq!(attach(&mut v, 1, 4), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x10_8000, 0x10_8fff, 0, RW), Status::Ok);
    assert_eq!(attach(&mut v, 1, 0), Status::Unsupp);
    assert_eq!(v.domain_of(0), None);
    // Without the clash the endpoint joins, and then its region constrains MAP.
    assert_eq!(unmap(&mut v, 1, 0, u64::MAX), Status::Ok);
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x10_8000, 0x10_8fff, 0, RW), Status::Inval);
}

#[test]
fn attach_domain_outside_domain_range_is_range() {
    let mut v = dev(EngineConfig {
        domain_range: (1, 10),
        ..small_config()
    });
    assert_eq!(attach(&mut v, 0, 0), Status::Range);
    assert_eq!(attach(&mut v, 11, 0), Status::Range);
    assert_eq!(attach(&mut v, 10, 0), Status::Ok);
    assert_eq!(v.config_space().domain_range_end.get(), 10);
}

#[test]
fn attach_bypass_needs_bypass_config_negotiated() {
    let mut v = dev_with(small_config(), Features::MAP_UNMAP | Features::PROBE);
    assert_eq!(attach_bypass(&mut v, 1, 0), Status::Inval);
    assert_eq!(v.domain_of(0), None);
}

#[test]
fn bypass_domain_translates_one_to_one() {
    let mut v = dev(small_config());
    assert_eq!(attach_bypass(&mut v, 1, 0), Status::Ok);
    assert_eq!(
        v.device_dma()
            .translate(0, None, 0x1234_5678, 8, Access::Write)
            .unwrap()
            .gpa,
        0x1234_5678
    );
}

// ---- DETACH --------------------------------------------------------------------------------

#[test]
fn detach_ignores_reserved() {
    let mut v = dev(small_config());
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    let mut b = Request::Detach(Detach {
        domain: 1,
        endpoint: 0,
    })
    .encode()
    .as_bytes()
    .to_vec();
    b[12..20].fill(0xff);
    assert_eq!(raw_status(&mut v, &b), Status::Ok);
    assert_eq!(v.domain_of(0), None);
}

#[test]
fn detach_unknown_endpoint_is_noent() {
    let mut v = dev(small_config());
    assert_eq!(detach(&mut v, 1, 99), Status::NoEnt);
}

#[test]
fn detach_from_a_domain_the_endpoint_is_not_in_is_inval() {
    let mut v = dev(small_config());
    assert_eq!(detach(&mut v, 1, 0), Status::Inval);
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    assert_eq!(attach(&mut v, 2, 1), Status::Ok);
    assert_eq!(detach(&mut v, 2, 0), Status::Inval);
    assert_eq!(v.domain_of(0), Some(1));
}

#[test]
fn detach_of_the_last_endpoint_drops_domain_and_mappings() {
    let mut v = dev(small_config());
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    assert_eq!(attach(&mut v, 1, 1), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x1000, 0x1fff, 0x8000, RW), Status::Ok);
    assert_eq!(detach(&mut v, 1, 0), Status::Ok);
    assert_eq!(mappings(&v, 1).len(), 1);
    // A detached endpoint no longer reaches the mappings (boot bypass is off: DOMAIN fault).
    assert_eq!(
        v.device_dma()
            .translate(0, None, 0x1000, 1, Access::Read)
            .unwrap_err()
            .reason,
        FaultReason::Domain
    );
    assert_eq!(detach(&mut v, 1, 1), Status::Ok);
    assert_eq!(v.dump().domains, vec![]);
    assert_eq!(v.stats().mappings, 0);
    // The ID can be reused and starts empty.
    assert_eq!(attach(&mut v, 1, 1), Status::Ok);
    assert_eq!(mappings(&v, 1), vec![]);
    assert_eq!(map(&mut v, 1, 0x1000, 0x1fff, 0x9000, RW), Status::Ok);
}

#[test]
fn detach_domain_outside_domain_range_is_range() {
    let mut v = dev(EngineConfig {
        domain_range: (1, 10),
        ..small_config()
    });
    assert_eq!(detach(&mut v, 11, 0), Status::Range);
}

// ---- MAP -----------------------------------------------------------------------------------

#[test]
fn map_misaligned_is_range() {
    let mut v = dev(small_config());
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x1001, 0x1fff, 0, RW), Status::Range);
    assert_eq!(map(&mut v, 1, 0x1000, 0x1fff, 0x10, RW), Status::Range);
    assert_eq!(map(&mut v, 1, 0x1000, 0x1ffe, 0, RW), Status::Range);
    assert_eq!(map(&mut v, 1, 0x1000, 0x2000, 0, RW), Status::Range);
    assert_eq!(mappings(&v, 1), vec![]);
    // A 64 KiB granule.
    let mut v = dev(EngineConfig {
        page_size_mask: !0xffff,
        ..small_config()
    });
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x1000, 0x1_0fff, 0, RW), Status::Range);
    assert_eq!(map(&mut v, 1, 0x1_0000, 0x1_ffff, 0x2_0000, RW), Status::Ok);
}

#[test]
fn map_overlap_is_inval() {
    let mut v = dev(small_config());
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x2000, 0x3fff, 0, RW), Status::Ok);
    for (s, e) in [
        (0x1000, 0x2fff),
        (0x3000, 0x4fff),
        (0x2000, 0x2fff),
        (0x0, 0xf_ffff),
    ] {
        assert_eq!(map(&mut v, 1, s, e, 0, RW), Status::Inval, "{s:#x}-{e:#x}");
    }
    assert_eq!(map(&mut v, 1, 0x1000, 0x1fff, 0, RW), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x4000, 0x4fff, 0, RW), Status::Ok);
    assert_eq!(mappings(&v, 1).len(), 3);
}

#[test]
fn map_unknown_flag_is_inval() {
    let mut v = dev(small_config());
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    let mut b = Request::Map(virtio_iommu_spec::request::Map {
        domain: 1,
        virt_start: 0x1000,
        virt_end: 0x1fff,
        phys_start: 0,
        flags: MapFlags::READ,
    })
    .encode()
    .as_bytes()
    .to_vec();
    b[32] |= 8;
    assert_eq!(raw_status(&mut v, &b), Status::Inval);
    assert_eq!(mappings(&v, 1), vec![]);
}

#[test]
fn map_unknown_domain_is_noent() {
    let mut v = dev(small_config());
    assert_eq!(map(&mut v, 1, 0x1000, 0x1fff, 0, RW), Status::NoEnt);
}

#[test]
fn map_on_bypass_domain_is_inval() {
    let mut v = dev(small_config());
    assert_eq!(attach_bypass(&mut v, 1, 0), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x1000, 0x1fff, 0, RW), Status::Inval);
}

#[test]
fn map_over_a_reserved_region_is_inval() {
    let cfg = EngineConfig {
        endpoints: vec![eps(
            0..=3,
            vec![resv(0x10_0000, 0x10_ffff), ReservedRegion::x86_msi()],
        )],
        ..small_config()
    };
    let mut v = dev(cfg);
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x10_f000, 0x11_0fff, 0, RW), Status::Inval);
    assert_eq!(
        map(&mut v, 1, 0xfee0_0000, 0xfee0_0fff, 0, RW),
        Status::Inval
    );
    assert_eq!(map(&mut v, 1, 0, u64::MAX, 0, RW), Status::Inval);
    assert_eq!(map(&mut v, 1, 0x11_0000, 0x11_0fff, 0, RW), Status::Ok);
    assert_eq!(mappings(&v, 1).len(), 1);
}

#[test]
fn write_through_a_read_only_mapping_is_refused() {
    let mut v = dev(small_config());
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    assert_eq!(
        map(&mut v, 1, 0x1000, 0x1fff, 0x8000, MapFlags::READ),
        Status::Ok
    );
    assert_eq!(
        map(&mut v, 1, 0x2000, 0x2fff, 0x9000, MapFlags::WRITE),
        Status::Ok
    );
    assert!(v
        .device_dma()
        .translate(0, None, 0x1000, 1, Access::Read)
        .is_ok());
    assert_eq!(
        v.device_dma()
            .translate(0, None, 0x1000, 1, Access::Write)
            .unwrap_err()
            .reason,
        FaultReason::Mapping
    );
    // This device does not allow reads through a write-only mapping either.
    assert!(v
        .device_dma()
        .translate(0, None, 0x2000, 1, Access::Write)
        .is_ok());
    assert_eq!(
        v.device_dma()
            .translate(0, None, 0x2000, 1, Access::Read)
            .unwrap_err()
            .reason,
        FaultReason::Mapping
    );
}

#[test]
fn map_inverted_range_is_inval_and_input_range_is_enforced() {
    let mut v = dev(EngineConfig {
        input_range: (0x1_0000, 0xffff_ffff),
        ..small_config()
    });
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x2_0000, 0x1_ffff, 0, RW), Status::Inval);
    assert_eq!(map(&mut v, 1, 0xf000, 0x1_0fff, 0, RW), Status::Range);
    assert_eq!(
        map(&mut v, 1, 0xffff_f000, 0x1_0000_0fff, 0, RW),
        Status::Range
    );
    assert_eq!(unmap(&mut v, 1, 0, 0xffff), Status::Range);
    assert_eq!(unmap(&mut v, 1, 0x2_0000, 0x1_ffff), Status::Inval);
    assert_eq!(map(&mut v, 1, 0x1_0000, 0xffff_ffff, 0, RW), Status::Inval); // MSI window
    assert_eq!(map(&mut v, 1, 0x1_0000, 0xfedf_ffff, 0, RW), Status::Ok);
}

#[test]
fn map_domain_outside_domain_range_is_range() {
    let mut v = dev(EngineConfig {
        domain_range: (1, 10),
        ..small_config()
    });
    assert_eq!(map(&mut v, 11, 0x1000, 0x1fff, 0, RW), Status::Range);
    assert_eq!(unmap(&mut v, 0, 0x1000, 0x1fff), Status::Range);
}

#[test]
fn map_mmio_needs_the_mmio_feature() {
    let mmio = MapFlags::READ | MapFlags::WRITE | MapFlags::MMIO;
    let mut v = dev(small_config());
    assert!(!v.offered_features().contains(Features::MMIO));
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x1000, 0x1fff, 0, mmio), Status::Inval);
    let mut v = dev(EngineConfig {
        offer_mmio: true,
        ..small_config()
    });
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x1000, 0x1fff, 0, mmio), Status::Ok);
    assert_eq!(mappings(&v, 1), vec![(0x1000, 0x1fff, 0, 7)]);
}

#[test]
fn map_arithmetic_at_the_top_of_the_address_space() {
    let cfg = EngineConfig {
        endpoints: vec![eps(0..=1, vec![])],
        ..small_config()
    };
    let mut v = dev(cfg);
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    // Output past 2^64: S_RANGE.
    assert_eq!(
        map(&mut v, 1, 0x1000, 0x2fff, u64::MAX - 0xfff, RW),
        Status::Range
    );
    assert_eq!(map(&mut v, 1, 0, u64::MAX, 0x1000, RW), Status::Range);
    // The whole 64-bit space, identity (what Linux does without BYPASS_CONFIG).
    assert_eq!(map(&mut v, 1, 0, u64::MAX, 0, RW), Status::Ok);
    assert_eq!(
        v.device_dma()
            .translate(0, None, u64::MAX, 16, Access::Write)
            .unwrap(),
        vhost_device_iommu::engine::Translation {
            gpa: u64::MAX,
            len: 1
        }
    );
    assert_eq!(unmap(&mut v, 1, 0, u64::MAX - 1), Status::Range);
    assert_eq!(unmap(&mut v, 1, 0, u64::MAX), Status::Ok);
    // Last page of the space.
    assert_eq!(
        map(&mut v, 1, u64::MAX - 0xfff, u64::MAX, u64::MAX - 0xfff, RW),
        Status::Ok
    );
    assert_eq!(mappings(&v, 1).len(), 1);
}

// ---- UNMAP ---------------------------------------------------------------------------------

#[test]
fn unmap_reserved_not_zero_is_inval_and_removes_nothing() {
    let mut v = dev(small_config());
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x1000, 0x1fff, 0, RW), Status::Ok);
    let mut b = Request::Unmap(Unmap {
        domain: 1,
        virt_start: 0x1000,
        virt_end: 0x1fff,
    })
    .encode()
    .as_bytes()
    .to_vec();
    b[24] = 1;
    assert_eq!(raw_status(&mut v, &b), Status::Inval);
    assert_eq!(mappings(&v, 1).len(), 1);
}

#[test]
fn unmap_unknown_domain_is_noent() {
    let mut v = dev(small_config());
    assert_eq!(unmap(&mut v, 1, 0, 0xfff), Status::NoEnt);
}

#[test]
fn unmap_on_bypass_domain_is_inval() {
    let mut v = dev(small_config());
    assert_eq!(attach_bypass(&mut v, 1, 0), Status::Ok);
    assert_eq!(unmap(&mut v, 1, 0, 0xfff), Status::Inval);
}

#[test]
fn unmap_split_is_range_and_removes_nothing() {
    let mut v = dev(small_config());
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x1000, 0x1fff, 0, RW), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x2000, 0x3fff, 0, RW), Status::Ok);
    assert_eq!(unmap(&mut v, 1, 0x1000, 0x2fff), Status::Range);
    assert_eq!(unmap(&mut v, 1, 0x3000, 0x3fff), Status::Range);
    assert_eq!(unmap(&mut v, 1, 0x2800, 0x2fff), Status::Range);
    assert_eq!(mappings(&v, 1).len(), 2);
}

#[test]
fn unmap_over_partly_unmapped_space_removes_whole_mappings() {
    let mut v = dev(small_config());
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x1000, 0x1fff, 0, RW), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x5000, 0x5fff, 0, RW), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x9000, 0x9fff, 0, RW), Status::Ok);
    assert_eq!(unmap(&mut v, 1, 0x800, 0x6fff), Status::Ok);
    assert_eq!(mappings(&v, 1), vec![(0x9000, 0x9fff, 0, 3)]);
}

/// The seven UNMAP examples of the specification, in byte units as the spec writes them
/// (1-byte granule, so that (0, 4) is a legal mapping).
#[test]
fn unmap_examples_of_the_specification() {
    let cfg = EngineConfig {
        page_size_mask: !0,
        ..small_config()
    };
    // (mappings, unmap range, status, mappings left)
    type Case = (
        &'static [(u64, u64)],
        (u64, u64),
        Status,
        &'static [(u64, u64)],
    );
    let cases: [Case; 7] = [
        (&[], (0, 4), Status::Ok, &[]),
        (&[(0, 9)], (0, 9), Status::Ok, &[]),
        (&[(0, 4), (5, 9)], (0, 9), Status::Ok, &[]),
        (&[(0, 9)], (0, 4), Status::Range, &[(0, 9)]),
        (&[(0, 4), (5, 9)], (0, 4), Status::Ok, &[(5, 9)]),
        (&[(0, 4)], (0, 9), Status::Ok, &[]),
        (&[(0, 4), (10, 14)], (0, 14), Status::Ok, &[]),
    ];
    for (maps, (us, ue), status, left) in cases {
        let mut v = dev(cfg.clone());
        assert_eq!(attach(&mut v, 1, 0), Status::Ok);
        for &(s, e) in maps {
            assert_eq!(map(&mut v, 1, s, e, 0x1_0000 + s, RW), Status::Ok);
        }
        assert_eq!(
            unmap(&mut v, 1, us, ue),
            status,
            "{maps:?} unmap({us}, {ue})"
        );
        let got: Vec<(u64, u64)> = mappings(&v, 1).iter().map(|m| (m.0, m.1)).collect();
        assert_eq!(got, left, "{maps:?} unmap({us}, {ue})");
    }
}

// ---- PROBE ---------------------------------------------------------------------------------

#[test]
fn probe_writes_resv_mem_and_zero_fills() {
    let cfg = EngineConfig {
        endpoints: vec![eps(
            0..=3,
            vec![resv(0x1000, 0x1fff), ReservedRegion::x86_msi()],
        )],
        ..small_config()
    };
    let mut v = dev(cfg);
    let (n, w) = probe(&mut v, 2, 512);
    assert_eq!(n, 516);
    let mut want = vec![0u8; 516];
    // RESV_MEM RESERVED 0x1000-0x1fff, then MSI 0xfee00000-0xfeefffff.
    want[..24].copy_from_slice(&[
        1, 0, 20, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0xff, 0x1f, 0, 0, 0, 0, 0, 0,
    ]);
    want[24..48].copy_from_slice(&[
        1, 0, 20, 0, 1, 0, 0, 0, 0, 0, 0xe0, 0xfe, 0, 0, 0, 0, 0xff, 0xff, 0xef, 0xfe, 0, 0, 0, 0,
    ]);
    assert_eq!(w, want);
}

#[test]
fn probe_ignores_reserved_bytes() {
    let mut v = dev(small_config());
    let mut b = Request::Probe(virtio_iommu_spec::request::Probe { endpoint: 0 })
        .encode()
        .as_bytes()
        .to_vec();
    b[8..72].fill(0x5a);
    let (n, w) = raw(&mut v, &b, 516);
    assert_eq!(n, 516);
    assert_eq!(w[512], Status::Ok as u8);
    assert_eq!(
        ProbeProperties::new(&w[..512]).collect::<Vec<_>>(),
        vec![Property::ResvMem {
            subtype: 1,
            start: 0xfee0_0000,
            end: 0xfeef_ffff
        }]
    );
}

#[test]
fn probe_unknown_endpoint_is_noent() {
    let mut v = dev(small_config());
    let (n, w) = probe(&mut v, 16, 512);
    assert_eq!(n, 516);
    assert!(w[..512].iter().all(|b| *b == 0));
    assert_eq!(w[512], Status::NoEnt as u8);
}

#[test]
fn probe_without_f_probe_gets_no_reply() {
    let mut v = dev_with(
        small_config(),
        Features::MAP_UNMAP | Features::BYPASS_CONFIG,
    );
    let (n, w) = probe(&mut v, 0, 512);
    assert_eq!(n, 0);
    assert!(w.iter().all(|b| *b == 0));
    assert_eq!(v.stats().requests.probe.no_reply, 1);
}

#[test]
fn probe_area_smaller_than_probe_size_is_inval() {
    let mut v = dev(small_config());
    let (n, w) = probe(&mut v, 0, 511);
    assert_eq!(n, 515);
    assert!(w[..511].iter().all(|b| *b == 0));
    assert_eq!(&w[511..], &[Status::Inval as u8, 0, 0, 0]);
    // Even a tail-only writable part gets a status.
    let (n, w) = probe(&mut v, 0, 0);
    assert_eq!((n, w[0]), (4, Status::Inval as u8));
}

#[test]
fn probe_area_larger_than_probe_size_is_filled_and_zeroed() {
    let mut v = dev(small_config());
    let (n, w) = probe(&mut v, 0, 600);
    assert_eq!(n, 604);
    assert_eq!(w[600], Status::Ok as u8);
    assert_eq!(w[0], 1);
    assert!(w[24..600].iter().all(|b| *b == 0));
}

// ---- any -----------------------------------------------------------------------------------

#[test]
fn unattached_endpoint_without_bypass_cannot_reach_memory() {
    let mut v = dev(small_config());
    let f = v
        .device_dma()
        .translate(5, None, 0x1000, 4, Access::Read)
        .unwrap_err();
    assert_eq!(f.reason, FaultReason::Domain);
    assert_eq!(f.endpoint, 5);
    assert_eq!(f.address, Some(0x1000));
}
