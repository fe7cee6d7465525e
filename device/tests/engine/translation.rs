//! What the translation service asks of the engine: the invalidation records of every change
//! (spec/TRANSLATION.md §4.1) and DeviceTranslate's answers, without sockets.

use std::time::Instant;

use crate::common::*;
use crate::sva::guest::{self, attach_table, invalidate, vtd_table, ALL_CACHES};
use vhost_device_iommu::engine::{
    DmaAttrs, Engine, InvalEndpoints, Invalidation, TranslateAccess, TranslateOutcome,
};
use virtio_iommu_spec::event::{FaultFlags, FaultReason};
use virtio_iommu_spec::ext::{InvalScope, VtdFlags};
use virtio_iommu_spec::request::MapFlags;
use virtio_iommu_spec::translation::{Pasids, TranslatedRange};
use virtio_iommu_spec::Status;

fn some(eps: &[u32], pasids: Pasids, first: u64, last: u64) -> Invalidation {
    Invalidation {
        endpoints: InvalEndpoints::Some(eps.to_vec()),
        pasids,
        first,
        last,
    }
}

fn tracked(cfg: vhost_device_iommu::engine::EngineConfig) -> Engine {
    let mut v = dev(cfg);
    v.track_invalidations(true);
    v
}

#[test]
fn every_change_is_recorded_and_nothing_else() {
    let mut v = dev(small_config());
    // Off by default.
    assert_eq!(attach(&mut v, 1, 1), Status::Ok);
    assert!(v.take_invalidations().is_empty());
    v.track_invalidations(true);

    // ATTACH from unattached, and a moving ATTACH: everything of the endpoint. Re-attaching
    // to the same domain changes nothing.
    assert_eq!(attach(&mut v, 1, 2), Status::Ok);
    assert_eq!(v.take_invalidations(), [Invalidation::endpoint(2)]);
    assert_eq!(attach(&mut v, 1, 2), Status::Ok);
    assert!(v.take_invalidations().is_empty());
    assert_eq!(attach(&mut v, 3, 1), Status::Ok);
    assert_eq!(v.take_invalidations(), [Invalidation::endpoint(1)]);
    assert_eq!(attach(&mut v, 3, 2), Status::Ok);
    v.take_invalidations();

    // MAP never; UNMAP of something: the domain's endpoints, no PASID, the range; UNMAP of
    // nothing, or refused: nothing.
    assert_eq!(map(&mut v, 3, 0x1000, 0x1fff, 0x8000, RW), Status::Ok);
    assert!(v.take_invalidations().is_empty());
    assert_eq!(unmap(&mut v, 3, 0x5000, 0x5fff), Status::Ok);
    assert_eq!(unmap(&mut v, 3, 0x1000, 0x17ff), Status::Range);
    assert!(v.take_invalidations().is_empty());
    assert_eq!(unmap(&mut v, 3, 0, 0xffff), Status::Ok);
    assert_eq!(
        v.take_invalidations(),
        [some(&[1, 2], Pasids::NoPasid, 0, 0xffff)]
    );

    // DETACH; a refused DETACH changes nothing.
    assert_eq!(detach(&mut v, 3, 2), Status::Ok);
    assert_eq!(v.take_invalidations(), [Invalidation::endpoint(2)]);
    assert_eq!(detach(&mut v, 3, 2), Status::Inval);
    assert!(v.take_invalidations().is_empty());

    // bypass changes (BYPASS_CONFIG negotiated) and resets: everything.
    v.write_config(36, &[1]).unwrap();
    assert_eq!(v.take_invalidations(), [Invalidation::everything()]);
    v.write_config(36, &[1]).unwrap();
    assert!(v.take_invalidations().is_empty(), "no change, no record");
    v.reset();
    assert_eq!(v.take_invalidations(), [Invalidation::everything()]);
}

