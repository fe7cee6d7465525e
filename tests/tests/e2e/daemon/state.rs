//! Device state between two daemons through the mini-VMM, as a migration does it: state built
//! on daemon A (domains, 10 000 mappings, a bypass domain, a bound VT-d PASID table, a fault
//! and a page request waiting in the event queue), A stopped and SAVEd, the stream LOADed into
//! daemon B before B's rings start at A's bases; then every translation, PROBE, dump and
//! counter of B is A's, and B goes on serving the guest. Corrupt, truncated and mismatched
//! streams are refused with a log line naming the difference, and B keeps what it had.

use std::thread;
use std::time::{Duration, Instant};

use super::vm::*;
use serde_json::{json, Value};
use virtio_iommu_driver::sva::{Perms, X86FirstStage, X86Levels};
use virtio_iommu_e2e::{ControlClient, Daemon};
use virtio_iommu_spec::ext::{PageRespCode, VtdFlags};
use virtio_iommu_spec::{Event, Request, Status};
use virtio_iommu_testkit::GuestHal;

/// The daemons' options: the extensions on, and a page-request timeout far beyond the test.
const ARGS: &[&str] = &["--pasid-bits", "8", "--page-request-timeout-ms", "60000"];
/// Mappings of domain 1.
const MAPPINGS: u64 = 10_000;
/// Mapped VA of PASID 1 of endpoint 16, and an unmapped one.
const VA: u64 = 0x7f00_0000;
const VA_UNMAPPED: u64 = 0x7f40_0000;

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// What A holds besides its daemon: the guest's table (alive while B walks it).
struct Built {
    _table: X86FirstStage<GuestHal>,
    /// The DMA waiting for the page request (its reply comes when A's daemon goes).
    _dma: thread::JoinHandle<()>,
}

