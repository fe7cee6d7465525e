//! A device that misbehaves: it never answers, names descriptors it was not given, runs its
//! used index ahead, reports impossible lengths, config values and PROBE properties, does not
//! keep the bypass byte, and floods the driver with anomalies. Each is a typed error, the
//! driver stays usable where the device lets it, and the warnings stay bounded.

use crate::fake::{config, standard_features, Answer, Fake, Iommu, B};
use crate::logs::warnings_of;
use virtio_drivers::transport::DeviceStatus;
use virtio_iommu_driver::sva::{PageRequestGroups, MAX_PENDING_GROUPS};
use virtio_iommu_driver::{
    AttachFlags, DriverOptions, DriverStats, Error, Event, Features, PageRequest, PageRespCode,
    Reply, Request, EXTENSION_FEATURES, MAX_REQUESTS_IN_FLIGHT,
};
use virtio_iommu_spec::event::FaultFlags;
use virtio_iommu_spec::request::Detach;
use virtio_iommu_spec::{EVENT_QUEUE, REQUEST_QUEUE};

/// Polls before a blocking call gives up in these tests.
const SPINS: u64 = 1000;
/// The request queue's index in the fake.
const RQ: usize = 0;
/// Writable size of a request without properties: its tail.
const TAIL: usize = 4;
/// Writable size of a PROBE: the 512-byte properties area of `default_config`, then the tail.
const PROBE_W: usize = 512 + TAIL;

fn driver(fake: &Fake) -> Iommu {
    Iommu::new_with(fake.transport(), DriverOptions::bounded(SPINS)).unwrap()
}

fn detach() -> Request {
    Request::Detach(Detach {
        domain: 1,
        endpoint: 1,
    })
}

/// A 24-byte legacy DOMAIN fault of endpoint 3.
fn fault() -> Vec<u8> {
    B::default().u8(2).zeros(3).u32(0x3).u32(3).u32(0).u64(0).0
}

#[test]
fn the_default_options_bound_every_wait() {
    assert_eq!(
        DriverOptions::default(),
        DriverOptions {
            extensions: Features::empty(),
            max_spins: Some(DriverOptions::DEFAULT_MAX_SPINS),
        }
    );
    assert_eq!(DriverOptions::unbounded().max_spins, None);
    assert_eq!(
        DriverOptions::bounded(5).with_extensions(EXTENSION_FEATURES),
        DriverOptions {
            extensions: EXTENSION_FEATURES,
            max_spins: Some(5),
        }
    );
    let fake = Fake::standard();
    let iommu = Iommu::new(fake.transport()).unwrap();
    assert_eq!(iommu.max_spins(), Some(DriverOptions::DEFAULT_MAX_SPINS));
    drop(iommu);
    let iommu = Iommu::new_with(fake.transport(), DriverOptions::unbounded()).unwrap();
    assert_eq!(iommu.max_spins(), None);
}

#[test]
fn a_timed_out_request_keeps_its_buffers_and_its_late_reply_is_recognised() {
    let fake = Fake::standard();
    let mut iommu = driver(&fake);
    fake.respond(|_, _| None);
    assert_eq!(
        iommu.attach(1, 1, AttachFlags::empty()),
        Err(Error::Timeout)
    );
    assert_eq!(
        iommu.stats(),
        DriverStats {
            timeouts: 1,
            abandoned_in_flight: 1,
            ..DriverStats::default()
        }
    );
    // The device still holds the first request's two descriptors: only 31 more fit.
    let held: Vec<_> = (1..MAX_REQUESTS_IN_FLIGHT)
        .map(|_| iommu.submit(&detach()).unwrap())
        .collect();
    assert!(!iommu.has_room());
    // Waiting for room is bounded too.
    assert_eq!(iommu.detach(1, 1), Err(Error::Timeout));
    assert_eq!(iommu.stats().timeouts, 2);
    // The device returns everything it held with S_OK ...
    fake.release_held();
    for t in held {
        assert_eq!(iommu.poll(t), Ok(Some(Reply::Done)));
    }
    let s = iommu.stats();
    assert_eq!((s.late_completions, s.abandoned_in_flight), (1, 0));
    // ... and a later request gets its own status, not the late S_OK.
    fake.respond(|_, w| Some(Answer::status(6, w)));
    assert_eq!(iommu.detach(1, 1), Err(Error::NoEnt));
}

