//! Saved on one engine, loaded on another: the same device, down to the bytes of a second
//! save; the event backlog and the outstanding page request carry over and behave as they
//! would have on the source.

use std::time::{Duration, Instant};

use super::rich::{assert_same_device, build, config, destination, VA_PA};
use crate::sva::guest::page_resp;
use vhost_device_iommu::engine::SavedState;
use virtio_iommu_spec::ext::PageRespCode;
use virtio_iommu_spec::{Event, Status};

#[test]
fn a_loaded_state_is_the_same_device() {
    let now = Instant::now();
    let mut a = build(now);
    let bytes = a.v.save_state(now);
    let mut b = destination(config(), &a.g);
    b.load_state(&bytes, now).expect("load");
    let s = b.saved_state(now);
    assert_eq!(s.domains.len(), 4);
    assert_eq!(s.tables.len(), 2);
    assert_eq!(s.groups.len(), 1);
    assert_eq!(s.stopped_endpoints, vec![1]);
    assert_eq!(s.events.len(), 2);
    assert!(s.bypass, "bypass as the source's driver wrote it");
    assert_same_device(&mut a.v, &mut b, now);
    // The PASID table translates to the page the guest mapped.
    let t = b
        .device_dma()
        .translate(
            0,
            Some(1),
            super::rich::VA,
            8,
            vhost_device_iommu::host::Access::Write,
        )
        .unwrap();
    assert_eq!(t.gpa, VA_PA);
}

#[test]
fn events_and_page_requests_carry_over() {
    let now = Instant::now();
    let mut a = build(now);
    let mut b = destination(config(), &a.g);
    b.load_state(&a.v.save_state(now), now).unwrap();
    // The backlog comes out in the same order with the same bytes: the fault, then the page
    // request.
    for _ in 0..2 {
        let (ea, eb) = (a.v.pop_event(48), b.pop_event(48));
        assert_eq!(ea, eb);
    }
    assert_eq!(b.pop_event(48), None);
    // The guest answers the page request on the destination: accepted and counted.
    let before = b.stats().page_requests;
    assert_eq!(
        page_resp(&mut b, 0, Some(1), a.group, PageRespCode::Success),
        Status::Ok
    );
    let after = b.stats().page_requests;
    assert_eq!(after.success, before.success + 1);
    assert_eq!(after.outstanding, 0);
    // A second answer is stale, as on the source.
    assert_eq!(
        page_resp(&mut b, 0, Some(1), a.group, PageRespCode::Success),
        Status::Inval
    );
}

#[test]
fn restored_groups_time_out_with_the_time_they_had_left() {
    let t0 = Instant::now();
    let a = build(t0);
    // Saved 400 ms into the 1 s timeout, loaded "later": 600 ms are left from the load.
    let saved_at = t0 + Duration::from_millis(400);
    let bytes = a.v.save_state(saved_at);
    let s = SavedState::decode(&bytes).unwrap();
    assert_eq!(s.groups[0].remaining, Duration::from_millis(600));
    let loaded_at = t0 + Duration::from_secs(60);
    let mut b = destination(config(), &a.g);
    b.load_state(&bytes, loaded_at).unwrap();
    assert_eq!(
        b.expire_page_requests(loaded_at + Duration::from_millis(599)),
        0
    );
    assert_eq!(
        b.expire_page_requests(loaded_at + Duration::from_millis(600)),
        1
    );
    let p = b.stats().page_requests;
    assert_eq!((p.timed_out, p.outstanding), (1, 0));
    // Its queued record was withdrawn: only the fault is left.
    let e = b.pop_event(48).unwrap();
    assert!(matches!(Event::parse(e.as_bytes()), Ok(Event::Fault(_))));
    assert_eq!(b.pop_event(48), None);
}

#[test]
fn decode_then_encode_gives_the_same_bytes() {
    let now = Instant::now();
    let a = build(now);
    let bytes = a.v.save_state(now);
    let s = SavedState::decode(&bytes).unwrap();
    assert_eq!(s, a.v.saved_state(now));
    assert_eq!(s.encode(), bytes);
}

#[test]
fn an_empty_device_round_trips() {
    let now = Instant::now();
    let g = crate::sva::guest::Guest::new();
    let a = destination(config(), &g);
    let mut b = destination(config(), &g);
    b.load_state(&a.save_state(now), now).unwrap();
    assert_eq!(a.save_state(now), b.save_state(now));
    assert!(b.dump().domains.is_empty());
}

#[test]
fn loading_replaces_what_the_destination_had() {
    let now = Instant::now();
    let a = build(now);
    let mut b = destination(config(), &a.g);
    b.negotiate(b.offered_features());
    assert_eq!(crate::common::attach(&mut b, 77, 20), Status::Ok);
    assert_eq!(
        crate::common::map(&mut b, 77, 0, 0xfff, 0, super::rich::RW),
        Status::Ok
    );
    b.load_state(&a.v.save_state(now), now).unwrap();
    assert!(b.dump().domains.iter().all(|d| d.id != 77));
    assert_eq!(b.domain_of(20), None);
    assert_eq!(a.v.save_state(now), b.save_state(now));
}
