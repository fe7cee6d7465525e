//! The journal against the engine alone: a daemon "killed" (its journal dropped without
//! anything more) resumes in a new engine with the same state.

use std::io::Write;

use virtio_iommu_spec::Request;
use virtio_iommu_testkit::requests::{attach, map, unmap};

use super::*;
use crate::engine::EngineConfig;
use crate::host::emulated::EmulatedHost;

fn engine() -> Engine {
    Engine::new(EngineConfig::default(), Box::new(EmulatedHost::new())).unwrap()
}

/// One request at ring position `pos`, journaled as the queue does it; returns its status.
fn send(e: &mut Engine, j: &mut Journal, pos: u16, r: &Request) -> u8 {
    let readable = r.encode();
    let mut reply = [0u8; 4];
    let used = e.handle_request(readable.as_bytes(), &mut reply);
    j.request(pos, pos % 64, readable.as_bytes(), &reply[..used]);
    j.flush();
    reply[0]
}

/// A device the guest built: features, bypass off, two domains, 100 mappings, one unmapped.
fn build(path: &Path) -> (Engine, Journal) {
    let mut e = engine();
    let mut j = Journal::open(path, &mut e).unwrap();
    e.negotiate(e.offered_features());
    j.features(e.negotiated());
    e.write_config(36, &[0]).unwrap();
    j.config(36, &[0]);
    let mut reqs = vec![attach(1, 8), attach(2, 9)];
    reqs.extend((0..100u64).map(|i| map(1, i << 12, (i << 12) + 0xfff, 0x10_0000 + (i << 12))));
    reqs.push(unmap(1, 0, 0xfff));
    for (pos, r) in reqs.iter().enumerate() {
        assert_eq!(
            send(&mut e, &mut j, u16::try_from(pos).unwrap(), r),
            0,
            "{r:?}"
        );
    }
    (e, j)
}

#[test]
fn a_dropped_journal_resumes_in_a_new_engine() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let (a, j) = build(&path);
    drop(j);
    let mut b = engine();
    let mut jb = Journal::open(&path, &mut b).unwrap();
    assert_eq!(b.dump(), a.dump());
    assert_eq!(b.stats(), a.stats());
    assert_eq!(b.config_space().bypass, 0);
    assert_eq!(b.negotiated(), a.negotiated());
    assert_eq!(jb.marks().next_avail[0], 103);
    // The last answers can be given again once; a different chain at a position is not one.
    assert_eq!(jb.replayed(102, 102 % 64).map(|x| x.status), Some(0));
    assert_eq!(jb.replayed(102, 102 % 64), None);
    assert_eq!(jb.replayed(101, 7), None);
    // The resumed file was rewritten as one snapshot: a third daemon gets the same.
    drop(jb);
    let mut c = engine();
    Journal::open(&path, &mut c).unwrap();
    assert_eq!(c.dump(), a.dump());
}

#[test]
fn a_reset_and_a_ring_start_as_resume_are_journaled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let (mut a, mut j) = build(&path);
    // The frontend resumes the ring at 100: the answers of 100..103 stay replayable.
    j.rings(
        RingMarks {
            next_avail: [100, 0],
            addrs: Some([[1, 2, 3], [4, 5, 6]]),
        },
        true,
    );
    drop(j);
    let mut b = engine();
    let mut jb = Journal::open(&path, &mut b).unwrap();
    assert_eq!(jb.marks().addrs, Some([[1, 2, 3], [4, 5, 6]]));
    assert_eq!(jb.replayed(99, 99 % 64), None, "seen by the guest");
    assert!(jb.replayed(100, 100 % 64).is_some());
    // Killed again before the ring started: the same answers wait for the next resume.
    drop(jb);
    let mut b2 = engine();
    let mut jb = Journal::open(&path, &mut b2).unwrap();
    assert_eq!(b2.dump(), a.dump());
    jb.rings(
        RingMarks {
            next_avail: [101, 0],
            addrs: Some([[1, 2, 3], [4, 5, 6]]),
        },
        true,
    );
    assert_eq!(jb.replayed(100, 100 % 64), None, "before the base");
    assert!(jb.replayed(101, 101 % 64).is_some());
    assert!(jb.replayed(102, 102 % 64).is_some());
    assert_eq!(jb.replayed(103, 103 % 64), None, "never answered");
    // An orderly stop and start (base = where the device was): nothing replays.
    jb.rings(
        RingMarks {
            next_avail: [103, 0],
            addrs: Some([[1, 2, 3], [4, 5, 6]]),
        },
        true,
    );
    assert_eq!(jb.replayed(103, 103 % 64), None);
    // A guest reset empties the device, and the file says so.
    a.reset();
    jb.reset();
    drop(jb);
    let mut c = engine();
    Journal::open(&path, &mut c).unwrap();
    assert_eq!(c.dump(), a.dump());
    assert!(c.dump().domains.is_empty());
}

#[test]
fn a_torn_last_record_is_dropped_and_garbage_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let (a, j) = build(&path);
    drop(j);
    // Half a record at the end: a write the daemon did not finish.
    let mut half = Vec::new();
    Record::Request(
        Answer {
            pos: 103,
            head: 39,
            used: 4,
            status: 0,
        },
        unmap(1, 0x1000, 0x1fff).encode().as_bytes().to_vec(),
    )
    .encode_into(&mut half);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&half[..half.len() / 2]).unwrap();
    drop(f);
    let mut b = engine();
    Journal::open(&path, &mut b).unwrap();
    assert_eq!(b.dump(), a.dump(), "the torn UNMAP never happened");

    // Not a journal, and a snapshot of another configuration: refused with the reason.
    std::fs::write(&path, b"hello").unwrap();
    let err = Journal::open(&path, &mut engine()).unwrap_err().to_string();
    assert!(err.contains("not a virtio-iommu state file"), "{err}");
    std::fs::remove_file(&path).unwrap();
    let (_, j) = build(&path);
    drop(j);
    let cfg = EngineConfig {
        page_size_mask: 0x20_0000,
        ..EngineConfig::default()
    };
    let mut other = Engine::new(cfg, Box::new(EmulatedHost::new())).unwrap();
    let err = Journal::open(&path, &mut other).unwrap_err().to_string();
    assert!(
        err.contains("snapshot was refused") && err.contains("page"),
        "{err}"
    );
}

#[test]
fn records_beyond_the_bound_are_compacted_into_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let (mut e, mut j) = build(&path);
    let mut pos = 103u16;
    let mut compactions = 0;
    // MAP/UNMAP pairs until well past the bound, compacting when asked as the queue does.
    while compactions < 2 {
        for r in [
            map(2, 0x9000_0000, 0x9000_0fff, 0),
            unmap(2, 0x9000_0000, 0x9000_0fff),
        ] {
            assert_eq!(send(&mut e, &mut j, pos, &r), 0);
            pos = pos.wrapping_add(1);
        }
        if j.wants_compaction() {
            j.compact(&e);
            compactions += 1;
        }
    }
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len < COMPACT_AFTER / 2, "{len} bytes after compaction");
    assert_eq!(send(&mut e, &mut j, pos, &map(2, 0, 0xfff, 0)), 0);
    drop(j);
    let mut b = engine();
    let mut jb = Journal::open(&path, &mut b).unwrap();
    assert_eq!(b.dump(), e.dump());
    assert!(
        jb.replayed(pos, pos % 64).is_some(),
        "the last answer is there"
    );
}
