//! The daemon's control socket (stats, dump, translate, DMA, errors) and the fault events it
//! makes the device raise on the event queue.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

use super::vm::*;
use serde_json::{json, Value};
use virtio_iommu_spec::event::FaultFlags;
use virtio_iommu_spec::request::MapFlags;
use virtio_iommu_spec::{FaultEvent, FaultReason, Status};
use virtio_iommu_testkit::rawq::POISON;

/// The 24-byte upstream fault record, written out by hand.
fn fault_record(reason: u8, flags: u32, endpoint: u32, address: u64) -> Vec<u8> {
    let mut r = vec![reason, 0, 0, 0];
    r.extend_from_slice(&flags.to_le_bytes());
    r.extend_from_slice(&endpoint.to_le_bytes());
    r.extend_from_slice(&[0; 4]);
    r.extend_from_slice(&address.to_le_bytes());
    r
}

/// READ | ADDRESS and WRITE | ADDRESS, as the record's flags field holds them.
const READ_ADDR: u32 = 0x101;
const WRITE_ADDR: u32 = 0x102;

fn fault_json(reason: &str, flags: u32, endpoint: u32, address: u64) -> Value {
    json!({"reason": reason, "flags": flags, "endpoint": endpoint, "address": address,
           "pasid": null})
}

#[test]
fn faults_land_in_event_buffers() {
    let mut vm = Vm::start(&[]);
    let gpa = memory().alloc_pages(1).unwrap();
    assert_eq!(vm.send(&attach(1, 5)), Status::Ok);
    assert_eq!(vm.send(&map(1, 0x10000, 0x10fff, gpa)), Status::Ok);
    vm.post_event_buffer(24);
    vm.post_event_buffer(48);
    vm.eq.expect_no_used(QUIET).unwrap();

    // Unmapped IOVA of an attached endpoint: MAPPING, in the 24-byte buffer.
    let r = vm.cmd("translate", json!({"endpoint": 5, "iova": 0x20000}));
    assert_eq!(r["fault"], fault_json("mapping", 1, 5, 0x20000));
    let c = vm.eq.wait_used(WAIT).unwrap();
    assert_eq!(c.len, 24);
    assert_eq!(c.written, fault_record(2, READ_ADDR, 5, 0x20000));

    // Unattached endpoint with bypass off: DOMAIN; a 48-byte buffer gets the 24-byte record
    // (PAGE_REQUEST is not offered).
    vm.fe.set_config(36, &[0]).unwrap();
    let r = vm.cmd(
        "translate",
        json!({"endpoint": 7, "iova": "0x3000", "access": "write"}),
    );
    assert_eq!(r["fault"], fault_json("domain", 2, 7, 0x3000));
    let c = vm.eq.wait_used(WAIT).unwrap();
    assert_eq!(c.len, 24);
    assert_eq!(c.written[..24], fault_record(1, WRITE_ADDR, 7, 0x3000));
    assert_eq!(c.written[24..], [POISON; 24]);

    // Faults raised while no buffer is posted wait, in order, for the next buffers.
    let r = vm.cmd(
        "dma-write",
        json!({"endpoint": 5, "iova": 0x40000, "data": "00"}),
    );
    assert_eq!(r["fault"], fault_json("mapping", 2, 5, 0x40000));
    let r = vm.cmd(
        "dma-read",
        json!({"endpoint": 9, "iova": 0x50000, "len": 2}),
    );
    assert_eq!(r["fault"], fault_json("domain", 1, 9, 0x50000));
    vm.eq.expect_no_used(QUIET).unwrap();
    assert_eq!(
        vm.stats()["events"],
        json!({"queued": 4, "delivered": 2, "dropped": 0, "page_requests_failed": 0})
    );
    // A buffer too small for any record is returned empty; the event stays queued.
    vm.post_event_buffer(16);
    let c = vm.eq.wait_used(WAIT).unwrap();
    assert_eq!((c.len, c.written), (0, vec![POISON; 16]));
    // So is a buffer with a device-readable part.
    let odd = virtio_iommu_testkit::Chain::new()
        .readable(vec![1])
        .writable(24);
    vm.eq.submit(&odd).unwrap();
    vm.eq.kick(&vm.fe).unwrap();
    let c = vm.eq.wait_used(WAIT).unwrap();
    assert_eq!((c.len, c.written), (0, vec![POISON; 24]));
    vm.post_event_buffer(24);
    let c = vm.eq.wait_used(WAIT).unwrap();
    assert_eq!(
        (c.len, c.written),
        (24, fault_record(2, WRITE_ADDR, 5, 0x40000))
    );
    vm.post_event_buffer(24);
    let c = vm.eq.wait_used(WAIT).unwrap();
    assert_eq!(
        (c.len, c.written),
        (24, fault_record(1, READ_ADDR, 9, 0x50000))
    );
    assert_eq!(vm.stats()["events"]["delivered"], json!(4));
    memory().free_pages(gpa, 1).unwrap();
}