#[test]
fn a_late_reply_arriving_before_another_request_s_is_not_given_to_it() {
    let fake = Fake::standard();
    let mut iommu = driver(&fake);
    fake.respond(|_, _| None);
    assert_eq!(iommu.detach(1, 1), Err(Error::Timeout));
    // The late S_OK lands in the used ring first, then the next request's S_NOENT.
    fake.release_held();
    fake.respond(|_, w| Some(Answer::status(6, w)));
    assert_eq!(iommu.detach(1, 1), Err(Error::NoEnt));
    assert_eq!(iommu.stats().late_completions, 1);
    fake.respond(|_, w| Some(Answer::ok(w)));
    assert_eq!(iommu.detach(1, 1), Ok(()));
}

#[test]
fn wait_times_out_and_spends_the_token() {
    let fake = Fake::standard();
    let mut iommu = driver(&fake);
    fake.respond(|_, _| None);
    let t = iommu.submit(&detach()).unwrap();
    assert_eq!(iommu.poll(t), Ok(None));
    assert_eq!(iommu.wait(t), Err(Error::Timeout));
    assert_eq!(iommu.poll(t), Err(Error::UnknownToken));
    fake.release_held();
    assert_eq!(iommu.poll(t), Err(Error::UnknownToken));
    assert_eq!(iommu.stats().late_completions, 1);
}

#[test]
fn a_used_id_out_of_range_blocks_the_request_queue_until_the_device_rewrites_it() {
    let fake = Fake::standard();
    let mut iommu = driver(&fake);
    fake.respond(|_, _| None);
    let t = iommu.submit(&detach()).unwrap(); // head 0, held by the device
    fake.push_used(RQ, 70, 0);
    fake.respond(|_, w| Some(Answer::ok(w)));
    let bad = Error::BadUsedId {
        queue: REQUEST_QUEUE,
        id: 70,
    };
    // Blocking calls fail at once (no waiting on a broken ring), non-blocking ones too; the
    // replies to the blocking ones wait behind the bad entry.
    assert_eq!(iommu.detach(1, 1), Err(bad));
    assert_eq!(iommu.poll(t), Err(bad));
    assert_eq!(iommu.poll(t), Err(bad));
    assert_eq!(iommu.detach(1, 1), Err(bad));
    let s = iommu.stats();
    assert_eq!((s.bad_used_ids, s.abandoned_in_flight), (4, 2));
    // The event queue is not affected.
    assert!(fake.inject_event(&fault(), 24));
    assert!(matches!(iommu.poll_event(), Ok(Some(Event::Fault(f))) if f.endpoint == 3));
    // The device rewrites the entry to name the request it held: that one completes, the
    // replies behind it are recognised as late, and the queue works again.
    fake.set_used_elem(RQ, 0, 0, 4);
    assert_eq!(iommu.poll(t), Ok(Some(Reply::Done)));
    let s = iommu.stats();
    assert_eq!((s.late_completions, s.abandoned_in_flight), (2, 0));
    assert_eq!(iommu.detach(1, 1), Ok(()));
}

#[test]
fn a_used_id_inside_a_chain_or_already_returned_is_refused() {
    let fake = Fake::standard();
    let mut iommu = driver(&fake);
    fake.respond(|_, _| None);
    let t = iommu.submit(&detach()).unwrap(); // descriptors 0 (head) and 1
    fake.push_used(RQ, 1, 4);
    let bad = Err(Error::BadUsedId {
        queue: REQUEST_QUEUE,
        id: 1,
    });
    assert_eq!(iommu.poll(t), bad);
    // The token survives a failed poll; the corrected entry completes it.
    fake.set_used_elem(RQ, 0, 0, 4);
    assert_eq!(iommu.poll(t), Ok(Some(Reply::Done)));
    // The same head returned twice: the second entry names nothing in flight.
    fake.push_used(RQ, 0, 4);
    assert_eq!(
        iommu.poll(t),
        Err(Error::BadUsedId {
            queue: REQUEST_QUEUE,
            id: 0
        })
    );
}

#[test]
fn a_bad_used_id_on_the_event_queue_is_reported_there() {
    let fake = Fake::standard();
    let mut iommu = driver(&fake);
    fake.push_used(1, 40, 24);
    let bad = Err(Error::BadUsedId {
        queue: EVENT_QUEUE,
        id: 40,
    });
    assert_eq!(iommu.poll_event(), bad);
    assert_eq!(iommu.poll_event(), bad);
    // Requests still work.
    assert_eq!(iommu.detach(1, 1), Ok(()));
    assert_eq!(iommu.stats().bad_used_ids, 2);
}

