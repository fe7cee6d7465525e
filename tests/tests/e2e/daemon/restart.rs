//! A daemon killed with SIGKILL and started again on its `--state-file`: the frontend
//! reconnects as QEMU does after a broken connection (rings at the used indices it finds in
//! guest memory) and the guest sees its device as it left it: every domain, mapping and the
//! bypass byte, requests submitted while no daemon ran answered, and a request the first
//! daemon answered but never published answered once more with its first status, not
//! applied twice. Then the same kill at random moments under a stream of MAP/UNMAP, and with
//! replies held for a translation client's ack (published in ring order, answered once).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::vm::*;
use serde_json::{json, Value};
use virtio_iommu_e2e::Daemon;
use virtio_iommu_spec::Status;

/// Mappings of domain 1 before the first kill.
const MAPPINGS: u64 = 1000;

pub(super) fn args(state: &Path) -> Vec<String> {
    vec!["--state-file".into(), state.display().to_string()]
}

/// Kills `vm`'s daemon, runs `while_dead` (the guest goes on submitting), starts another
/// daemon on the same state file and reconnects: the rings start at the used indices in guest
/// memory, as QEMU restores them when GET_VRING_BASE cannot reach a dead backend.
pub(super) fn kill_and_restart(mut vm: Vm, state: &Path, while_dead: impl FnOnce(&mut Vm)) -> Vm {
    let features = all_features(&vm.fe);
    vm.daemon.kill().unwrap();
    while_dead(&mut vm);
    let Vm {
        rq, eq, fe, ctl, ..
    } = vm;
    drop((fe, ctl));
    let daemon = Daemon::spawn(&args(state)).expect("daemon restarts");
    let mut fe = daemon.connect(memory()).expect("frontend reconnects");
    for q in [&rq, &eq] {
        fe.set_ring_config(q.index(), Some(q.config())).unwrap();
        fe.set_ring_base(q.index(), q.device_used_idx().unwrap())
            .unwrap();
    }
    fe.set_driver_features(features);
    fe.start().unwrap();
    rq.kick(&fe).unwrap();
    let ctl = daemon.control().unwrap();
    Vm {
        rq,
        eq,
        fe,
        ctl,
        daemon,
    }
}

fn page(i: u64) -> (u64, u64, u64) {
    (i << 12, (i << 12) + 0xfff, 0x4000_0000 + (i << 12))
}

