//! Batches (one notification per ring-full, per-request results) and the event queue.

use crate::fake::{Answer, Fake, Iommu};
use virtio_iommu_driver::iova::{IovaAllocator, MappingShadow};
use virtio_iommu_driver::{
    AttachFlags, EndpointInfo, Error, Event, FaultEvent, FaultReason, MapFlags, Mapping,
    PageRequest, Reply, Request, EVENT_QUEUE_SIZE, MAX_REQUESTS_IN_FLIGHT,
};
use virtio_iommu_spec::event::FaultFlags;
use virtio_iommu_spec::request::{Attach, Probe};

fn page(i: u64) -> Mapping {
    Mapping {
        domain: 1,
        iova: 0x10_0000 + i * 0x1000,
        paddr: 0x8000_0000 + i * 0x1000,
        size: 0x1000,
        flags: MapFlags::READ | MapFlags::WRITE,
    }
}

/// The `virt_start` of a MAP request's readable bytes.
fn virt_start(readable: &[u8]) -> u64 {
    u64::from_le_bytes(readable[8..16].try_into().unwrap())
}

#[test]
fn a_thousand_maps_take_one_notification_per_ring_full() {
    let fake = Fake::standard();
    let mut iommu = Iommu::new(fake.transport()).unwrap();
    let maps: Vec<Mapping> = (0..1000).map(page).collect();
    let results = iommu.map_batch(&maps).unwrap();
    assert_eq!(results, vec![Ok(()); 1000]);

    let chunks = 1000usize.div_ceil(MAX_REQUESTS_IN_FLIGHT);
    let s = fake.lock();
    assert_eq!(s.notifies[0] as usize, chunks);
    // Each notification found a full ring's worth (the last one the remainder), never more.
    let mut want = vec![MAX_REQUESTS_IN_FLIGHT; chunks - 1];
    want.push(1000 - MAX_REQUESTS_IN_FLIGHT * (chunks - 1));
    assert_eq!(s.batch_sizes, want);
    assert_eq!(s.seen.len(), 1000);
    for (i, seen) in s.seen.iter().enumerate() {
        assert_eq!(seen.readable[0], 3, "MAP");
        assert_eq!(virt_start(&seen.readable), maps[i].iova);
    }
}

#[test]
fn a_batch_reports_each_request_in_input_order() {
    let fake = Fake::standard();
    let mut iommu = Iommu::new(fake.transport()).unwrap();
    // The device completes each ring-full in reverse and refuses two addresses.
    fake.lock().reverse = true;
    let bad = [page(3).iova, page(40).iova];
    fake.respond(move |r, w| {
        let status = if bad.contains(&virt_start(r)) { 5 } else { 0 };
        Some(Answer::status(status, w))
    });
    let mut maps: Vec<Mapping> = (0..50).map(page).collect();
    maps[7].iova += 0x800; // fails its pre-flight check, never sent
    let results = iommu.map_batch(&maps).unwrap();
    for (i, r) in results.iter().enumerate() {
        let want = match i {
            3 | 40 => Err(Error::Range),
            7 => Err(Error::Unaligned),
            _ => Ok(()),
        };
        assert_eq!(*r, want, "mapping {i}");
    }
    assert_eq!(fake.seen().len(), 49);
}

#[test]
fn a_batch_waits_for_room_left_by_other_requests() {
    let fake = Fake::standard();
    let mut iommu = Iommu::new(fake.transport()).unwrap();
    // Fill the ring with completed but uncollected requests.
    let tokens: Vec<_> = (0..MAX_REQUESTS_IN_FLIGHT)
        .map(|_| {
            iommu
                .submit(&Request::Attach(Attach {
                    domain: 1,
                    endpoint: 2,
                    flags: AttachFlags::empty(),
                }))
                .unwrap()
        })
        .collect();
    let maps: Vec<Mapping> = (0..40).map(page).collect();
    assert_eq!(iommu.map_batch(&maps).unwrap(), vec![Ok(()); 40]);
    // The earlier completions were kept for their owner.
    for t in tokens {
        assert_eq!(iommu.poll(t), Ok(Some(Reply::Done)));
    }
}

#[test]
fn a_generic_batch_carries_probe_replies() {
    let fake = Fake::standard();
    let mut iommu = Iommu::new(fake.transport()).unwrap();
    let reqs = [
        Request::Attach(Attach {
            domain: 1,
            endpoint: 2,
            flags: AttachFlags::empty(),
        }),
        Request::Probe(Probe { endpoint: 2 }),
    ];
    assert_eq!(
        iommu.batch(&reqs).unwrap(),
        vec![Ok(Reply::Done), Ok(Reply::Probe(EndpointInfo::default()))]
    );
    assert_eq!(fake.lock().notifies[0], 1);
}

#[test]
fn a_shadow_replays_through_a_batch() {
    let fake = Fake::standard();
    let mut iommu = Iommu::new(fake.transport()).unwrap();
    let mut iovas = IovaAllocator::from_config(iommu.config());
    iovas.reserve(0, 0xf_ffff);
    let mut shadow = MappingShadow::new(1);
    for size in [0x3000, 0x1000, 0x2000] {
        let iova = iovas.alloc(size).unwrap();
        let m = Mapping {
            domain: 1,
            iova,
            paddr: iova + 0x1_0000_0000,
            size,
            flags: MapFlags::READ,
        };
        iommu.map(&m).unwrap();
        shadow.insert(m).unwrap();
    }
    // The domain is re-created: replay every mapping in one notification.
    let before = fake.lock().notifies[0];
    assert_eq!(iommu.map_batch(&shadow.to_vec()).unwrap(), vec![Ok(()); 3]);
    assert_eq!(fake.lock().notifies[0], before + 1);
    let seen = fake.seen();
    let replayed: Vec<&[u8]> = seen[3..].iter().map(|s| &s.readable[..]).collect();
    let originals: Vec<&[u8]> = {
        let mut v: Vec<&[u8]> = seen[..3].iter().map(|s| &s.readable[..]).collect();
        v.sort_by_key(|r| virt_start(r));
        v
    };
    assert_eq!(replayed, originals);
    assert!(replayed.iter().all(|r| virt_start(r) >= 0x10_0000));
}