#[test]
fn tables_and_guest_invalidates_are_recorded() {
    let (mut v, _g) = guest::device(guest::config());
    v.track_invalidations(true);
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    assert_eq!(attach(&mut v, 1, 1), Status::Ok);
    assert_eq!(
        map(&mut v, 1, 0x10_0000, 0x10_ffff, 0x10_0000, RW),
        Status::Ok
    );
    v.take_invalidations();
    // A domain without tables: INVALIDATE concerns no client.
    assert_eq!(
        invalidate(&mut v, 1, ALL_CACHES, InvalScope::Domain),
        Status::Ok
    );
    assert!(v.take_invalidations().is_empty());
    // ATTACH_TABLE of a VT-d PASID table: that PASID.
    let t = vtd_table(5, 48, 0x1000, VtdFlags::empty());
    assert_eq!(attach_table(&mut v, 1, 0, t), Status::Ok);
    assert_eq!(
        v.take_invalidations(),
        [Invalidation {
            pasids: Pasids::One(5),
            ..Invalidation::endpoint(0)
        }]
    );
    // Guest INVALIDATE: the endpoints with tables, the scope's PASIDs and range.
    let range = InvalScope::Range {
        pasid: Some(5),
        start: 0x4000,
        nr_pages: 2,
        granule: 12,
    };
    assert_eq!(invalidate(&mut v, 1, ALL_CACHES, range), Status::Ok);
    assert_eq!(
        v.take_invalidations(),
        [some(&[0], Pasids::One(5), 0x4000, 0x5fff)]
    );
    assert_eq!(
        invalidate(&mut v, 1, ALL_CACHES, InvalScope::Pasid(5)),
        Status::Ok
    );
    assert_eq!(
        v.take_invalidations(),
        [some(&[0], Pasids::One(5), 0, u64::MAX)]
    );
    // UNMAP of stage 2 under a table: everything of that endpoint (its PASID spaces' output
    // went through the range), the range for the other.
    assert_eq!(unmap(&mut v, 1, 0x10_0000, 0x10_ffff), Status::Ok);
    assert_eq!(
        v.take_invalidations(),
        [
            some(&[1], Pasids::NoPasid, 0x10_0000, 0x10_ffff),
            Invalidation::endpoint(0)
        ]
    );
}

fn access(endpoint: u32, iova: u64, last: u64, write: bool) -> TranslateAccess {
    TranslateAccess {
        endpoint,
        pasid: None,
        iova,
        last,
        read: !write,
        write,
        attrs: DmaAttrs::default(),
        no_fault: false,
    }
}

fn ranges(o: TranslateOutcome) -> Vec<TranslatedRange> {
    match o {
        TranslateOutcome::Translated(r) => r.as_slice().to_vec(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn translations_come_from_the_engine_state() {
    let mut v = tracked(small_config());
    assert_eq!(attach(&mut v, 1, 3), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x1000, 0x1fff, 0xa000, RW), Status::Ok);
    assert_eq!(
        map(&mut v, 1, 0x2000, 0x2fff, 0xc000, MapFlags::READ),
        Status::Ok
    );
    assert_eq!(v.take_invalidations(), [Invalidation::endpoint(3)]);
    let now = Instant::now();
    let mut t = v.device_translate();
    // Whole mappings, contiguous; the second stops where the permission does.
    let r = ranges(t.start(access(3, 0x1800, 0x2800, false), now));
    assert_eq!(
        r,
        [
            TranslatedRange {
                iova: 0x1000,
                last: 0x1fff,
                paddr: 0xa000,
                perm: RW
            },
            TranslatedRange {
                iova: 0x2000,
                last: 0x2fff,
                paddr: 0xc000,
                perm: MapFlags::READ
            }
        ]
    );
    assert_eq!(
        ranges(t.start(access(3, 0x1800, 0x2800, true), now)).len(),
        1
    );
    // A fault at the first byte: MAPPING there; a fault past it only shortens the answer.
    match t.start(access(3, 0x2000, 0x2000, true), now) {
        TranslateOutcome::Fault(f) => {
            assert_eq!(
                (f.reason, f.access, f.address),
                (FaultReason::Mapping, FaultFlags::WRITE, Some(0x2000))
            );
        }
        other => panic!("{other:?}"),
    }
    // Unattached with bypass off: DOMAIN; outside the endpoints: unsupported.
    assert!(matches!(
        t.start(access(4, 0, 0, false), now),
        TranslateOutcome::Fault(f) if f.reason == FaultReason::Domain
    ));
    assert_eq!(
        t.start(access(99, 0, 0, false), now),
        TranslateOutcome::Unsupported
    );
    // Without PASID nothing parks, and translating records nothing.
    assert_eq!(t.parked(), 0);
    assert!(v.take_invalidations().is_empty());
    // Two faults were queued for the guest (DOMAIN and MAPPING), none for the unsupported one.
    assert_eq!(v.pending_events(), 2);
    let mut t = v.device_translate();
    let quiet = TranslateAccess {
        no_fault: true,
        ..access(3, 0x9000, 0x9000, false)
    };
    assert!(matches!(t.start(quiet, now), TranslateOutcome::Fault(_)));
    assert_eq!(v.pending_events(), 2, "NO_FAULT queues nothing");
}
