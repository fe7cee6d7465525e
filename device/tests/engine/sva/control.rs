//! The control socket's blocking DMA: `dma-write` / `dma-read` wait for page responses without
//! holding the engine lock, with a thread playing the guest (taking the page request from the
//! event queue, mapping the page, INVALIDATE + PAGE_RESP through `handle_request`), and end
//! with the device's own FAILURE when nobody answers.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::guest::*;
use serde_json::json;
use vhost_device_iommu::control::{handle, WakeSlot};
use vhost_device_iommu::engine::Limits;
use virtio_iommu_spec::ext::{InvalCaches, InvalScope, PageRespCode};
use virtio_iommu_spec::{Event, Status};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

fn wake_slot() -> (WakeSlot, Arc<EventFd>) {
    let fd = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    (Arc::new(Mutex::new(Some(fd.clone()))), fd)
}

#[test]
fn blocking_dma_waits_for_the_guest() {
    for fmt in [Fmt::Arm, Fmt::Vtd(48)] {
        let mut s = Sva::new(fmt, 0);
        let pt = s.bind(1);
        let va = 0x7000_0000u64;
        let leaf = pt.leaf(&mut s.g, va);
        let bits = fmt.page_bits(true);
        let mem = s.g.mem.clone();
        let shared = Arc::new(parking_lot::Mutex::new(s.v));
        let (wake, fd) = wake_slot();

        let guest = {
            let shared = shared.clone();
            thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    {
                        let mut v = shared.lock();
                        if let Some(ev) = v.pop_event(48) {
                            let Event::PageRequest(pr) = Event::parse(ev.as_bytes()).unwrap()
                            else {
                                panic!("expected a page request");
                            };
                            assert_eq!((pr.endpoint, pr.pasid, pr.address), (0, Some(1), va));
                            let pte = (0x30_0000u64 | bits).to_le_bytes();
                            mem.memory().write_slice(&pte, GuestAddress(leaf)).unwrap();
                            let scope = InvalScope::Range {
                                pasid: Some(1),
                                start: va,
                                nr_pages: 1,
                                granule: 12,
                            };
                            assert_eq!(
                                invalidate(&mut v, 1, InvalCaches::IOTLB, scope),
                                Status::Ok
                            );
                            let st =
                                page_resp(&mut v, 0, Some(1), pr.group_id, PageRespCode::Success);
                            assert_eq!(st, Status::Ok);
                            return true;
                        }
                    }
                    thread::sleep(Duration::from_millis(1));
                }
                false
            })
        };
        let req = json!({"cmd": "dma-write", "endpoint": 0, "pasid": 1, "iova": va + 4, "data": "c0ffee"});
        let reply = handle(&req, &shared, &wake, None);
        assert_eq!(reply, json!({"ok": true}), "{fmt:?}");
        assert!(guest.join().unwrap(), "the guest saw no page request");
        assert!(fd.read().unwrap() >= 1, "the queue thread was not woken");
        let read = json!({"cmd": "dma-read", "endpoint": 0, "pasid": 1, "iova": va + 4, "len": 3});
        assert_eq!(
            handle(&read, &shared, &wake, None),
            json!({"ok": true, "data": "c0ffee"})
        );
        assert_eq!(shared.lock().stats().page_requests.success, 1);
    }
}

#[test]
fn blocking_dma_times_out_without_a_guest() {
    let mut cfg = config();
    cfg.limits = Limits {
        page_request_timeout: Duration::from_millis(50),
        ..cfg.limits
    };
    let mut s = Sva::with_config(Fmt::Vtd(48), 0, cfg);
    s.bind(1);
    let shared = Arc::new(parking_lot::Mutex::new(s.v));
    let (wake, _fd) = wake_slot();
    let t0 = Instant::now();
    let req = json!({"cmd": "dma-read", "endpoint": 0, "pasid": 1, "iova": "0x5000", "len": 4, "privileged": false});
    let reply = handle(&req, &shared, &wake, None);
    assert!(t0.elapsed() >= Duration::from_millis(50));
    assert_eq!(reply["ok"], true);
    assert_eq!(reply["fault"]["reason"], "mapping");
    assert_eq!(reply["fault"]["pasid"], 1);
    assert_eq!(reply["fault"]["address"], 0x5000);
    let v = shared.lock();
    assert_eq!(v.stats().page_requests.timed_out, 1);
    assert_eq!(v.outstanding_page_requests(0), 0);
    drop(v);
    let bad = json!({"cmd": "dma-read", "endpoint": 0, "iova": 0, "len": 1, "exec": 3});
    assert_eq!(handle(&bad, &shared, &wake, None)["ok"], false);
}
