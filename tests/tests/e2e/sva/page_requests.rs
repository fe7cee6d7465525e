//! Page requests end to end: a device DMA (control socket, from its own thread because it
//! blocks) to an unmapped VA raises a page request that the unmodified driver takes from its
//! event queue with `handle_page_requests`; the guest maps the page, invalidates and answers
//! SUCCESS and the DMA completes, or answers INVALID / FAILURE and the DMA fails with a fault
//! carrying the PASID, or does not answer and the device times the group out.

use std::thread;
use std::time::{Duration, Instant};

use super::guest::*;
use crate::driver::vm::*;
use serde_json::{json, Value};
use virtio_iommu_driver::sva::{response_for, Drained, PageRequestGroups};
use virtio_iommu_driver::{Error, Event, FaultEvent, FaultReason, PageRequest, PageRespCode};
use virtio_iommu_spec::event::FaultFlags;

/// Issues a `dma-write` from a new thread with its own control connection.
fn dma_write_async(
    vm: &Vm,
    endpoint: u32,
    pasid: u32,
    iova: u64,
    data: &[u8],
) -> thread::JoinHandle<Value> {
    let mut client = vm.new_control();
    let req = json!({"endpoint": endpoint, "pasid": pasid, "iova": iova, "data": hex(data)});
    thread::spawn(move || client.cmd("dma-write", req).expect("dma-write reply"))
}

