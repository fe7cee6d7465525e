//! Used-buffer notifications without EVENT_IDX: the daemon signals a queue's call eventfd
//! after using its buffers unless the driver set `VIRTQ_AVAIL_F_NO_INTERRUPT` (a driver that
//! polls the used ring and wants no interrupt).

use serde_json::json;
use virtio_iommu_spec::features::VIRTIO_F_RING_EVENT_IDX;
use virtio_iommu_spec::Status;

use super::vm::*;

const REQUEST: usize = 0;
const EVENT: usize = 1;

fn without_event_idx() -> Vm {
    Vm::start_with(&[], |f| f & !VIRTIO_F_RING_EVENT_IDX)
}

#[test]
fn no_interrupt_flag_silences_the_request_queue() {
    let mut vm = without_event_idx();
    assert_eq!(vm.send(&attach(1, 1)), Status::Ok);
    assert!(
        vm.fe.wait_call(REQUEST, WAIT).unwrap(),
        "notified by default"
    );

    vm.rq.set_avail_flags(1).unwrap();
    assert_eq!(vm.send(&attach(2, 2)), Status::Ok);
    assert_eq!(vm.send(&attach(3, 3)), Status::Ok);
    std::thread::sleep(QUIET);
    assert!(
        !vm.fe.take_call(REQUEST).unwrap(),
        "the driver asked for no notification"
    );

    vm.rq.set_avail_flags(0).unwrap();
    assert_eq!(vm.send(&attach(4, 4)), Status::Ok);
    assert!(vm.fe.wait_call(REQUEST, WAIT).unwrap(), "notified again");
    assert_eq!(vm.stats()["domains"], json!(4));
}

#[test]
fn no_interrupt_flag_silences_the_event_queue() {
    let mut vm = without_event_idx();
    vm.eq.set_avail_flags(1).unwrap();
    vm.post_event_buffer(24);
    vm.post_event_buffer(24);
    // An unattached endpoint with bypass off: a DOMAIN fault record for each translation.
    vm.fe.set_config(36, &[0]).unwrap();
    vm.cmd("translate", json!({"endpoint": 7, "iova": "0x3000"}));
    assert_eq!(vm.eq.wait_used(WAIT).unwrap().len, 24);
    std::thread::sleep(QUIET);
    assert!(
        !vm.fe.take_call(EVENT).unwrap(),
        "the driver asked for no notification"
    );

    vm.eq.set_avail_flags(0).unwrap();
    vm.cmd("translate", json!({"endpoint": 7, "iova": "0x4000"}));
    assert_eq!(vm.eq.wait_used(WAIT).unwrap().len, 24);
    assert!(vm.fe.wait_call(EVENT, WAIT).unwrap(), "notified again");
}