fn build(a: &mut Vm) -> Built {
    // The guest turns bypass off (the daemons boot with it on).
    a.fe.set_config(36, &[0]).unwrap();
    // Domain 1: endpoint 8, 10 000 pages.
    assert_eq!(a.send(&attach(1, 8)), Status::Ok);
    let maps: Vec<Request> = (0..MAPPINGS)
        .map(|i| {
            let iova = 0x1_0000_0000 + 0x2000 * i;
            map(1, iova, iova + 0xfff, 0x4000_0000 + 0x1000 * i)
        })
        .collect();
    a.send_all(&maps);
    // Domain 2: endpoints 9 and 10; domain 3: bypass, endpoint 11.
    assert_eq!(a.send(&attach(2, 9)), Status::Ok);
    assert_eq!(a.send(&attach(2, 10)), Status::Ok);
    assert_eq!(a.send(&map(2, 0, 0xf_ffff, 0x20_0000)), Status::Ok);
    assert_eq!(a.send(&attach_bypass(3, 11)), Status::Ok);
    // Domain 4: endpoint 16 with a VT-d table for PASID 1, one page mapped in it.
    assert_eq!(a.send(&attach(4, 16)), Status::Ok);
    let mut table = X86FirstStage::<GuestHal>::new(X86Levels::Four).unwrap();
    let page = memory().alloc_pages(1).unwrap();
    table.map(VA, page, 0x1000, Perms::USER_READ_WRITE).unwrap();
    let desc = table.desc(1, VtdFlags::empty());
    assert_eq!(a.send(&attach_table(4, 16, desc)), Status::Ok);
    // A fault waiting for a buffer (the guest posted none).
    let r = a.cmd("translate", json!({"endpoint": 9, "iova": 0x100_0000}));
    assert_eq!(r["fault"]["reason"], "mapping", "{r}");
    // A device DMA to an unmapped VA: a page request waits in the queue, its group outstanding.
    let mut client = a.daemon.control().unwrap();
    let req = json!({"endpoint": 16, "pasid": 1, "iova": VA_UNMAPPED, "data": hex(&[1; 8])});
    let dma = thread::spawn(move || {
        // Ends with an error when A's daemon is killed: nothing to check.
        let _ = client.cmd("dma-write", req);
    });
    let deadline = Instant::now() + WAIT;
    while a.stats()["page_requests"]["outstanding"] != json!(1) {
        assert!(Instant::now() < deadline, "no page request");
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(a.stats()["events"]["queued"], json!(2));
    Built {
        _table: table,
        _dma: dma,
    }
}

/// Endpoints whose PROBE answers are compared (one unknown).
const PROBED: [u32; 5] = [8, 9, 11, 16, 0x1_0000];

/// Translations compared: a sample of domain 1, all of domain 2, the bypass endpoint, the
/// PASID table.
fn translations(ctl: &mut ControlClient) -> Vec<Value> {
    let mut reqs = Vec::new();
    for i in (0..MAPPINGS).step_by(97) {
        reqs.push(json!({"endpoint": 8, "iova": 0x1_0000_0000 + 0x2000 * i + 0x10, "len": 16}));
    }
    for iova in [0u64, 0x8_0000, 0xf_fff0] {
        for ep in [9, 10] {
            reqs.push(json!({"endpoint": ep, "iova": iova, "access": "write"}));
        }
    }
    reqs.push(json!({"endpoint": 11, "iova": 0x1234_5000}));
    reqs.push(json!({"endpoint": 16, "pasid": 1, "iova": VA + 8, "access": "write"}));
    reqs.into_iter()
        .map(|r| {
            let reply = ctl.cmd("translate", r.clone()).unwrap();
            assert!(reply.get("translation").is_some(), "{r}: {reply}");
            reply
        })
        .collect()
}

/// Daemon B with a frontend connected but not started: where a migration loads.
fn destination(args: &[&str]) -> (Daemon, virtio_iommu_e2e::Frontend) {
    let d = Daemon::spawn(args).expect("daemon B starts");
    let fe = d.connect(memory()).expect("frontend connects to B");
    (d, fe)
}

/// Stops A, saves its state; returns the stream and the ring bases.
fn stop_and_save(a: &mut Vm) -> (Vec<u8>, Vec<Option<u16>>) {
    let bases = a.fe.stop().unwrap();
    let bytes = a.fe.save_state().expect("SAVE");
    (bytes, bases)
}

#[test]
fn a_state_saved_on_one_daemon_loads_on_another() {
    let mut a = Vm::start(ARGS);
    let features = all_features(&a.fe);
    let built = build(&mut a);
    let probes: Vec<_> = PROBED.iter().map(|ep| a.probe(*ep)).collect();
    let config_a = a.fe.get_config(0, 40).unwrap();
    assert_eq!(config_a[36], 0, "bypass, as the guest wrote it");
    let (bytes, bases) = stop_and_save(&mut a);
    assert!(
        a.daemon
            .stderr()
            .contains(&format!("device state: {} bytes saved", bytes.len())),
        "{}",
        a.daemon.stderr()
    );
    // 10 000 mappings of 28 bytes and little else.
    assert!(
        (280_000..300_000).contains(&bytes.len()),
        "{} bytes",
        bytes.len()
    );

    let (b_daemon, mut fe) = destination(ARGS);
    fe.set_ring_config(0, Some(a.rq.config())).unwrap();
    fe.set_ring_config(1, Some(a.eq.config())).unwrap();
    fe.set_ring_base(0, bases[0].unwrap()).unwrap();
    fe.set_ring_base(1, bases[1].unwrap()).unwrap();
    fe.set_driver_features(features);
    fe.load_state(&bytes).expect("LOAD");
    fe.start().unwrap();
    let Vm {
        rq,
        eq,
        fe: _fe_a,
        ctl: mut ctl_a,
        daemon: daemon_a,
    } = a;
    let ctl = b_daemon.control().unwrap();
    let mut b = Vm {
        rq,
        eq,
        fe,
        ctl,
        daemon: b_daemon,
    };
    assert!(b.daemon.stderr().contains("device state: loaded"));

    // The same device.
    let dump_a = ctl_a.cmd("dump", Value::Null).unwrap();
    assert_eq!(dump_a["dump"]["domains"].as_array().unwrap().len(), 4);
    assert_eq!(b.cmd("dump", Value::Null), dump_a);
    let stats_a = ctl_a.cmd("stats", Value::Null).unwrap();
    assert_eq!(stats_a["stats"]["mappings"], json!(MAPPINGS + 1));
    assert_eq!(b.cmd("stats", Value::Null), stats_a);
    assert_eq!(translations(&mut b.ctl), translations(&mut ctl_a));
    assert_eq!(b.fe.get_config(0, 40).unwrap(), config_a);
    for (ep, want) in PROBED.iter().zip(&probes) {
        assert_eq!(&b.probe(*ep), want, "PROBE {ep:#x}");
    }

    // B serves the backlog: the fault, then the page request, which the guest answers on B.
    for _ in 0..2 {
        b.post_event_buffer(48);
    }
    let fault = b.eq.wait_used(WAIT).unwrap();
    let Ok(Event::Fault(f)) = Event::parse(&fault.written[..fault.len as usize]) else {
        panic!("expected the fault: {fault:?}")
    };
    assert_eq!((f.endpoint, f.address), (9, Some(0x100_0000)));
    let pr = b.eq.wait_used(WAIT).unwrap();
    let Ok(Event::PageRequest(p)) = Event::parse(&pr.written[..pr.len as usize]) else {
        panic!("expected the page request: {pr:?}")
    };
    assert_eq!((p.endpoint, p.pasid, p.address), (16, Some(1), VA_UNMAPPED));
    let resp = page_resp(16, Some(1), p.group_id, PageRespCode::Success);
    assert_eq!(b.send(&resp), Status::Ok);
    assert_eq!(b.stats()["page_requests"]["success"], json!(1));
    // And goes on as the device it became: the guest's next requests see A's domains.
    assert_eq!(b.send(&unmap(1, 0x1_0000_0000, 0x1_0000_0fff)), Status::Ok);
    assert_eq!(
        b.send(&map(2, 0, 0xfff, 0)),
        Status::Inval,
        "domain 2 is still mapped"
    );
    assert_eq!(b.stats()["mappings"], json!(MAPPINGS));
    drop(built);
    drop(daemon_a);
}

#[test]
fn refused_streams_leave_the_destination_as_it_was() {
    let mut a = Vm::start(ARGS);
    let _built = build(&mut a);
    let (good, _) = stop_and_save(&mut a);

    let check = |args: &[&str], bytes: &[u8], log: &str| {
        let (b, mut fe) = destination(args);
        let mut ctl = b.control().unwrap();
        let before = (
            ctl.cmd("dump", Value::Null).unwrap(),
            ctl.cmd("stats", Value::Null).unwrap(),
        );
        assert!(fe.load_state(bytes).is_err(), "{log}: LOAD must fail");
        let after = (
            ctl.cmd("dump", Value::Null).unwrap(),
            ctl.cmd("stats", Value::Null).unwrap(),
        );
        assert_eq!(after, before, "{log}: B unchanged");
        let deadline = Instant::now() + WAIT;
        while !b.stderr().contains(log) {
            assert!(Instant::now() < deadline, "no {log:?} in:\n{}", b.stderr());
            thread::sleep(Duration::from_millis(10));
        }
        // The connection is still good: a correct stream loads on it after the refusal.
        if args == ARGS {
            fe.load_state(&good).expect("a good stream after a bad one");
        }
    };
    let mut corrupt = good.clone();
    corrupt[good.len() / 2] ^= 0x40;
    check(ARGS, &corrupt, "device state refused: checksum");
    check(
        ARGS,
        &good[..good.len() / 2],
        "device state refused: the header says",
    );
    check(ARGS, &[], "device state refused: truncated in header");
    check(
        &["--pasid-bits", "16", "--page-request-timeout-ms", "60000"],
        &good,
        "device state refused: PASID bits of endpoints 0x0-0xffff differs: 8 in the stream, 16 on this device",
    );
    check(
        &[ARGS, &["--page-size-mask", "0xffffffffffff0000"]].concat(),
        &good,
        "device state refused: page_size_mask differs",
    );
    check(
        &[ARGS, &["--input-range", "0-0xffffffffffff"]].concat(),
        &good,
        "device state refused: input_range differs",
    );
    check(
        &[ARGS, &["--endpoints", "0-0xff"]].concat(),
        &good,
        "device state refused: endpoint range 0 differs: 0x0-0xffff in the stream, 0x0-0xff",
    );
    check(
        &[ARGS, &["--max-mappings", "20000"]].concat(),
        &good,
        "device state refused: limit max_mappings_per_domain differs",
    );
    let mut future = good.clone();
    future[8] = 2;
    check(
        ARGS,
        &future,
        "device state refused: state version 2 is not supported",
    );
}

/// Domain 1 with eight pages, on a daemon with a state file in `dir`.
fn source(dir: &std::path::Path, name: &str) -> (Vec<String>, Vm) {
    let args = super::restart::args(&dir.join(name));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut vm = Vm::start_logging("info", &a);
    let mut reqs = vec![attach(1, 8)];
    reqs.extend((0..8u64).map(|i| map(1, i << 12, (i << 12) + 0xfff, 0x4000_0000 + (i << 12))));
    vm.send_all(&reqs);
    (args, vm)
}

/// A SAVE completed and the frontend gone without starting the device again is a migration
/// that succeeded: the source releases the guest, its state file too. A SAVE followed by a
/// device start (the migration failed, the guest runs here again) keeps everything.
#[test]
fn the_source_releases_the_guest_once_it_migrated_away() {
    let dir = tempfile::tempdir().unwrap();

    // A failed migration: saved, started again, then the frontend goes.
    let (_, mut a) = source(dir.path(), "failed.state");
    stop_and_save(&mut a);
    a.fe.start().unwrap();
    assert_eq!(
        a.send(&map(1, 0x10_0000, 0x10_0fff, 0x5000_0000)),
        Status::Ok
    );
    let kept = a.dump();
    assert_eq!(
        kept["domains"][0]["mappings"].as_array().map(Vec::len),
        Some(9)
    );
    let Vm {
        fe,
        mut ctl,
        daemon,
        ..
    } = a;
    drop(fe);
    // The serve loop has handled the disconnect once the log says so.
    wait_for(|| daemon.stderr().contains("frontend disconnected"));
    assert_eq!(
        dump(&mut ctl),
        kept,
        "a failed migration keeps the guest's state"
    );
    assert!(
        !daemon.stderr().contains("migrated away"),
        "{}",
        daemon.stderr()
    );
    drop((ctl, daemon));

    // A completed one: saved, and the frontend goes without a start.
    let (args, mut a) = source(dir.path(), "done.state");
    stop_and_save(&mut a);
    let Vm {
        fe,
        mut ctl,
        mut daemon,
        ..
    } = a;
    drop(fe);
    wait_for(|| daemon.stderr().contains("frontend disconnected"));
    assert!(
        daemon
            .stderr()
            .contains("the guest migrated away: releasing its state"),
        "{}",
        daemon.stderr()
    );
    assert_eq!(
        dump(&mut ctl)["domains"],
        json!([]),
        "released after the hand-off"
    );
    // The state file holds the empty device: a daemon started on it has nothing to resume.
    drop(ctl);
    daemon.kill().unwrap();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let again = Daemon::spawn(&a).expect("daemon restarts");
    let mut ctl = again.control().unwrap();
    assert_eq!(dump(&mut ctl)["domains"], json!([]));
}

fn dump(ctl: &mut ControlClient) -> Value {
    ctl.request(&json!({"cmd": "dump"})).expect("dump")["dump"].clone()
}

/// Waits for `done`, at most 5 s.
fn wait_for(done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(done(), "timed out");
}
