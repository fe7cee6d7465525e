//! Live migration's dirty-page log (VHOST_F_LOG_ALL, LOG_SHMFD, SET_LOG_BASE): the daemon sets
//! the bit of exactly the pages it writes (used rings, reply buffers, event buffers, the
//! emulated host's DMA), QEMU's LOG_ALL toggles on running rings change nothing else (no
//! reset, no restart decision, nothing in the state file), a device start while logging is
//! still a start, and without a log nothing breaks.

use std::path::Path;

use super::restart::{args, kill_and_restart};
use super::vm::*;
use serde_json::{json, Value};
use vhost::vhost_user::VhostUserProtocolFeatures;
use virtio_iommu_e2e::frontend::LOG_ALL_BIT;
use virtio_iommu_e2e::DirtyLog;
use virtio_iommu_spec::event::FaultFlags;
use virtio_iommu_spec::{FaultEvent, FaultReason, Request, Status};
use virtio_iommu_testkit::ring::DESC_F_WRITE;
use virtio_iommu_testkit::Chain;

/// A log covering the whole shared guest RAM.
fn new_log() -> DirtyLog {
    let m = memory();
    DirtyLog::new(m.base() + m.size()).unwrap()
}

/// The log `vm`'s frontend handed over.
fn dirty(vm: &Vm) -> Vec<u64> {
    vm.fe
        .dirty_log()
        .expect("a log was set")
        .dirty_pages()
        .unwrap()
}

fn clear(vm: &Vm) {
    vm.fe.dirty_log().expect("a log was set").clear().unwrap();
}

/// No page.
const CLEAN: [u64; 0] = [];

fn sorted(mut pages: Vec<u64>) -> Vec<u64> {
    pages.sort_unstable();
    pages
}

/// Pages of a request sent with buffers of its own: the request alone in `req`, the reply at
/// offset `at` of the two pages from `reply`.
struct Placed {
    req: u64,
    reply: u64,
}

/// Sends `r` with its buffers placed as [`Placed`] says; returns them and the reply bytes.
fn send_placed(vm: &mut Vm, r: &Request, at: u64) -> (Placed, Vec<u8>) {
    let mem = memory();
    let req = mem.alloc_pages(1).unwrap();
    let reply = mem.alloc_pages(2).unwrap();
    let bytes = r.encode();
    mem.write(req, bytes.as_bytes()).unwrap();
    let len = r.writable_len(PROBE_SIZE);
    let chain = Chain::new()
        .raw(req, u32::try_from(bytes.as_bytes().len()).unwrap(), 0)
        .raw(reply + at, u32::try_from(len).unwrap(), DESC_F_WRITE);
    let c = vm.submit(&chain);
    assert_eq!(c.len as usize, len, "used length = writable size");
    (
        Placed { req, reply },
        mem.read_vec(reply + at, len).unwrap(),
    )
}

