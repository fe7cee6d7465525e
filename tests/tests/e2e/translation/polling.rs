//! Busy-polling changes nothing on the wire: one exchange (TRANSLATE, the UNMAP's INVALIDATE
//! and its ack, TRANSLATE again; by a raw client, then by the client crate) with the daemon's
//! `--translation-poll-us` and the client's `busy_poll` off, at the default, and long, gives
//! the same exact replies, INVALIDATEs, completions and counters.

use std::time::Duration;

use super::Tvm;
use crate::daemon::vm::*;
use serde_json::json;
use virtio_iommu_client::{Client, ClientConfig, EndpointRange, Error};
use virtio_iommu_spec::event::{FaultFlags, FaultReason};
use virtio_iommu_spec::request::MapFlags;
use virtio_iommu_spec::translation::{
    Endpoints, Invalidate, Pasids, TranslateFault, TranslateFlags, TranslateReply, TranslatedRange,
    TranslatedRanges,
};
use virtio_iommu_spec::Status;
use vm_memory::iommu::MappedRange;
use vm_memory::Permissions;

const R: TranslateFlags = TranslateFlags::READ;
const RW: MapFlags = MapFlags::READ.union(MapFlags::WRITE);

fn one_range(tag: u64, iova: u64, last: u64, paddr: u64) -> TranslateReply {
    let mut r = TranslatedRanges::new();
    assert!(r.push(TranslatedRange {
        iova,
        last,
        paddr,
        perm: RW
    }));
    TranslateReply::ok(tag, r)
}

fn unmap_completes(t: &mut Tvm, iova: u64) {
    t.post(&chain_of(&unmap(1, iova, iova + 0xfff)));
}

/// The exchange with both ends polling for `poll_us` (0: off).
fn exchange(poll_us: u64) {
    let us = poll_us.to_string();
    let mut t = Tvm::start(&["--translation-poll-us", &us]);
    let gpa = memory().alloc_pages(3).unwrap();
    for req in [
        attach(1, 8),
        map(1, 0x10000, 0x10fff, gpa),
        map(1, 0x20000, 0x20fff, gpa + 0x1000),
        map(1, 0x30000, 0x30fff, gpa + 0x2000),
    ] {
        assert_eq!(t.vm.send(&req), Status::Ok, "{req:?}");
    }

    // The raw protocol.
    let mut c = t.client(8, 8);
    let r = c.translate(8, None, 0x10000, 0x1000, R).unwrap();
    assert_eq!(r, one_range(r.tag, 0x10000, 0x10fff, gpa), "poll {poll_us}");
    unmap_completes(&mut t, 0x10000);
    assert_eq!(
        c.next_invalidate().unwrap(),
        Invalidate {
            seq: 1,
            first: 0x10000,
            last: 0x10fff,
            endpoints: Endpoints::One(8),
            pasids: Pasids::NoPasid,
        }
    );
    c.ack(1).unwrap();
    assert_eq!(
        reply_status(&t.vm.rq.wait_used(WAIT).unwrap(), 4),
        Status::Ok
    );
    let r = c
        .translate(8, None, 0x10000, 0x1000, R | TranslateFlags::NO_FAULT)
        .unwrap();
    let fault = TranslateFault {
        reason: FaultReason::Mapping,
        flags: FaultFlags::READ | FaultFlags::ADDRESS,
        address: 0x10000,
    };
    assert_eq!(r, TranslateReply::fault(r.tag, fault));

    // The client crate beside it: its reader thread acknowledges.
    let mut config = ClientConfig::new(&t.path, vec![EndpointRange { first: 8, last: 8 }]);
    config.busy_poll = Duration::from_micros(poll_us);
    let client = Client::connect(config).unwrap();
    let tr = client.translator(8, None);
    let gpas = |iova| {
        tr.translate_typed(iova, 0x100, Permissions::Read)
            .map(|it| {
                it.map(|MappedRange { base, length }| (base.0, length))
                    .collect::<Vec<_>>()
            })
    };
    assert_eq!(gpas(0x20080).unwrap(), [(gpa + 0x1080, 0x100)]);
    unmap_completes(&mut t, 0x20000);
    assert_eq!(
        c.next_invalidate().unwrap(),
        Invalidate {
            seq: 2,
            first: 0x20000,
            last: 0x20fff,
            endpoints: Endpoints::One(8),
            pasids: Pasids::NoPasid,
        }
    );
    c.ack(2).unwrap();
    assert_eq!(
        reply_status(&t.vm.rq.wait_used(WAIT).unwrap(), 4),
        Status::Ok
    );
    assert_eq!(
        client
            .stats()
            .invalidations
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    match gpas(0x20080) {
        Err(Error::Fault {
            reason: FaultReason::Mapping,
            flags,
            address: 0x20080,
        }) if flags == FaultFlags::READ | FaultFlags::ADDRESS => {}
        other => panic!("poll {poll_us}: {other:?}"),
    }
    assert_eq!(gpas(0x30000).unwrap(), [(gpa + 0x2000, 0x100)]);
    let s = t.tstats();
    assert_eq!(
        (
            &s["translate_ok"],
            &s["translate_fault"],
            &s["invalidates"],
            &s["acks"],
            &s["released"],
            &s["holding"]
        ),
        (
            &json!(3),
            &json!(2),
            &json!(3),
            &json!(3),
            &json!(2),
            &json!(0)
        ),
        "poll {poll_us}: {s}"
    );
}

#[test]
fn polling_off() {
    exchange(0);
}

#[test]
fn polling_at_the_default() {
    exchange(50);
}

/// Longer than any reply takes here: every wait for a reply and every ack is polled for.
#[test]
fn polling_long() {
    exchange(1000);
}
