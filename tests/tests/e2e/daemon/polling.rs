//! `--request-poll-us`: after serving the request ring the queue thread watches it for a while,
//! so a request published meanwhile is served without the guest's kick; with polling off only
//! a kick gets it served.

use std::time::Duration;

use super::vm::*;
use virtio_iommu_spec::Status;

/// Long enough for a served request's completion to reach the test and the next one to go in.
const SERVED_WITHOUT_KICK: Duration = Duration::from_millis(200);

/// Sends `map` without a kick right after a kicked request completed; whether the daemon
/// served it on its own (else it is kicked, and must then be served).
fn unkicked_map_served(vm: &mut Vm, iova: u64, gpa: u64) -> bool {
    assert_eq!(vm.send(&attach(1, 8)), Status::Ok);
    let req = map(1, iova, iova + 0xfff, gpa);
    vm.rq.submit(&chain_of(&req)).unwrap();
    let (c, served) = match vm.rq.wait_used(SERVED_WITHOUT_KICK) {
        Ok(c) => (c, true),
        Err(_) => {
            vm.rq.kick(&vm.fe).unwrap();
            (
                vm.rq.wait_used(WAIT).expect("a kicked MAP completes"),
                false,
            )
        }
    };
    assert_eq!(reply_status(&c, req.writable_len(PROBE_SIZE)), Status::Ok);
    served
}

#[test]
fn a_request_published_while_the_thread_polls_needs_no_kick() {
    let mut vm = Vm::start(&["--request-poll-us", "1000"]);
    let gpa = memory().alloc_pages(1).unwrap();
    // The request must go in within the millisecond after the last one was served: tries,
    // since a loaded machine may deschedule the test for longer.
    let served = (0..8)
        .filter(|&i| unkicked_map_served(&mut vm, 0x10_0000 + (i << 12), gpa))
        .count();
    assert!(served > 0, "no MAP of 8 was served without its kick");
    assert_eq!(vm.domains()[0]["mappings"].as_array().unwrap().len(), 8);
}

#[test]
fn with_polling_off_a_request_waits_for_its_kick() {
    let mut vm = Vm::start(&["--request-poll-us", "0"]);
    let gpa = memory().alloc_pages(1).unwrap();
    assert_eq!(vm.send(&attach(1, 8)), Status::Ok);
    let req = map(1, 0x10_0000, 0x10_0fff, gpa);
    vm.rq.submit(&chain_of(&req)).unwrap();
    vm.rq.expect_no_used(SERVED_WITHOUT_KICK).unwrap();
    vm.rq.kick(&vm.fe).unwrap();
    let c = vm.rq.wait_used(WAIT).unwrap();
    assert_eq!(reply_status(&c, req.writable_len(PROBE_SIZE)), Status::Ok);
}