/// Runs the guest's event handling until `groups_answered` PAGE_RESPs were sent (accepted or
/// not), resolving every page request with `resolve`; returns everything it drained.
fn serve(
    vm: &mut Vm,
    groups_answered: usize,
    mut resolve: impl FnMut(&mut Iommu, &PageRequest) -> PageRespCode,
) -> (Vec<PageRequest>, Drained) {
    let mut groups = PageRequestGroups::new();
    let mut seen = Vec::new();
    let mut all = Drained::default();
    let deadline = Instant::now() + WAIT;
    while all.responses.len() + all.failed_responses.len() < groups_answered {
        assert!(
            Instant::now() < deadline,
            "page requests not answered: {all:?}"
        );
        let d = vm
            .iommu
            .handle_page_requests(&mut groups, |iommu, req| {
                seen.push(*req);
                resolve(iommu, req)
            })
            .expect("event queue");
        all.faults.extend(d.faults);
        all.responses.extend(d.responses);
        all.failed_responses.extend(d.failed_responses);
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(groups.pending(), 0);
    (seen, all)
}

fn page_request(ep: u32, address: u64, group_id: u16) -> PageRequest {
    PageRequest {
        endpoint: ep,
        pasid: Some(1),
        address,
        access: FaultFlags::WRITE,
        group_id,
        last: true,
        private_data: None,
    }
}

#[test]
fn guest_resolves_page_faults_and_dma_completes() {
    let mut vm = Vm::start(&["--pasid-bits", "16"], true);
    for (i, fmt) in (0u32..).zip(FORMATS) {
        let (domain, ep) = (1 + i, 1 + i);
        let mut sva = Sva::new(&mut vm.iommu, fmt, domain, ep);
        sva.add_pasid(&mut vm.iommu, 1);
        let va = fmt.va_base();
        // Eight bytes across two unmapped pages: two page requests, one after the other.
        let data = *b"ABCDEFGH";
        let dma = dma_write_async(&vm, ep, 1, va + 0xffc, &data);

        let mut pages = Vec::new();
        let (seen, drained) = serve(&mut vm, 2, |iommu, req| {
            let page = data_page(0);
            sva.map_page(1, req.address, page);
            iommu
                .invalidate_range(domain, 1, req.address, 0x1000)
                .expect("INVALIDATE");
            pages.push(page);
            PageRespCode::Success
        });
        assert_eq!(dma.join().unwrap(), json!({"ok": true}), "{fmt:?}");

        assert_eq!(seen.len(), 2, "{fmt:?}: {seen:?}");
        assert_eq!(seen[0], page_request(ep, va, seen[0].group_id), "{fmt:?}");
        assert_eq!(seen[1], page_request(ep, va + 0x1000, seen[1].group_id));
        assert_ne!(seen[0].group_id, seen[1].group_id);
        let want: Vec<_> = seen
            .iter()
            .map(|r| response_for(r, PageRespCode::Success))
            .collect();
        assert_eq!(drained.responses, want);
        assert!(drained.faults.is_empty() && drained.failed_responses.is_empty());
        assert_eq!(read_guest(pages[0] + 0xffc, 4), b"ABCD", "{fmt:?}");
        assert_eq!(read_guest(pages[1], 4), b"EFGH", "{fmt:?}");
    }
    let stats = vm.stats();
    assert_eq!(stats["page_requests"]["raised"], json!(6));
    assert_eq!(stats["page_requests"]["success"], json!(6));
    assert_eq!(stats["page_requests"]["outstanding"], json!(0));
    assert_eq!(stats["page_resp"]["ok"], json!(6));
}

#[test]
fn invalid_answer_fails_the_dma_with_a_pasid_fault() {
    let mut vm = Vm::start(&["--pasid-bits", "16"], true);
    for (i, fmt) in (0u32..).zip(FORMATS) {
        let (domain, ep) = (1 + i, 1 + i);
        let mut sva = Sva::new(&mut vm.iommu, fmt, domain, ep);
        sva.add_pasid(&mut vm.iommu, 1);
        let va = fmt.va_base() + 0x5000;
        let dma = dma_write_async(&vm, ep, 1, va + 0x40, b"never");
        let (seen, mut drained) = serve(&mut vm, 1, |_, _| PageRespCode::Invalid);
        assert_eq!(seen, [page_request(ep, va, seen[0].group_id)], "{fmt:?}");
        assert_eq!(
            drained.responses,
            [response_for(&seen[0], PageRespCode::Invalid)]
        );
        let want = fault_json("mapping", 2, ep, va + 0x40, Some(1));
        assert_eq!(
            dma.join().unwrap(),
            json!({"ok": true, "fault": want}),
            "{fmt:?}"
        );
        // The failed DMA is also reported to the guest as an unrecoverable fault.
        if drained.faults.is_empty() {
            match vm.wait_event() {
                Event::Fault(f) => drained.faults.push(f),
                other => panic!("expected a fault, got {other:?}"),
            }
        }
        assert_eq!(
            drained.faults,
            [FaultEvent {
                reason: FaultReason::Mapping,
                access: FaultFlags::WRITE,
                endpoint: ep,
                address: Some(va + 0x40),
                pasid: Some(1),
            }],
            "{fmt:?}"
        );
    }
    let stats = vm.stats();
    assert_eq!(stats["page_requests"]["invalid"], json!(3));
    assert_eq!(stats["page_requests"]["outstanding"], json!(0));
}

#[test]
fn failure_answer_stops_page_requests_of_the_endpoint() {
    let mut vm = Vm::start(&["--pasid-bits", "16"], true);
    let fmt = FORMATS[1];
    let mut sva = Sva::new(&mut vm.iommu, fmt, 1, 1);
    sva.add_pasid(&mut vm.iommu, 1);
    let va = fmt.va_base();
    let dma = dma_write_async(&vm, 1, 1, va, b"x");
    let (seen, _) = serve(&mut vm, 1, |_, _| PageRespCode::Failure);
    assert_eq!(seen.len(), 1);
    assert_eq!(dma.join().unwrap()["fault"]["reason"], json!("mapping"));
    // From now on the endpoint's recoverable faults fail at once, without a page request.
    let r = dma_write(&mut vm.control, 1, Some(1), va + 0x1000, b"y");
    assert_eq!(
        r["fault"],
        fault_json("mapping", 2, 1, va + 0x1000, Some(1))
    );
    let stats = vm.stats();
    assert_eq!(stats["page_requests"]["failure"], json!(1));
    assert_eq!(stats["page_requests"]["raised"], json!(1));
    assert_eq!(stats["page_requests"]["refused"], json!(1));
}

#[test]
fn unanswered_request_times_out_and_a_late_answer_is_refused() {
    let mut vm = Vm::start(
        &["--pasid-bits", "16", "--page-request-timeout-ms", "200"],
        true,
    );
    let fmt = FORMATS[0];
    let mut sva = Sva::new(&mut vm.iommu, fmt, 1, 1);
    sva.add_pasid(&mut vm.iommu, 1);
    let va = fmt.va_base();
    let start = Instant::now();
    // The guest does not look at its event queue: the device gives up after 200 ms.
    let r = dma_write(&mut vm.control, 1, Some(1), va + 4, b"late");
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_eq!(r["fault"], fault_json("mapping", 2, 1, va + 4, Some(1)));
    assert_eq!(vm.stats()["page_requests"]["timed_out"], json!(1));

    // The request was delivered before the timeout; answering it now is stale: S_INVAL.
    let (seen, drained) = serve(&mut vm, 1, |_, _| PageRespCode::Success);
    assert_eq!(seen, [page_request(1, va, seen[0].group_id)]);
    assert_eq!(
        drained.failed_responses,
        [(response_for(&seen[0], PageRespCode::Success), Error::Inval)]
    );
    assert_eq!(vm.stats()["page_resp"]["inval"], json!(1));
}