fn start(state: &Path) -> Vm {
    let a = args(state);
    Vm::start(&a.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn a_killed_daemon_resumes_from_its_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("viommu.state");
    let mut vm = start(&state);
    vm.fe.set_config(36, &[0]).unwrap();
    let mut reqs = vec![attach(1, 8), attach(1, 9), attach_bypass(2, 16)];
    reqs.extend((0..MAPPINGS).map(|i| {
        let (va, last, pa) = page(i);
        map(1, va, last, pa)
    }));
    reqs.push(unmap(1, 0, 0xfff));
    vm.send_all(&reqs);

    // One more MAP, answered and published; the daemon is then killed and the used index
    // rewound, as if it had died before publishing.
    let extra = map(1, 0x100_0000, 0x100_0fff, 0x5000_0000);
    let before = vm.rq.device_used_idx().unwrap();
    let extra_head = vm.rq.submit(&chain_of(&extra)).unwrap();
    vm.rq.kick(&vm.fe).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while vm.rq.device_used_idx().unwrap() == before {
        assert!(std::time::Instant::now() < deadline, "the MAP is answered");
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut want = vm.dump();
    let mappings = vm.stats()["mappings"].clone();
    assert_eq!(mappings, json!(MAPPINGS), "1000 mapped, 1 unmapped, 1 more");
    let mut attach_head = 0;
    let mut vm = kill_and_restart(vm, &state, |vm| {
        vm.rq.set_device_used_idx(before).unwrap();
        // Submitted while no daemon runs.
        attach_head = vm.rq.submit(&chain_of(&attach(3, 10))).unwrap();
    });

    // The MAP comes again and gets its first answer (a second execution would be S_INVAL:
    // the range is mapped), then the ATTACH is served.
    let c = vm.rq.wait_used(WAIT).unwrap();
    assert_eq!(c.head, extra_head);
    assert_eq!(reply_status(&c, extra.writable_len(PROBE_SIZE)), Status::Ok);
    let c = vm.rq.wait_used(WAIT).unwrap();
    assert_eq!(c.head, attach_head);
    assert_eq!(reply_status(&c, 4), Status::Ok);
    want["domains"]
        .as_array_mut()
        .unwrap()
        .push(domain(3, &[10], &[]));
    assert_eq!(vm.dump(), want, "every domain, mapping and the bypass byte");
    assert_eq!(vm.bypass(), 0);
    assert_eq!(vm.stats()["mappings"], mappings);
    let log = vm.daemon.stderr();
    assert!(log.contains("resumed 2 domains, 1000 mappings"), "{log}");
    // The device goes on: the resumed mappings are the guest's.
    assert_eq!(
        vm.send(&map(1, 0x1000, 0x1fff, 0)),
        Status::Inval,
        "still mapped"
    );
    assert_eq!(vm.send(&unmap(1, 0x1000, 0x1fff)), Status::Ok);
    let r = vm.cmd("translate", json!({"endpoint": 9, "iova": 0x2010}));
    assert_eq!(r["translation"], json!({"gpa": 0x4000_2010u64, "len": 1}));

    // A guest reset after the restart empties the device for good: a third daemon starts
    // empty too.
    let Vm { fe, rq, eq, .. } = &mut vm;
    fe.guest_reset(|| {
        rq.reset()?;
        eq.reset()
    })
    .unwrap();
    assert_eq!(vm.probe(8).0, Status::Ok);
    assert_eq!(vm.domains(), json!([]));
    let mut vm = kill_and_restart(vm, &state, |_| {});
    assert_eq!(vm.probe(8).0, Status::Ok);
    assert_eq!(vm.domains(), json!([]));
}

#[test]
fn killed_at_random_moments_under_map_unmap_nothing_is_lost() {
    let seed = std::env::var("RESTART_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            t.as_secs() ^ u64::from(t.subsec_nanos())
        });
    eprintln!("RESTART_SEED={seed}");
    let mut rng = Lcg(seed);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("viommu.state");
    let mut vm = start(&state);
    assert_eq!(vm.send(&attach(1, 8)), Status::Ok);
    // The model: which of 64 pages are mapped. Each round flips 24 of them (two descriptors each: 48 of the ring's 64) in one go.
    let mut mapped = [false; 64];
    for round in 0..10 {
        // 24 requests, kicked one by one; the daemon dies after a random number of them and
        // the rest are submitted while it is dead.
        let mut reqs = Vec::new();
        for _ in 0..24 {
            let i = rng.next(64);
            let (va, last, pa) = page(i);
            let slot = &mut mapped[usize::try_from(i).unwrap()];
            reqs.push(if *slot {
                unmap(1, va, last)
            } else {
                map(1, va, last, pa)
            });
            *slot = !*slot;
        }
        let kill_at = usize::try_from(rng.next(25)).unwrap();
        let mut heads = Vec::new();
        for r in &reqs[..kill_at] {
            heads.push(vm.rq.submit(&chain_of(r)).unwrap());
            vm.rq.kick(&vm.fe).unwrap();
            std::thread::sleep(Duration::from_micros(rng.next(200)));
        }
        let before = vm.rq.last_used_idx();
        vm = kill_and_restart(vm, &state, |vm| {
            let done = vm.rq.device_used_idx().unwrap().wrapping_sub(before);
            eprintln!("round {round}: killed after {kill_at} kicks, {done} answers published");
            for r in &reqs[kill_at..] {
                heads.push(vm.rq.submit(&chain_of(r)).unwrap());
            }
        });
        for (head, r) in heads.into_iter().zip(&reqs) {
            let c = vm.rq.wait_used(WAIT).unwrap();
            assert_eq!(c.head, head, "round {round}: answers in ring order");
            assert_eq!(
                reply_status(&c, r.writable_len(PROBE_SIZE)),
                Status::Ok,
                "round {round}: {r:?}"
            );
        }
    }
    let want: Vec<Value> = (0..64u64)
        .filter(|i| mapped[usize::try_from(*i).unwrap()])
        .map(|i| {
            let (va, last, pa) = page(i);
            mapping(va, last, pa, 3)
        })
        .collect();
    assert_eq!(vm.domains(), json!([domain(1, &[8], &want)]));
}

/// A reply held for a translation client's ack, and one behind it, when the daemon dies: the
/// later reply must not have been published ahead of the held one (the frontend restarts the
/// ring at the used index, so it would be taken and answered twice), and after the restart
/// both are answered once, in ring order, with their first statuses.
#[test]
fn replies_held_for_acks_are_answered_once_after_a_kill() {
    use virtio_iommu_e2e::TranslationClient;
    use virtio_iommu_spec::translation::{HelloStatus, TranslateFlags, TranslateStatus};

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("viommu.state");
    let xlate = dir.path().join("translation.sock");
    let a = args(&state);
    let mut all: Vec<&str> = a.iter().map(String::as_str).collect();
    all.extend(["--translation-socket", xlate.to_str().unwrap()]);
    let mut vm = Vm::start(&all);
    for r in [attach(1, 8), map(1, 0x10000, 0x1ffff, 0x4000_0000)] {
        assert_eq!(vm.send(&r), Status::Ok);
    }
    let mut c = TranslationClient::connect(&xlate, WAIT).unwrap();
    assert_eq!(
        c.hello(&[(0, 0xffff)]).unwrap().status,
        HelloStatus::Accepted
    );
    let t = c
        .translate(8, None, 0x10000, 0x1000, TranslateFlags::READ)
        .unwrap();
    assert_eq!(t.status, TranslateStatus::Ok);

    // The UNMAP waits for the client's ack, which never comes; the MAP behind it is done but
    // its reply waits too.
    let before = vm.rq.device_used_idx().unwrap();
    let unmap_head = vm
        .rq
        .submit(&chain_of(&unmap(1, 0x10000, 0x1ffff)))
        .unwrap();
    vm.rq.kick(&vm.fe).unwrap();
    c.next_invalidate().unwrap();
    let map_head = vm
        .rq
        .submit(&chain_of(&map(1, 0x50000, 0x50fff, 0)))
        .unwrap();
    vm.rq.kick(&vm.fe).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while vm.stats()["mappings"] != json!(1) {
        assert!(std::time::Instant::now() < deadline, "the MAP is processed");
        std::thread::sleep(Duration::from_millis(1));
    }
    vm.rq.expect_no_used(QUIET).unwrap();
    let mut vm = kill_and_restart(vm, &state, |vm| {
        assert_eq!(
            vm.rq.device_used_idx().unwrap(),
            before,
            "nothing published"
        );
    });
    drop(c);
    let done = vm.rq.wait_used(WAIT).unwrap();
    assert_eq!(done.head, unmap_head);
    assert_eq!(reply_status(&done, 4), Status::Ok);
    let done = vm.rq.wait_used(WAIT).unwrap();
    assert_eq!(done.head, map_head);
    assert_eq!(
        reply_status(&done, 4),
        Status::Ok,
        "answered once, not re-executed"
    );
    vm.rq.expect_no_used(QUIET).unwrap();
    assert_eq!(
        vm.domains(),
        json!([domain(1, &[8], &[mapping(0x50000, 0x50fff, 0, 3)])])
    );
}