#[test]
fn the_log_holds_exactly_the_pages_the_daemon_wrote() {
    let mut vm = Vm::start(&[]);
    assert!(vm
        .fe
        .protocol_features()
        .contains(VhostUserProtocolFeatures::LOG_SHMFD));
    assert_eq!(vm.fe.device_features() & LOG_ALL_BIT, LOG_ALL_BIT);
    let mem = memory();
    let target = mem.alloc_pages(2).unwrap();
    assert_eq!(vm.send(&attach(1, 5)), Status::Ok);
    assert_eq!(
        vm.send(&map(1, 0x10000, 0x10fff, target + 0x1000)),
        Status::Ok
    );
    vm.fe.set_log_base(new_log()).unwrap();
    vm.fe.set_logging(true).unwrap();
    assert_eq!(dirty(&vm), CLEAN, "the messages themselves write nothing");

    // A PROBE whose reply straddles two pages: both, and the used ring's page.
    let (p, reply) = send_placed(&mut vm, &probe(5), 0xf00);
    assert_eq!(reply[reply.len() - 4..], [Status::Ok as u8, 0, 0, 0]);
    let rq = vm.rq.config();
    assert_eq!(dirty(&vm), sorted(vec![rq.used, p.reply, p.reply + 0x1000]));
    let clean = [p.req, rq.desc, rq.avail, target, target + 0x1000];
    assert!(
        clean.iter().all(|g| !dirty(&vm).contains(g)),
        "the request, the descriptor table and the avail ring are only read"
    );
    clear(&vm);

    // A fault event: its buffer's page and the event queue's used ring.
    let event = mem.alloc_pages(1).unwrap();
    vm.eq
        .submit(&Chain::new().raw(event, 24, DESC_F_WRITE))
        .unwrap();
    vm.eq.kick(&vm.fe).unwrap();
    vm.eq.expect_no_used(QUIET).unwrap();
    assert_eq!(
        dirty(&vm),
        CLEAN,
        "a posted buffer is only read until an event comes"
    );
    vm.cmd("translate", json!({"endpoint": 5, "iova": 0x20000}));
    let c = vm.eq.wait_used(WAIT).unwrap();
    assert_eq!(c.len, 24);
    let want = FaultEvent {
        reason: FaultReason::Mapping,
        access: FaultFlags::READ,
        endpoint: 5,
        address: Some(0x20000),
        pasid: None,
    };
    assert_eq!(mem.read_vec(event, 24).unwrap(), want.encode_legacy());
    assert_eq!(dirty(&vm), sorted(vec![vm.eq.config().used, event]));
    clear(&vm);

    // The emulated host's DMA (control socket dma-write): the page behind the IOVA only.
    let r = vm.cmd(
        "dma-write",
        json!({"endpoint": 5, "iova": 0x10ff0, "data": "deadbeef"}),
    );
    assert_eq!(r, json!({"ok": true}));
    assert_eq!(
        mem.read_vec(target + 0x1ff0, 4).unwrap(),
        [0xde, 0xad, 0xbe, 0xef]
    );
    assert_eq!(dirty(&vm), [target + 0x1000]);

    for (gpa, pages) in [(target, 2), (event, 1), (p.req, 1), (p.reply, 2)] {
        mem.free_pages(gpa, pages).unwrap();
    }
}

/// MAPs of pages `range` of domain 1.
fn maps(range: std::ops::Range<u64>) -> Vec<Request> {
    range
        .map(|i| map(1, i << 12, (i << 12) + 0xfff, 0x4000_0000 + (i << 12)))
        .collect()
}

fn mappings(range: std::ops::Range<u64>) -> Vec<Value> {
    range
        .map(|i| mapping(i << 12, (i << 12) + 0xfff, 0x4000_0000 + (i << 12), 3))
        .collect()
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

#[test]
fn log_all_toggled_on_running_rings_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("viommu.state");
    let a = args(&state);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let mut vm = Vm::start_logging("debug", &a);
    vm.fe.set_config(36, &[0]).unwrap();
    let mut reqs = vec![attach(1, 8)];
    reqs.extend(maps(0..16));
    vm.send_all(&reqs);
    let used = vm.rq.device_used_idx().unwrap();
    assert_eq!(used, 17);

    // On and off with nothing else going on: not a byte more in the state file.
    let len = file_len(&state);
    vm.fe.set_log_base(new_log()).unwrap();
    vm.fe.set_logging(true).unwrap();
    vm.fe.set_logging(false).unwrap();
    assert_eq!(file_len(&state), len, "a LOG_ALL toggle is not journaled");

    // On while a batch is in flight: every request answered, in order, from where the ring was.
    let batch = maps(16..48);
    for r in &batch {
        vm.rq.submit(&chain_of(r)).unwrap();
    }
    vm.rq.kick(&vm.fe).unwrap();
    vm.fe.set_logging(true).unwrap();
    for _ in &batch {
        let c = vm.rq.wait_used(WAIT).unwrap();
        assert_eq!(reply_status(&c, 4), Status::Ok);
    }
    vm.send_all(&maps(48..64));
    vm.fe.set_logging(false).unwrap();
    vm.send_all(&maps(64..80));
    assert_eq!(vm.rq.device_used_idx().unwrap(), used + 64);
    assert_eq!(vm.domains(), json!([domain(1, &[8], &mappings(0..80))]));
    assert_eq!(vm.bypass(), 0, "the config space is kept too");
    assert!(
        vm.fe
            .dirty_log()
            .unwrap()
            .dirty_pages()
            .unwrap()
            .contains(&vm.rq.config().used),
        "requests answered while logging are logged"
    );
    let log = vm.daemon.stderr();
    assert_eq!(log.matches("dirty-page logging on").count(), 2, "{log}");
    assert_eq!(log.matches("dirty-page logging off").count(), 2, "{log}");
    // One restart decision, at the first start; none at the toggles.
    assert_eq!(log.matches("rings resumed").count(), 1, "{log}");
    assert!(!log.contains("guest reset"), "{log}");
    assert_eq!(log.matches("features negotiated").count(), 1, "{log}");

    // The state file still brings everything back after a kill.
    let want = vm.dump();
    let mut vm = kill_and_restart(vm, &state, |_| {});
    assert_eq!(vm.dump(), want);
    assert_eq!(vm.bypass(), 0);
    assert_eq!(vm.send(&unmap(1, 0, 0xfff)), Status::Ok);
}

