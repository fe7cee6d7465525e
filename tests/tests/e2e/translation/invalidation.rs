//! INVALIDATE pushes and strict completion: the guest's UNMAP / DETACH / ATTACH is returned
//! only once every client serving an affected endpoint acknowledged (or was cut off), other
//! requests and the control socket meanwhile go on (their replies in ring order, behind the
//! held one), and the new state is visible at once.

use std::time::{Duration, Instant};

use super::Tvm;
use crate::daemon::vm::*;
use serde_json::json;
use virtio_iommu_e2e::TranslationClient;
use virtio_iommu_spec::translation::{
    Endpoints, Invalidate, Pasids, TranslateFlags, TranslateStatus,
};
use virtio_iommu_spec::Status;

const R: TranslateFlags = TranslateFlags::READ;

fn inv(seq: u64, ep: u32, pasids: Pasids, first: u64, last: u64) -> Invalidate {
    Invalidate {
        seq,
        first,
        last,
        endpoints: Endpoints::One(ep),
        pasids,
    }
}

/// Domain 1 with endpoints 8 and 9 and one mapping, set up before clients connect.
fn setup(t: &mut Tvm) -> u64 {
    let gpa = memory().alloc_pages(16).unwrap();
    for req in [attach(1, 8), attach(1, 9), map(1, 0x10000, 0x1ffff, gpa)] {
        assert_eq!(t.vm.send(&req), Status::Ok);
    }
    gpa
}

#[test]
fn unmap_completes_only_after_the_ack() {
    let mut t = Tvm::start(&[]);
    setup(&mut t);
    let mut c = t.client(0, 0xffff);
    // A client serving neither endpoint is not asked.
    let mut other = t.client(0x100, 0x1ff);
    assert_eq!(
        c.translate(8, None, 0x10000, 0x1000, R).unwrap().status,
        TranslateStatus::Ok
    );

    let unmap_head = t.post(&chain_of(&unmap(1, 0x10000, 0x1ffff)));
    assert_eq!(
        c.next_invalidate().unwrap(),
        inv(1, 8, Pasids::NoPasid, 0x10000, 0x1ffff)
    );
    assert_eq!(
        c.next_invalidate().unwrap(),
        inv(2, 9, Pasids::NoPasid, 0x10000, 0x1ffff)
    );
    t.vm.rq.expect_no_used(QUIET).unwrap();
    // The new state is in force already.
    assert_eq!(
        c.translate(8, None, 0x10000, 0x1000, R | TranslateFlags::NO_FAULT)
            .unwrap()
            .status,
        TranslateStatus::Fault
    );
    // Other requests are processed (their effect is in force) but complete in ring order,
    // behind the held one.
    let map_head = t.post(&chain_of(&map(1, 0x50000, 0x50fff, 0x50000)));
    t.vm.rq.expect_no_used(QUIET).unwrap();
    assert_eq!(
        c.translate(8, None, 0x50000, 0x1000, R).unwrap().status,
        TranslateStatus::Ok
    );
    assert_eq!(t.tstats()["holding"], json!(1));
    // A partial ack is not enough.
    c.ack(1).unwrap();
    t.vm.rq.expect_no_used(QUIET).unwrap();
    c.ack(2).unwrap();
    let done = t.vm.rq.wait_used(WAIT).unwrap();
    assert_eq!(done.head, unmap_head);
    assert_eq!(reply_status(&done, 4), Status::Ok);
    let done = t.vm.rq.wait_used(WAIT).unwrap();
    assert_eq!(done.head, map_head);
    assert_eq!(reply_status(&done, 4), Status::Ok);
    assert!(!other.closed_within(QUIET).unwrap());
    assert!(other.invalidates.is_empty(), "{:?}", other.invalidates);

    // An UNMAP that removes nothing changes nothing: no INVALIDATE, no hold.
    assert_eq!(t.vm.send(&unmap(1, 0x60000, 0x60fff)), Status::Ok);
    let s = t.tstats();
    assert_eq!(
        (
            &s["invalidates"],
            &s["acks"],
            &s["held"],
            &s["released"],
            &s["holding"]
        ),
        (&json!(2), &json!(2), &json!(1), &json!(1), &json!(0)),
        "{s}"
    );
}

#[test]
fn detach_and_moving_attach_drop_everything_of_the_endpoint() {
    let mut t = Tvm::start(&[]);
    setup(&mut t);
    let mut c = t.client(0, 0xffff);
    let all = |seq, ep| inv(seq, ep, Pasids::All, 0, u64::MAX);

    // ATTACH of endpoint 9 to domain 2 moves it.
    t.post(&chain_of(&attach(2, 9)));
    assert_eq!(c.next_invalidate().unwrap(), all(1, 9));
    t.vm.rq.expect_no_used(QUIET).unwrap();
    c.ack(1).unwrap();
    assert_eq!(
        reply_status(&t.vm.rq.wait_used(WAIT).unwrap(), 4),
        Status::Ok
    );

    // DETACH.
    t.post(&chain_of(&detach(1, 8)));
    assert_eq!(c.next_invalidate().unwrap(), all(2, 8));
    t.vm.rq.expect_no_used(QUIET).unwrap();
    c.ack(2).unwrap();
    assert_eq!(
        reply_status(&t.vm.rq.wait_used(WAIT).unwrap(), 4),
        Status::Ok
    );
    // Endpoint 8 is unattached now, with bypass on: identity.
    let r = c.translate(8, None, 0x10000, 1, R).unwrap();
    let id = r.ranges.as_slice()[0];
    assert_eq!((id.iova, id.last, id.paddr), (0, u64::MAX, 0));
    // A refused request changes nothing and invalidates nothing.
    assert_eq!(t.vm.send(&detach(1, 8)), Status::Inval);
    assert!(c.invalidates.is_empty());
}

