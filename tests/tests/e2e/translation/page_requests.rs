//! A PASID translation whose stage-1 entry is missing raises a page request; the guest driver
//! maps the page, invalidates (which the client acknowledges) and answers SUCCESS, and the
//! TRANSLATE is answered with the new page. INVALID gives FAULT; NO_FAULT raises nothing.

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use crate::driver::vm::{data_page, Vm, WAIT};
use crate::sva::guest::{Sva, FORMATS};
use virtio_iommu_driver::sva::PageRequestGroups;
use virtio_iommu_driver::{Event, PageRequest, PageRespCode};
use virtio_iommu_e2e::TranslationClient;
use virtio_iommu_spec::event::FaultReason;
use virtio_iommu_spec::request::MapFlags;
use virtio_iommu_spec::translation::{
    HelloReplyFlags, HelloStatus, TranslateFlags, TranslateReply, TranslateStatus,
};

/// Serves the guest's page requests until one was answered; returns it. Fault events drained
/// on the way (the one an INVALID answer raises may come in the same call) go to `faults`.
fn serve_one(
    vm: &mut Vm,
    faults: &mut Vec<Event>,
    mut resolve: impl FnMut(&mut crate::driver::vm::Iommu, &PageRequest) -> PageRespCode,
) -> PageRequest {
    let mut groups = PageRequestGroups::new();
    let mut seen = None;
    let deadline = Instant::now() + WAIT;
    while seen.is_none() {
        assert!(Instant::now() < deadline, "no page request");
        let drained = vm
            .iommu
            .handle_page_requests(&mut groups, |iommu, req| {
                seen = Some(*req);
                resolve(iommu, req)
            })
            .expect("event queue");
        faults.extend(drained.faults.into_iter().map(Event::Fault));
        thread::sleep(Duration::from_millis(1));
    }
    seen.unwrap()
}

/// A TRANSLATE from its own thread (it waits for the guest), acknowledging INVALIDATEs.
fn translate_async(
    path: PathBuf,
    ep: u32,
    iova: u64,
    flags: TranslateFlags,
) -> thread::JoinHandle<TranslateReply> {
    thread::spawn(move || {
        let mut c = TranslationClient::connect(&path, WAIT).unwrap();
        c.auto_ack = true;
        let h = c.hello(&[(0, 0xffff)]).unwrap();
        assert_eq!(h.status, HelloStatus::Accepted);
        assert!(h.flags.contains(HelloReplyFlags::PAGE_REQUESTS));
        c.translate(ep, Some(1), iova, 8, flags).unwrap()
    })
}

#[test]
fn a_missing_page_is_requested_and_the_translation_completes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.sock");
    let mut vm = Vm::start(
        &[
            "--pasid-bits",
            "16",
            "--translation-socket",
            path.to_str().unwrap(),
        ],
        true,
    );
    for (i, fmt) in (0u32..).zip(FORMATS) {
        let (domain, ep) = (1 + i, 1 + i);
        let mut sva = Sva::new(&mut vm.iommu, fmt, domain, ep);
        sva.add_pasid(&mut vm.iommu, 1);
        let va = fmt.va_base() + 0x3000;

        // SUCCESS: the page is mapped, the translation answers it (write only, as asked).
        let t = translate_async(path.clone(), ep, va + 0x10, TranslateFlags::WRITE);
        let mut page = 0;
        let mut faults = Vec::new();
        let req = serve_one(&mut vm, &mut faults, |iommu, req| {
            page = data_page(0);
            sva.map_page(1, req.address, page);
            iommu
                .invalidate_range(domain, 1, req.address, 0x1000)
                .expect("INVALIDATE");
            PageRespCode::Success
        });
        assert_eq!(
            (req.endpoint, req.pasid, req.address),
            (ep, Some(1), va),
            "{fmt:?}"
        );
        let r = t.join().unwrap();
        assert_eq!(r.status, TranslateStatus::Ok, "{fmt:?}: {r:?}");
        let got = r.ranges.as_slice()[0];
        assert_eq!(
            (got.iova, got.last, got.paddr, got.perm),
            (va, va + 0xfff, page, MapFlags::WRITE),
            "{fmt:?}"
        );

        // INVALID: FAULT (MAPPING at the faulting address).
        let t = translate_async(path.clone(), ep, va + 0x2008, TranslateFlags::READ);
        serve_one(&mut vm, &mut faults, |_, _| PageRespCode::Invalid);
        let r = t.join().unwrap();
        assert_eq!(r.status, TranslateStatus::Fault, "{fmt:?}");
        let f = r.fault.unwrap();
        assert_eq!((f.reason, f.address), (FaultReason::Mapping, va + 0x2008));
        // The guest gets the same fault, with the PASID (and no other).
        let fault = faults.pop().unwrap_or_else(|| vm.wait_event());
        assert!(faults.is_empty(), "{fmt:?}: {faults:?}");
        match fault {
            Event::Fault(e) => assert_eq!(
                (e.reason, e.endpoint, e.pasid, e.address),
                (FaultReason::Mapping, ep, Some(1), Some(va + 0x2008)),
                "{fmt:?}"
            ),
            other => panic!("{fmt:?}: {other:?}"),
        }

        // NO_FAULT: FAULT at once, no page request.
        let r = translate_async(
            path.clone(),
            ep,
            va + 0x4000,
            TranslateFlags::READ | TranslateFlags::NO_FAULT,
        )
        .join()
        .unwrap();
        assert_eq!(r.status, TranslateStatus::Fault, "{fmt:?}");
        vm.expect_no_event(Duration::from_millis(50));
    }
    let s = vm.stats();
    assert_eq!(
        s["translation"]["translate_waited"],
        serde_json::json!(6),
        "{s}"
    );
    assert_eq!(s["page_requests"]["raised"], serde_json::json!(6), "{s}");
}