#[test]
fn a_device_start_while_logging_is_still_a_start() {
    let mut vm = Vm::start(&[]);
    assert_eq!(vm.send(&attach(1, 5)), Status::Ok);
    assert_eq!(vm.send(&map(1, 0, 0xfff, 0)), Status::Ok);
    vm.fe.set_log_base(new_log()).unwrap();
    // The guest reboots as the migration begins: the device is stopped when logging goes on
    // (QEMU sends nothing then), and its next start is the first SET_FEATURES with LOG_ALL,
    // differing from the last one in that bit alone.
    vm.fe.stop().unwrap();
    vm.rq.reset().unwrap();
    vm.eq.reset().unwrap();
    vm.fe.set_logging(true).unwrap();
    vm.fe.start_fresh().unwrap();
    clear(&vm);
    assert_eq!(vm.probe(5).0, Status::Ok);
    assert_eq!(vm.domains(), json!([]), "the guest reset is seen as one");
    assert!(
        dirty(&vm).contains(&vm.rq.config().used),
        "the start's SET_LOG_BASE is used (SET_MEM_TABLE dropped the old log)"
    );

    // Once more while logging: the same SET_FEATURES again.
    assert_eq!(vm.send(&attach(1, 5)), Status::Ok);
    let Vm { fe, rq, eq, .. } = &mut vm;
    fe.guest_reset(|| {
        rq.reset()?;
        eq.reset()
    })
    .unwrap();
    assert_eq!(vm.probe(5).0, Status::Ok);
    assert_eq!(vm.domains(), json!([]));
}

#[test]
fn logging_without_a_log_base_breaks_nothing() {
    let mut vm = Vm::start(&[]);
    vm.fe.set_logging(true).unwrap();
    let target = memory().alloc_pages(1).unwrap();
    assert_eq!(vm.send(&attach(1, 5)), Status::Ok);
    assert_eq!(vm.send(&map(1, 0x10000, 0x10fff, target)), Status::Ok);
    assert_eq!(vm.probe(5).0, Status::Ok);
    vm.post_event_buffer(24);
    vm.cmd("translate", json!({"endpoint": 5, "iova": 0x20000}));
    assert_eq!(vm.eq.wait_used(WAIT).unwrap().len, 24);
    vm.cmd(
        "dma-write",
        json!({"endpoint": 5, "iova": 0x10000, "data": "01"}),
    );
    assert_eq!(memory().read_vec(target, 1).unwrap(), [1]);
    vm.fe.set_logging(false).unwrap();
    assert_eq!(vm.send(&unmap(1, 0x10000, 0x10fff)), Status::Ok);
    vm.assert_alive();
    memory().free_pages(target, 1).unwrap();
}
