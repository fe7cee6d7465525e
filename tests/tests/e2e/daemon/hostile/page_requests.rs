//! Page-request floods through the socket, with and without eventq buffers: never more groups
//! than the limits, never more waiting events than `--max-pending-events`, every group ends
//! (the guest never answers: the device times it out), every DMA ends with its fault.

use std::thread;
use std::time::{Duration, Instant};

use super::*;
use crate::driver::vm::data_page;
use serde_json::{json, Value};
use virtio_iommu_spec::event::FaultFlags;
use virtio_iommu_spec::ext::{PageRespCode, VtdFlags};
use virtio_iommu_spec::{Event, FaultReason, Status};

const TIMEOUT_MS: u64 = 300;
const ARGS: [&str; 12] = [
    "--pasid-bits",
    "16",
    "--max-page-request-groups",
    "2",
    "--max-page-request-groups-total",
    "3",
    "--page-request-timeout-ms",
    "300",
    "--max-pending-events",
    "8",
    "--max-control-clients",
    "32",
];
const ENDPOINTS: u32 = 3;

/// Endpoints 1..=3, each in its own domain with an empty VT-d table for PASID 1: every DMA
/// with PASID 1 finds its entry not present (a page request).
fn start() -> Vm {
    let mut vm = Vm::start_logging("info", &ARGS);
    for ep in 1..=ENDPOINTS {
        assert_eq!(vm.send(&attach(ep, ep)), Status::Ok);
        let t = vtd_table(1, 48, data_page(0), VtdFlags::empty());
        assert_eq!(vm.send(&attach_table(ep, ep, t)), Status::Ok);
    }
    vm
}

/// `n` concurrent one-byte `dma-write`s with PASID 1, DMA i by endpoint 1 + i mod 3 at page
/// i, each from its own control client. While they wait, the outstanding groups are watched.
/// Returns each DMA's (endpoint, iova, reply) and the peak of outstanding groups.
fn flood(vm: &mut Vm, n: u64) -> (Vec<(u32, u64, Value)>, u64) {
    let dmas: Vec<_> = (0..n)
        .map(|i| {
            let mut client = vm.daemon.control().expect("control client");
            let ep = 1 + u32::try_from(i % u64::from(ENDPOINTS)).unwrap();
            let iova = i << 12;
            thread::spawn(move || {
                let req = json!({"endpoint": ep, "pasid": 1, "iova": iova, "data": "5a"});
                (
                    ep,
                    iova,
                    client.cmd("dma-write", req).expect("dma-write reply"),
                )
            })
        })
        .collect();
    let deadline = Instant::now() + WAIT;
    let mut peak = 0;
    while !dmas.iter().all(thread::JoinHandle::is_finished) {
        assert!(Instant::now() < deadline, "the flood did not drain");
        let outstanding = vm.stats()["page_requests"]["outstanding"].as_u64().unwrap();
        assert!(outstanding <= 3, "{outstanding} groups outstanding");
        peak = peak.max(outstanding);
        thread::sleep(Duration::from_millis(10));
    }
    let out = dmas.into_iter().map(|d| d.join().unwrap()).collect();
    (out, peak)
}

/// Each DMA failed with its own write fault with PASID 1.
fn assert_faulted(dmas: &[(u32, u64, Value)]) {
    for (ep, iova, r) in dmas {
        assert_eq!(
            *r,
            json!({"ok": true, "fault": {"reason": "mapping", "flags": 2, "endpoint": ep,
                "address": iova, "pasid": 1}}),
        );
    }
}

/// Takes the next event record from the event queue.
fn next_event(vm: &mut Vm) -> Event {
    let c = vm.eq.wait_used(WAIT).expect("an event");
    Event::parse(&c.written[..c.len as usize]).expect("a valid record")
}

#[test]
fn page_request_flood_without_event_buffers() {
    const DMAS: u64 = 24;
    let mut vm = start();
    let began = Instant::now();
    let (dmas, peak) = flood(&mut vm, DMAS);
    // Every DMA ends: the refused ones at once, the others when their group times out.
    assert!(began.elapsed() < Duration::from_millis(TIMEOUT_MS) * 10);
    assert_faulted(&dmas);
    // Page requests pushed out of the full queue end their groups early, so how many a 10 ms
    // poll sees is not fixed; the bound inside `flood` is what counts.
    let _ = peak;
    let stats = vm.stats();
    let (prq, ev) = (&stats["page_requests"], &stats["events"]);
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap();
    let raised = n(prq, "raised");
    assert!(raised >= 3, "{prq}");
    assert_eq!(n(prq, "refused"), DMAS - raised);
    assert_eq!(n(prq, "outstanding"), 0);
    // Nothing was delivered. The queue held at most 8 events: the faults past that pushed the
    // oldest out, a page request pushed out ended its group at once (FAILURE by the device),
    // the others timed out and were withdrawn from the queue.
    assert_eq!(n(ev, "queued"), raised + DMAS);
    assert_eq!(n(ev, "delivered"), 0);
    assert_eq!(n(prq, "timed_out") + n(ev, "page_requests_failed"), raised);
    assert_eq!(n(ev, "dropped"), raised + DMAS - 8 - n(prq, "timed_out"));

    // The guest finally posts buffers: the last 8 faults, no page request, then nothing.
    for _ in 0..12 {
        vm.post_event_buffer(48);
    }
    for _ in 0..8 {
        match next_event(&mut vm) {
            Event::Fault(f) => {
                assert_eq!(f.reason, FaultReason::Mapping);
                assert_eq!(f.access, FaultFlags::WRITE);
                assert_eq!(f.pasid, Some(1));
            }
            other => panic!("{other:?}"),
        }
    }
    vm.eq.expect_no_used(QUIET).unwrap();
    assert_eq!(vm.stats()["events"]["delivered"], json!(8));
    vm.assert_alive();
}

#[test]
fn page_request_flood_with_event_buffers() {
    const DMAS: u64 = 6;
    let mut vm = start();
    for _ in 0..EQ_SIZE {
        vm.post_event_buffer(48);
    }
    let (dmas, peak) = flood(&mut vm, DMAS);
    assert_faulted(&dmas);
    assert_eq!(peak, 3);
    let prq = vm.stats()["page_requests"].clone();
    let raised = prq["raised"].as_u64().unwrap();
    assert_eq!(prq["timed_out"], json!(raised));
    assert_eq!(prq["outstanding"], json!(0));

    // The guest saw each page request (delivered at once) and each DMA's fault.
    let (mut requests, mut faults) = (Vec::new(), 0);
    for _ in 0..raised + DMAS {
        match next_event(&mut vm) {
            Event::PageRequest(p) => {
                assert_eq!(p.pasid, Some(1));
                assert!(p.last && p.access == FaultFlags::WRITE, "{p:?}");
                assert!(dmas
                    .iter()
                    .any(|(ep, iova, _)| (*ep, *iova) == (p.endpoint, p.address)));
                requests.push(p);
            }
            Event::Fault(f) => {
                assert_eq!((f.reason, f.pasid), (FaultReason::Mapping, Some(1)));
                faults += 1;
            }
        }
    }
    assert_eq!((requests.len() as u64, faults), (raised, DMAS));
    vm.eq.expect_no_used(QUIET).unwrap();
    // Too late: every group timed out, so each answer is stale.
    for p in &requests {
        let r = page_resp(p.endpoint, Some(1), p.group_id, PageRespCode::Success);
        assert_eq!(vm.send(&r), Status::Inval, "{p:?}");
    }
    assert_eq!(vm.stats()["events"]["dropped"], json!(0));
    vm.assert_alive();
}