#[test]
fn a_silent_client_is_cut_off_and_the_unmap_completes_after_the_bound() {
    let mut t = Tvm::start(&["--translation-ack-timeout-ms", "300"]);
    setup(&mut t);
    let mut good = t.client(0, 0xffff);
    let mut silent = t.client(8, 8);

    let start = Instant::now();
    t.post(&chain_of(&unmap(1, 0x10000, 0x1ffff)));
    for seq in 1..=2 {
        assert_eq!(good.next_invalidate().unwrap().seq, seq);
    }
    good.ack(2).unwrap();
    assert_eq!(
        silent.next_invalidate().unwrap(),
        inv(1, 8, Pasids::NoPasid, 0x10000, 0x1ffff)
    );
    t.vm.rq.expect_no_used(QUIET).unwrap();
    let done = t.vm.rq.wait_used(WAIT).unwrap();
    let took = start.elapsed();
    assert_eq!(reply_status(&done, 4), Status::Ok);
    assert!(
        took >= Duration::from_millis(300),
        "completed after {took:?}"
    );
    assert!(
        silent.closed_within(WAIT).unwrap(),
        "the silent client is closed"
    );
    // The well-behaved client keeps its connection; a new one can connect.
    assert!(!good.closed_within(QUIET).unwrap());
    let mut again = t.client(8, 8);
    assert_eq!(
        again
            .translate(8, None, 0x20000, 1, R | TranslateFlags::NO_FAULT)
            .unwrap()
            .status,
        TranslateStatus::Fault
    );
    let s = t.tstats();
    assert_eq!(
        (&s["cut_off_timeout"], &s["released"]),
        (&json!(1), &json!(1)),
        "{s}"
    );
    assert!(t.vm.daemon.stderr().contains("cut off"));
}

#[test]
fn frontend_disconnect_drops_everything() {
    let mut t = Tvm::start(&[]);
    setup(&mut t);
    let mut c: TranslationClient = t.client(0, 0xffff);
    let Tvm { vm, path: _, _dir } = t;
    let Vm {
        rq,
        eq,
        fe,
        ctl,
        daemon,
    } = vm;
    drop((rq, eq, fe));
    let i = c.next_invalidate().unwrap();
    assert_eq!(
        (i.endpoints, i.pasids, i.first, i.last),
        (Endpoints::All, Pasids::All, 0, u64::MAX)
    );
    c.ack(i.seq).unwrap();
    // The next frontend's guest starts from a reset device.
    let r = c.translate(8, None, 0x10000, 1, R).unwrap();
    let id = r.ranges.as_slice()[0];
    assert_eq!(
        (id.iova, id.last, id.paddr),
        (0, u64::MAX, 0),
        "unattached: identity"
    );
    drop((ctl, daemon));
}

/// A VM pause (GET_VRING_BASE) while an UNMAP is held: the stop waits for the acks and the
/// reply is in the used ring before the base is reported, so the resumed guest gets it.
#[test]
fn a_ring_stop_finishes_held_replies() {
    let mut t = Tvm::start(&[]);
    setup(&mut t);
    let mut c = t.client(0, 0xffff);
    let unmap_head = t.post(&chain_of(&unmap(1, 0x10000, 0x1ffff)));
    for seq in 1..=2 {
        assert_eq!(c.next_invalidate().unwrap().seq, seq);
    }
    t.vm.rq.expect_no_used(QUIET).unwrap();
    let acker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        c.ack(2).unwrap();
        c
    });
    let start = Instant::now();
    let bases = t.vm.fe.stop().unwrap();
    let took = start.elapsed();
    let _c = acker.join().unwrap();
    assert!(took >= Duration::from_millis(250), "stopped after {took:?}");
    assert_eq!(
        bases[0],
        Some(4),
        "three setup requests and the UNMAP taken"
    );
    let done = t.vm.rq.wait_used(QUIET).unwrap();
    assert_eq!(done.head, unmap_head);
    assert_eq!(reply_status(&done, 4), Status::Ok);
    assert_eq!(t.tstats()["holding"], json!(0));

    // Resumed at the reported base, the queue goes on.
    t.vm.fe.start().unwrap();
    assert_eq!(t.vm.send(&map(1, 0x50000, 0x50fff, 0x50000)), Status::Ok);
}

/// The same with a client that never answers: the stop returns within the ack bound (the
/// client is cut off) and the UNMAP's reply is published.
#[test]
fn a_ring_stop_with_a_silent_client_returns_within_the_ack_bound() {
    let mut t = Tvm::start(&["--translation-ack-timeout-ms", "300"]);
    setup(&mut t);
    let mut silent = t.client(8, 8);
    let unmap_head = t.post(&chain_of(&unmap(1, 0x10000, 0x1ffff)));
    assert_eq!(silent.next_invalidate().unwrap().seq, 1);
    let start = Instant::now();
    let bases = t.vm.fe.stop().unwrap();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < WAIT,
        "stopped after {took:?}"
    );
    assert_eq!(bases[0], Some(4));
    let done = t.vm.rq.wait_used(QUIET).unwrap();
    assert_eq!(done.head, unmap_head);
    assert_eq!(reply_status(&done, 4), Status::Ok);
    assert_eq!(t.tstats()["cut_off_timeout"], json!(1));
    t.vm.fe.start().unwrap();
    assert_eq!(t.vm.send(&map(1, 0x50000, 0x50fff, 0x50000)), Status::Ok);
}