#[test]
fn extended_records_with_page_requests_negotiated() {
    let mut vm = Vm::start(&["--pasid-bits", "8"]);
    assert_eq!(vm.send(&attach(1, 5)), Status::Ok);
    vm.post_event_buffer(48);
    vm.post_event_buffer(24);
    vm.cmd("translate", json!({"endpoint": 5, "iova": 0x7000}));
    vm.cmd("translate", json!({"endpoint": 5, "iova": 0x8000}));
    let c = vm.eq.wait_used(WAIT).unwrap();
    assert_eq!(c.len, 48);
    let mut want = fault_record(2, READ_ADDR, 5, 0x7000);
    want.resize(48, 0);
    assert_eq!(c.written, want);
    let ev = FaultEvent {
        reason: FaultReason::Mapping,
        access: FaultFlags::READ,
        endpoint: 5,
        address: Some(0x7000),
        pasid: None,
    };
    assert_eq!(c.written, ev.encode_ext());
    // The 24-byte buffer still gets the upstream record.
    let c = vm.eq.wait_used(WAIT).unwrap();
    assert_eq!(
        (c.len, c.written),
        (24, fault_record(2, READ_ADDR, 5, 0x8000))
    );
}

#[test]
fn dma_through_a_mapping() {
    let mut vm = Vm::start(&[]);
    let gpa = memory().alloc_pages(2).unwrap();
    assert_eq!(vm.send(&attach(1, 5)), Status::Ok);
    assert_eq!(vm.send(&map(1, 0x10000, 0x10fff, gpa + 0x1000)), Status::Ok);
    let ro = map_flags(1, 0x20000, 0x20fff, gpa, MapFlags::READ);
    assert_eq!(vm.send(&ro), Status::Ok);

    let r = vm.cmd(
        "dma-write",
        json!({"endpoint": 5, "iova": 0x10010, "data": "deadbeef"}),
    );
    assert_eq!(r, json!({"ok": true}));
    assert_eq!(
        memory().read_vec(gpa + 0x1010, 4).unwrap(),
        [0xde, 0xad, 0xbe, 0xef]
    );
    assert_eq!(
        memory().read_vec(gpa + 0x100c, 4).unwrap(),
        [0; 4],
        "nothing else"
    );

    memory().write(gpa + 0x100, &[1, 2, 3, 4, 5]).unwrap();
    let r = vm.cmd(
        "dma-read",
        json!({"endpoint": 5, "iova": "0x20100", "len": 5}),
    );
    assert_eq!(r, json!({"ok": true, "data": "0102030405"}));
    let r = vm.cmd(
        "dma-read",
        json!({"endpoint": 5, "iova": 0x10010, "len": 4}),
    );
    assert_eq!(r["data"], "deadbeef");

    // A read-only mapping refuses writes, and the guest memory stays as it was.
    let r = vm.cmd(
        "dma-write",
        json!({"endpoint": 5, "iova": 0x20100, "data": "ff"}),
    );
    assert_eq!(r["fault"], fault_json("mapping", 2, 5, 0x20100));
    assert_eq!(memory().read_vec(gpa + 0x100, 1).unwrap(), [1]);
    // Unmapped: nothing reaches guest memory.
    assert_eq!(vm.send(&unmap(1, 0x10000, 0x10fff)), Status::Ok);
    let r = vm.cmd(
        "dma-write",
        json!({"endpoint": 5, "iova": 0x10010, "data": "00"}),
    );
    assert_eq!(r["fault"], fault_json("mapping", 2, 5, 0x10010));
    assert_eq!(memory().read_vec(gpa + 0x1010, 1).unwrap(), [0xde]);
    // An unattached endpoint in bypass (the boot default) reaches the GPA directly.
    let r = vm.cmd(
        "dma-read",
        json!({"endpoint": 6, "iova": gpa + 0x1010, "len": 4}),
    );
    assert_eq!(r["data"], "deadbeef");
    memory().free_pages(gpa, 2).unwrap();
}