// ---- Events -----------------------------------------------------------------------------------

fn legacy_fault() -> Vec<u8> {
    let mut b = vec![2, 0, 0, 0];
    b.extend_from_slice(&0x103u32.to_le_bytes()); // READ | WRITE | ADDRESS
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&0xdead_0000u64.to_le_bytes());
    b
}

fn extended(
    reason: u8,
    flags: u32,
    endpoint: u32,
    pasid: u32,
    address: u64,
    group: u16,
) -> Vec<u8> {
    let mut b = vec![reason, 0, 0, 0];
    b.extend_from_slice(&flags.to_le_bytes());
    b.extend_from_slice(&endpoint.to_le_bytes());
    b.extend_from_slice(&pasid.to_le_bytes());
    b.extend_from_slice(&address.to_le_bytes());
    b.extend_from_slice(&group.to_le_bytes());
    b.resize(48, 0);
    b
}

#[test]
fn legacy_and_extended_events_are_decoded() {
    let fake = Fake::standard();
    let mut iommu = Iommu::new(fake.transport()).unwrap();
    assert_eq!(iommu.poll_event(), Ok(None));

    assert!(fake.inject_event(&legacy_fault(), 24));
    assert_eq!(
        iommu.poll_event(),
        Ok(Some(Event::Fault(FaultEvent {
            reason: FaultReason::Mapping,
            access: FaultFlags::READ | FaultFlags::WRITE,
            endpoint: 3,
            address: Some(0xdead_0000),
            pasid: None,
        })))
    );

    // WRITE | ADDRESS | PASID
    assert!(fake.inject_event(&extended(2, 0x302, 4, 7, 0x5000, 0), 48));
    assert_eq!(
        iommu.poll_event(),
        Ok(Some(Event::Fault(FaultEvent {
            reason: FaultReason::Mapping,
            access: FaultFlags::WRITE,
            endpoint: 4,
            address: Some(0x5000),
            pasid: Some(7),
        })))
    );

    // READ | LAST | PAGE_REQ | ADDRESS | PASID | GROUP_ID
    assert!(fake.inject_event(&extended(2, 0x731, 5, 9, 0x7000, 0x1ff), 48));
    assert_eq!(
        iommu.poll_event(),
        Ok(Some(Event::PageRequest(PageRequest {
            endpoint: 5,
            pasid: Some(9),
            address: 0x7000,
            access: FaultFlags::READ,
            group_id: 0x1ff,
            last: true,
            private_data: None,
        })))
    );
    assert_eq!(iommu.poll_event(), Ok(None));
    assert_eq!(iommu.dropped_events(), 0);
}

#[test]
fn malformed_events_are_dropped_and_their_buffers_reposted() {
    let fake = Fake::standard();
    let mut iommu = Iommu::new(fake.transport()).unwrap();
    let mut reserved_set = legacy_fault();
    reserved_set[1] = 1;
    assert!(fake.inject_event(&reserved_set, 24));
    assert!(fake.inject_event(&legacy_fault(), 30)); // neither 24 nor 48 bytes
    assert!(fake.inject_event(&legacy_fault(), 49)); // longer than the buffer
    assert!(fake.inject_event(&legacy_fault(), 24));
    // Each malformed record is its own typed error; polling on reaches the good one.
    for used_len in [24, 30, 49] {
        assert_eq!(iommu.poll_event(), Err(Error::MalformedEvent { used_len }));
    }
    assert!(matches!(iommu.poll_event(), Ok(Some(Event::Fault(_)))));
    assert_eq!(iommu.dropped_events(), 3);
    assert_eq!(iommu.stats().malformed_events, 3);
    assert_eq!(iommu.poll_event(), Ok(None));
    assert_eq!(usize::from(fake.posted_events()), EVENT_QUEUE_SIZE);
}

#[test]
fn every_event_buffer_is_reposted() {
    let fake = Fake::standard();
    let mut iommu = Iommu::new(fake.transport()).unwrap();
    // Three times the ring: only works if each buffer comes back.
    let ring = u32::try_from(EVENT_QUEUE_SIZE).unwrap();
    for i in 0..3 * ring {
        let bytes = extended(1, 0, i, 0, 0, 0);
        assert!(fake.inject_event(&bytes, 48), "event {i}: no buffer posted");
        assert_eq!(usize::from(fake.posted_events()), EVENT_QUEUE_SIZE - 1);
        match iommu.poll_event() {
            Ok(Some(Event::Fault(f))) => {
                assert_eq!(
                    (f.reason, f.endpoint, f.address),
                    (FaultReason::Domain, i, None)
                );
            }
            other => panic!("event {i}: {other:?}"),
        }
        assert_eq!(usize::from(fake.posted_events()), EVENT_QUEUE_SIZE);
    }
    // A full ring of pending events is drained in order.
    for i in 0..ring {
        assert!(fake.inject_event(&extended(1, 0, 100 + i, 0, 0, 0), 48));
    }
    assert!(!fake.inject_event(&legacy_fault(), 24), "no buffer left");
    for i in 0..ring {
        assert!(matches!(iommu.poll_event(), Ok(Some(Event::Fault(f))) if f.endpoint == 100 + i));
    }
    assert_eq!(usize::from(fake.posted_events()), EVENT_QUEUE_SIZE);
}