#[test]
fn a_used_index_run_ahead_hands_out_stale_entries_as_errors_only() {
    let fake = Fake::standard();
    let mut iommu = driver(&fake);
    // 100 entries the device never wrote (zeroed: id 0, length 0). Each request the driver
    // sends takes head 0, and the stale entry's length 0 is refused rather than read as a
    // reply.
    let idx = fake.used_idx(RQ);
    fake.set_used_idx(RQ, idx.wrapping_add(100));
    for _ in 0..3 {
        assert_eq!(iommu.detach(1, 1), Err(Error::NoReply));
    }
}

#[test]
fn used_lengths_other_than_the_writable_size_are_refused() {
    let fake = Fake::standard();
    let mut iommu = driver(&fake);
    for (used_len, err) in [
        (
            1000,
            Error::UsedLengthMismatch {
                expected: TAIL,
                got: 1000,
            },
        ),
        (
            u32::MAX,
            Error::UsedLengthMismatch {
                expected: TAIL,
                got: u32::MAX,
            },
        ),
        (
            3,
            Error::UsedLengthMismatch {
                expected: TAIL,
                got: 3,
            },
        ),
        (0, Error::NoReply),
    ] {
        fake.respond(move |_, w| {
            Some(Answer {
                used_len,
                ..Answer::ok(w)
            })
        });
        assert_eq!(iommu.detach(1, 1), Err(err));
    }
    fake.respond(|_, w| Some(Answer::ok(w)));
    assert_eq!(iommu.detach(1, 1), Ok(()));
}

fn refused(fake: &Fake) -> Error {
    let err = Iommu::new(fake.transport()).unwrap_err();
    assert!(fake.lock().status.contains(DeviceStatus::FAILED));
    err
}

#[test]
fn inverted_config_ranges_refuse_the_device() {
    let fake = Fake::new(
        standard_features(),
        config(!0xfff, (0x2000, 0x1fff), (1, 9), 512, 1),
    );
    assert_eq!(
        refused(&fake),
        Error::BadInputRange {
            start: 0x2000,
            last: 0x1fff
        }
    );
    let fake = Fake::new(
        standard_features(),
        config(!0xfff, (0, u64::MAX), (9, 8), 512, 1),
    );
    assert_eq!(refused(&fake), Error::BadDomainRange { start: 9, last: 8 });
}

#[test]
fn read_config_refuses_impossible_values_and_keeps_the_snapshot() {
    let fake = Fake::standard();
    let mut iommu = driver(&fake);
    let before = *iommu.config();
    for (bytes, err) in [
        (
            config(0, (0, (1 << 48) - 1), (1, 1023), 512, 1),
            Error::ZeroPageSizeMask,
        ),
        (
            config(!0xfff, (1 << 20, 0), (1, 1023), 512, 1),
            Error::BadInputRange {
                start: 1 << 20,
                last: 0,
            },
        ),
        (
            config(!0xfff, (0, (1 << 48) - 1), (7, 6), 512, 1),
            Error::BadDomainRange { start: 7, last: 6 },
        ),
    ] {
        fake.lock().config = bytes;
        assert_eq!(iommu.read_config(), Err(err));
        assert_eq!(*iommu.config(), before);
    }
    // A probe_size past the driver's limit is kept, and PROBE is refused before sending.
    fake.lock().config = config(!0xfff, (0, (1 << 48) - 1), (1, 1023), u32::MAX, 1);
    assert_eq!(iommu.read_config().map(|c| c.probe_size), Ok(u32::MAX));
    let sent = fake.seen().len();
    assert_eq!(iommu.probe(1), Err(Error::ProbeTooLarge(u32::MAX)));
    assert_eq!(fake.seen().len(), sent);
    // Bits 1-7 of the bypass byte mean nothing.
    fake.lock().config = config(!0xfff, (0, (1 << 48) - 1), (1, 1023), 512, 0xfe);
    assert_eq!(iommu.read_config().map(|c| c.bypass), Ok(Some(false)));
    assert_eq!(iommu.detach(1, 1), Ok(()));
}

#[test]
fn a_bypass_byte_the_device_does_not_keep_is_an_error() {
    let fake = Fake::standard();
    let mut iommu = driver(&fake);
    fake.lock().ignore_config_writes = true;
    assert_eq!(
        iommu.set_bypass(false),
        Err(Error::BypassNotKept { wanted: false })
    );
    // The config says what the device shows.
    assert_eq!(iommu.config().bypass, Some(true));
    assert_eq!(iommu.set_bypass(true), Ok(()));
    fake.lock().ignore_config_writes = false;
    assert_eq!(iommu.set_bypass(false), Ok(()));
    assert_eq!(iommu.config().bypass, Some(false));
}

/// A RESV_MEM property.
fn resv(b: B, start: u64, end: u64) -> B {
    b.u16(1).u16(20).u8(0).zeros(3).u64(start).u64(end)
}