fn counters(set: &[(&str, u64)]) -> Value {
    let mut c = json!({"ok": 0, "ioerr": 0, "unsupp": 0, "deverr": 0, "inval": 0, "range": 0,
                       "noent": 0, "fault": 0, "nomem": 0, "no_reply": 0});
    for (k, v) in set {
        c[*k] = json!(v);
    }
    c
}

#[test]
fn stats_dump_and_translate() {
    let mut vm = Vm::start(&[]);
    let sent = [
        (attach(1, 1), Status::Ok),
        (attach(1, 2), Status::Ok),
        (attach(1, 9), Status::Ok),
        (detach(1, 9), Status::Ok),
        (detach(1, 9), Status::Inval),
        (map(1, 0x10000, 0x11fff, 0x4000_0000), Status::Ok),
        (map(1, 0x20000, 0x20fff, 0x5000_0000), Status::Ok),
        (map(1, 0x11000, 0x11fff, 0), Status::Inval),
        (map(1, 0x30000, 0x30fff, 1), Status::Range),
        (unmap(2, 0, 0xfff), Status::NoEnt),
        (unmap(1, 0x30000, 0x3ffff), Status::Ok),
    ];
    for (req, status) in &sent {
        assert_eq!(vm.send(req), *status, "{req:?}");
    }
    assert_eq!(vm.probe(1).0, Status::Ok);
    let c = vm.submit(&virtio_iommu_testkit::Chain::request(&[42; 20], 4));
    assert_eq!(c.len, 0);

    let s = vm.stats();
    assert_eq!(s["attach"], counters(&[("ok", 3)]));
    assert_eq!(s["detach"], counters(&[("ok", 1), ("inval", 1)]));
    assert_eq!(s["map"], counters(&[("ok", 2), ("inval", 1), ("range", 1)]));
    assert_eq!(s["unmap"], counters(&[("ok", 1), ("noent", 1)]));
    assert_eq!(s["probe"], counters(&[("ok", 1)]));
    assert_eq!(s["page_resp"], counters(&[]));
    assert_eq!(s["unknown_type"], json!(1));
    assert_eq!(
        (
            &s["domains"],
            &s["mappings"],
            &s["attached_endpoints"],
            &s["tables"]
        ),
        (&json!(1), &json!(2), &json!(2), &json!(0))
    );

    assert_eq!(
        vm.dump(),
        json!({"bypass": true, "domains": [domain(1, &[1, 2], &[
            mapping(0x10000, 0x11fff, 0x4000_0000, 3),
            mapping(0x20000, 0x20fff, 0x5000_0000, 3),
        ])]})
    );

    // Translations: the GPA, and the length cut at the end of the mapping.
    let r = vm.cmd(
        "translate",
        json!({"endpoint": 2, "iova": "0x10800", "len": 0x1000}),
    );
    assert_eq!(
        r,
        json!({"ok": true, "translation": {"gpa": 0x4000_0800u64, "len": 0x1000}})
    );
    let r = vm.cmd(
        "translate",
        json!({"endpoint": 1, "iova": 0x10800, "len": 0x10000, "access": "write"}),
    );
    assert_eq!(
        r["translation"],
        json!({"gpa": 0x4000_0800u64, "len": 0x1800})
    );
    let r = vm.cmd("translate", json!({"endpoint": 1, "iova": 0x20fff}));
    assert_eq!(r["translation"], json!({"gpa": 0x5000_0fffu64, "len": 1}));
    // The MSI window passes through untranslated.
    let r = vm.cmd(
        "translate",
        json!({"endpoint": 1, "iova": 0xfee0_0000u64, "len": 4}),
    );
    assert_eq!(r["translation"], json!({"gpa": 0xfee0_0000u64, "len": 4}));
}

