//! The cut-off of a client that stops reading (spec/TRANSLATION.md §5): once 1024 messages wait
//! for it the daemon closes its connection, the guest's UNMAP waiting for its ack completes at
//! once (long before the ack bound), and its translations are refused from then on.

use std::time::{Duration, Instant};

use super::Tvm;
use crate::daemon::vm::*;
use serde_json::json;
use virtio_iommu_e2e::Error;
use virtio_iommu_spec::translation::{
    Endpoints, Invalidate, Pasids, TranslateFlags, TranslateStatus, MAX_UNSENT,
};
use virtio_iommu_spec::Status;

#[test]
fn a_client_that_stops_reading_is_cut_off_at_1024_unsent_messages() {
    // An ack bound the test never reaches: only the backlog can release the UNMAP.
    let mut t = Tvm::start(&["--translation-ack-timeout-ms", "60000"]);
    let gpa = memory().alloc_pages(1).unwrap();
    for req in [attach(1, 8), map(1, 0x10000, 0x10fff, gpa)] {
        assert_eq!(t.vm.send(&req), Status::Ok);
    }
    // Reads its HELLO_REPLY, then nothing.
    let mut stuck = t.client(8, 8);

    let start = Instant::now();
    let unmap_head = t.post(&chain_of(&unmap(1, 0x10000, 0x10fff)));
    t.vm.rq.expect_no_used(QUIET).unwrap();
    assert_eq!(t.tstats()["holding"], json!(1));
    // Each bypass change pushes an INVALIDATE of everything and holds no guest request; the
    // socket's buffer fills, then the daemon's queue for the client, then the cut-off.
    let mut bypass = t.vm.bypass();
    let mut changes = 0usize;
    while t.tstats()["cut_off_backlog"] == json!(0) {
        for _ in 0..64 {
            bypass ^= 1;
            t.vm.fe.set_config(36, &[bypass]).unwrap();
        }
        changes += 64;
        assert!(
            changes < 32 * MAX_UNSENT,
            "no cut-off after {changes} INVALIDATEs"
        );
    }
    let done = t.vm.rq.wait_used(WAIT).unwrap();
    let took = start.elapsed();
    assert_eq!(done.head, unmap_head);
    assert_eq!(reply_status(&done, 4), Status::Ok);
    assert!(took < Duration::from_secs(30), "completed after {took:?}");

    // What reached the socket before the daemon queued is readable, in order, then the end.
    assert!(
        stuck.closed_within(WAIT).unwrap(),
        "the connection is closed"
    );
    let got: Vec<Invalidate> = stuck.invalidates.drain(..).collect();
    assert_eq!(
        got.first(),
        Some(&Invalidate {
            seq: 1,
            first: 0x10000,
            last: 0x10fff,
            endpoints: Endpoints::One(8),
            pasids: Pasids::NoPasid,
        })
    );
    for (i, inv) in (1u64..).zip(&got) {
        assert_eq!(inv.seq, i);
        if i > 1 {
            assert_eq!(
                (inv.endpoints, inv.pasids, inv.first, inv.last),
                (Endpoints::All, Pasids::All, 0, u64::MAX)
            );
        }
    }
    let s = t.tstats();
    // Sent: what the socket took, plus the 1024 it did not (dropped at the cut-off).
    assert_eq!(
        s["invalidates"],
        json!(got.len() + MAX_UNSENT),
        "{} read by the client; {s}",
        got.len()
    );
    assert_eq!(
        (
            &s["cut_off_backlog"],
            &s["cut_off_timeout"],
            &s["acks"],
            &s["held"],
            &s["released"],
            &s["holding"],
        ),
        (
            &json!(1),
            &json!(0),
            &json!(0),
            &json!(1),
            &json!(1),
            &json!(0),
        ),
        "{s}"
    );
    assert!(t
        .vm
        .daemon
        .stderr()
        .contains("stopped reading its messages: cut off"));

    // Its translations are refused: the connection is gone.
    let r = stuck.translate(8, None, 0x10000, 8, TranslateFlags::READ);
    assert!(
        matches!(r, Err(Error::Io(_))),
        "a TRANSLATE on the cut-off connection: {r:?}"
    );
    // A new connection starts empty and sees the UNMAP.
    let mut again = t.client(8, 8);
    let r = again
        .translate(
            8,
            None,
            0x10000,
            8,
            TranslateFlags::READ | TranslateFlags::NO_FAULT,
        )
        .unwrap();
    assert_eq!(r.status, TranslateStatus::Fault);
    t.vm.assert_alive();
}