/// A PROBE answer whose properties area starts with `props`.
fn probe_answer(props: Vec<u8>) -> impl FnMut(&[u8], usize) -> Option<Answer> + Send {
    move |_, w| {
        let mut a = Answer::ok(w);
        a.data[..props.len()].copy_from_slice(&props);
        Some(a)
    }
}

#[test]
fn malformed_probe_properties_are_refused() {
    let fake = Fake::standard();
    let mut iommu = driver(&fake);
    let area = PROBE_W - TAIL;
    let cases: [(Vec<u8>, u32); 6] = [
        // Running past the area.
        (B::default().u16(1).u16(600).0, 0),
        (
            resv(B::default(), 0, 0xfff)
                .u16(1)
                .u16(u16::try_from(area - 24 - 4 + 1).unwrap())
                .0,
            24,
        ),
        // A RESV_MEM too short for its type.
        (B::default().u16(1).u16(4).zeros(4).0, 0),
        // A reserved region ending below its start, after a good one.
        (resv(resv(B::default(), 0, 0xfff), 0x2000, 0x1fff).0, 24),
        // A zero page-size mask.
        (B::default().u16(2).u16(12).zeros(12).0, 0),
        // An input range ending below its start.
        (B::default().u16(3).u16(20).zeros(4).u64(2).u64(1).0, 0),
    ];
    for (n, (props, offset)) in cases.into_iter().enumerate() {
        fake.respond(probe_answer(props));
        assert_eq!(
            iommu.probe(1),
            Err(Error::MalformedProbe { offset }),
            "case {n}"
        );
    }
    assert_eq!(iommu.stats().malformed_probes, 6);
    // Unknown types and types with reserved bits are skipped, as the specification asks; a
    // property ending exactly at the end of the area is fine.
    let last_len = u16::try_from(area - 4 - 8 - 24 - 4).unwrap();
    let props = resv(
        B::default().u16(0x99).u16(4).u32(7).u16(0x1001).u16(0),
        0x8000,
        0x8fff,
    )
    .u16(0x77)
    .u16(last_len)
    .0;
    fake.respond(probe_answer(props));
    let info = iommu.probe(1).unwrap();
    assert_eq!(info.reserved_regions.len(), 1);
    assert_eq!(
        (
            info.reserved_regions[0].start,
            info.reserved_regions[0].last
        ),
        (0x8000, 0x8fff)
    );
}

#[test]
fn device_triggered_warnings_are_rate_limited() {
    let fake = Fake::standard();
    let mut iommu = driver(&fake);
    // 1000 malformed event records: each one a typed error, 14 lines in all (the first 8,
    // then at 16, 32, ..., 512).
    let lines = warnings_of(|| {
        for _ in 0..1000 {
            assert!(fake.inject_event(&fault(), 30));
            assert_eq!(
                iommu.poll_event(),
                Err(Error::MalformedEvent { used_len: 30 })
            );
        }
    });
    assert_eq!(lines.len(), 14, "{lines:#?}");
    assert!(
        lines[8].ends_with("(7 similar lines suppressed)"),
        "{}",
        lines[8]
    );
    assert!(lines[13].ends_with("(255 similar lines suppressed)"));
    let s = iommu.stats();
    assert_eq!((s.malformed_events, s.suppressed_warnings), (1000, 986));
    // A stuck used entry met by 1000 requests: as many errors, 14 more lines.
    fake.push_used(RQ, 99, 0);
    let lines = warnings_of(|| {
        for _ in 0..1000 {
            assert_eq!(
                iommu.detach(1, 1),
                Err(Error::BadUsedId {
                    queue: REQUEST_QUEUE,
                    id: 99
                })
            );
        }
    });
    assert_eq!(lines.len(), 14, "{lines:#?}");
    assert_eq!(iommu.stats().suppressed_warnings, 2 * 986);
}

#[test]
fn page_request_group_warnings_are_rate_limited() {
    let mut groups = PageRequestGroups::new();
    let req = |group_id: u16, endpoint: u32| PageRequest {
        endpoint,
        pasid: None,
        address: 0x1000,
        access: FaultFlags::READ,
        group_id,
        last: false,
        private_data: None,
    };
    let max = u16::try_from(MAX_PENDING_GROUPS).unwrap();
    let lines = warnings_of(|| {
        for g in 0..max + 1000 {
            assert_eq!(groups.record(&req(g, 1), PageRespCode::Success), None);
        }
    });
    assert_eq!(groups.pending(), MAX_PENDING_GROUPS);
    assert_eq!(lines.len(), 14, "{lines:#?}");
    assert_eq!(groups.suppressed_warnings(), 986);
}