#[test]
fn control_errors_keep_the_connection() {
    let vm = Vm::start(&[]);
    let stream = UnixStream::connect(vm.daemon.control_socket()).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut ask = |line: &str| -> Value {
        writer.write_all(line.as_bytes()).unwrap();
        writer.write_all(b"\n").unwrap();
        let mut reply = String::new();
        reader.read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap()
    };
    let err = |e: &str| json!({"ok": false, "error": e});

    let r = ask("this is not json");
    assert_eq!(r["ok"], json!(false));
    assert!(r["error"].as_str().unwrap().starts_with("bad JSON"), "{r}");
    assert_eq!(ask("{}"), err("missing `cmd`"));
    assert_eq!(ask(r#"{"cmd": 5}"#), err("missing `cmd`"));
    assert_eq!(
        ask(r#"{"cmd": "frobnicate"}"#),
        err("unknown command `frobnicate`")
    );
    assert_eq!(
        ask(r#"{"cmd": "translate", "iova": 0}"#),
        err("missing `endpoint`")
    );
    assert_eq!(
        ask(r#"{"cmd": "translate", "endpoint": 1}"#),
        err("missing `iova`")
    );
    assert_eq!(
        ask(r#"{"cmd": "translate", "endpoint": 4294967296, "iova": 0}"#),
        err("`endpoint` must fit in 32 bits")
    );
    assert_eq!(
        ask(r#"{"cmd": "translate", "endpoint": 1, "iova": -1}"#),
        err("`iova` must be a u64")
    );
    assert_eq!(
        ask(r#"{"cmd": "translate", "endpoint": 1, "iova": [0]}"#),
        err("`iova` must be a number")
    );
    assert_eq!(
        ask(r#"{"cmd": "translate", "endpoint": 1, "iova": 0, "access": "exec"}"#),
        err("unknown access `exec` (read or write)")
    );
    assert_eq!(
        ask(r#"{"cmd": "dma-read", "endpoint": 1, "iova": 0}"#),
        err("missing `len`")
    );
    assert_eq!(
        ask(r#"{"cmd": "dma-read", "endpoint": 1, "iova": 0, "len": 1048577}"#),
        err("`len` is at most 1048576")
    );
    assert_eq!(
        ask(r#"{"cmd": "dma-write", "endpoint": 1, "iova": 0}"#),
        err("missing `data`")
    );
    assert_eq!(
        ask(r#"{"cmd": "dma-write", "endpoint": 1, "iova": 0, "data": "abc"}"#),
        err("`data` must have an even number of hex digits")
    );
    assert_eq!(
        ask(r#"{"cmd": "dma-write", "endpoint": 1, "iova": 0, "data": "zz"}"#),
        err("`data` is not hex")
    );
    // Still the same connection, still answering.
    let r = ask(r#"{"cmd": "dump"}"#);
    assert_eq!(
        r,
        json!({"ok": true, "dump": {"bypass": true, "domains": []}})
    );
}

/// At most `--max-control-clients` clients at once: one more gets one error line and is
/// closed (no thread for it), the refusals are logged rate-limited, the served clients keep
/// working, and a freed place serves a new client.
#[test]
fn control_clients_are_capped() {
    let d = virtio_iommu_e2e::Daemon::spawn(&["--max-control-clients", "8"]).unwrap();
    let mut clients: Vec<_> = (0..8)
        .map(|_| {
            let mut c = d.control().unwrap();
            assert_eq!(c.cmd("stats", Value::Null).unwrap()["ok"], json!(true));
            c
        })
        .collect();
    let threads = thread_count(d.pid());
    for _ in 0..30 {
        let s = UnixStream::connect(d.control_socket()).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            json!({"ok": false, "error": "too many control clients (at most 8)"})
        );
        line.clear();
        assert_eq!(r.read_line(&mut line).unwrap(), 0, "closed after the error");
    }
    // A refusal's handler may still be on its way out when the client sees the close: the
    // count comes back to the baseline within a bound, and never grows with the refusals.
    let deadline = std::time::Instant::now() + WAIT;
    while thread_count(d.pid()) > threads {
        assert!(
            std::time::Instant::now() < deadline,
            "{} threads after 30 refusals, {threads} before",
            thread_count(d.pid())
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for c in &mut clients {
        assert_eq!(c.cmd("stats", Value::Null).unwrap()["ok"], json!(true));
    }
    let logged = d.stderr().matches("refusing one more").count();
    assert!((1..=10).contains(&logged), "{logged} refusal lines logged");

    // The daemon sees the close asynchronously: the place comes back within a bound.
    drop(clients.pop());
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        // A refused client may see the close before its request is written (EPIPE).
        let mut c = d.control().unwrap();
        let r = c.cmd("stats", Value::Null);
        if matches!(&r, Ok(v) if v["ok"] == json!(true)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no place freed: {r:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
