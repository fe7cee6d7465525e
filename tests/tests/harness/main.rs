//! Self-tests of the mini-VMM harness against an in-test mock backend (no real daemon needed).

mod mock;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use vhost::vhost_user::VhostUserProtocolFeatures;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{DeviceStatus, InterruptStatus, Transport};
use virtio_iommu_e2e::frontend::{CONNECT_TIMEOUT, PROTOCOL_FEATURES_BIT};
use virtio_iommu_e2e::watchdog::run_with_timeout;
use virtio_iommu_e2e::{ControlClient, Daemon, Frontend, VhostUserTransport};
use virtio_iommu_spec::config::BYPASS_OFFSET;
use virtio_iommu_spec::VIRTIO_ID_IOMMU;
use virtio_iommu_testkit::rawq::{Chain, RawQueue, DESC_F_WRITE, POISON};
use virtio_iommu_testkit::{GuestHal, GuestMemory};
use zerocopy::IntoBytes;

use mock::{MockServer, Seen, STATUS, VIRTIO_FEATURES};

const WAIT: Duration = Duration::from_secs(10);

fn init_log() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// A private 16 MiB guest RAM (rawq tests do not need the global one).
fn private_memory() -> Arc<GuestMemory> {
    Arc::new(GuestMemory::new(0x1_0000_0000, 16 << 20).unwrap())
}

/// Connects and starts both rings on raw queues of `size` entries.
fn started(server: &MockServer, size: u16) -> (Frontend, RawQueue, RawQueue) {
    let mem = private_memory();
    let mut fe = Frontend::connect(server.path(), mem.clone(), CONNECT_TIMEOUT).unwrap();
    let rq = RawQueue::new(mem.clone(), 0, size).unwrap();
    let eq = RawQueue::new(mem, 1, size).unwrap();
    fe.configure(VIRTIO_FEATURES, &[(0, rq.config()), (1, eq.config())])
        .unwrap();
    (fe, rq, eq)
}

fn seen(queue: u16, readable: &[u8], writable: &[u32]) -> Seen {
    Seen {
        queue,
        readable: readable.to_vec(),
        writable: writable.to_vec(),
    }
}

#[test]
fn handshake_features_and_config() {
    init_log();
    let server = MockServer::start();
    let mut fe = Frontend::connect(server.path(), private_memory(), CONNECT_TIMEOUT).unwrap();
    assert_eq!(
        fe.device_features(),
        VIRTIO_FEATURES | PROTOCOL_FEATURES_BIT
    );
    assert_eq!(
        fe.protocol_features(),
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
    );
    assert_eq!(fe.num_queues(), 2);

    let initial = mock::initial_config();
    assert_eq!(fe.get_config(0, 40).unwrap(), initial.as_bytes());
    assert_eq!(fe.get_config(8, 8).unwrap(), initial.as_bytes()[8..16]);
    // (No out-of-range GET_CONFIG here: vhost 0.18's frontend blocks on the backend's
    // payload-less error reply until the read timeout, then the connection is out of step.)

    fe.set_config(36, &[0]).unwrap();
    assert_eq!(fe.get_config(36, 1).unwrap(), [0]);
    assert_eq!(server.state.lock().unwrap().config_writes, [(36, vec![0])]);

    // SET_FEATURES carries PROTOCOL_FEATURES so rings wait for SET_VRING_ENABLE.
    fe.set_features(VIRTIO_FEATURES).unwrap();
    // REPLY_ACK makes SET_FEATURES synchronous, so the backend has it by now.
    assert_eq!(
        server.state.lock().unwrap().acked_features,
        VIRTIO_FEATURES | PROTOCOL_FEATURES_BIT
    );
}

#[test]
fn rawq_request_and_used_ring() {
    init_log();
    let server = MockServer::start();
    let (fe, mut rq, _eq) = started(&server, 16);

    let c = rq
        .submit_wait(&fe, &Chain::request(b"hello", 8), WAIT)
        .unwrap();
    assert_eq!(c.len, 8);
    assert_eq!(c.written, [POISON, POISON, POISON, POISON, STATUS, 0, 0, 0]);
    assert_eq!(c.used_bytes(), c.written);
    assert!(fe.wait_call(0, WAIT).unwrap(), "used-buffer notification");
    assert!(!fe.take_call(0).unwrap(), "call eventfd consumed");
    assert_eq!((rq.avail_idx(), rq.last_used_idx()), (1, 1));
    assert_eq!(rq.device_used_idx().unwrap(), 1);
    assert_eq!(rq.in_flight(), 0);
    assert_eq!(server.seen(), [seen(0, b"hello", &[8])]);
}

#[test]
fn rawq_chain_shapes() {
    init_log();
    let server = MockServer::start();
    let (fe, mut rq, mut eq) = started(&server, 8);
    let req: Vec<u8> = (1..=10).collect();

    // Readable part over three descriptors, writable part over three (status spans two).
    let split = Chain::new()
        .readable_split(&req, &[1, 4])
        .writable_split(&[2, 1, 3]);
    assert_eq!(split.segments.len(), 6);
    let c = rq.submit_wait(&fe, &split, WAIT).unwrap();
    assert_eq!(
        (c.len, c.written),
        (6, vec![POISON, POISON, STATUS, 0, 0, 0])
    );

    // The same through an indirect table.
    let c = rq
        .submit_wait(&fe, &split.clone().indirect(), WAIT)
        .unwrap();
    assert_eq!(
        (c.len, c.written),
        (6, vec![POISON, POISON, STATUS, 0, 0, 0])
    );

    // No writable part; a zero-length writable part; too short a writable part.
    let c = rq
        .submit_wait(&fe, &Chain::new().readable(&req[..]), WAIT)
        .unwrap();
    assert_eq!((c.len, c.written), (0, vec![]));
    let c = rq
        .submit_wait(&fe, &Chain::new().readable(&req[..]).writable(0), WAIT)
        .unwrap();
    assert_eq!((c.len, c.written), (0, vec![]));
    let c = rq.submit_wait(&fe, &Chain::request(&req, 3), WAIT).unwrap();
    assert_eq!((c.len, c.written), (0, vec![POISON; 3]));

    // Wrong order: writable first, readable after (the device sees both parts anyway).
    let c = rq
        .submit_wait(&fe, &Chain::new().writable(4).readable(&req[..2]), WAIT)
        .unwrap();
    assert_eq!((c.len, c.written), (4, vec![STATUS, 0, 0, 0]));

    // A raw writable descriptor at a buffer the test placed itself.
    let buf = rq_buffer(&fe);
    let c = rq
        .submit_wait(
            &fe,
            &Chain::request(b"x", 4).raw(buf, 4, DESC_F_WRITE),
            WAIT,
        )
        .unwrap();
    assert_eq!((c.len, c.written), (8, vec![POISON; 4]));
    assert_eq!(fe.memory().read_vec(buf, 4).unwrap(), [STATUS, 0, 0, 0]);
    fe.memory().free_pages(buf, 1).unwrap();

    // The event queue works the same way: device-writable buffers only.
    let c = eq
        .submit_wait(&fe, &Chain::new().writable(8), WAIT)
        .unwrap();
    assert_eq!(
        (c.len, c.written),
        (8, vec![POISON, POISON, POISON, POISON, STATUS, 0, 0, 0])
    );

    assert_eq!(
        server.seen(),
        [
            seen(0, &req, &[2, 1, 3]),
            seen(0, &req, &[2, 1, 3]),
            seen(0, &req, &[]),
            seen(0, &req, &[0]),
            seen(0, &req, &[3]),
            seen(0, &req[..2], &[4]),
            seen(0, b"x", &[4, 4]),
            seen(1, b"", &[8]),
        ]
    );
    // More than the ring holds in flight is refused, not overwritten.
    for _ in 0..4 {
        rq.submit(&Chain::request(b"q", 4)).unwrap();
    }
    assert!(rq.submit(&Chain::request(b"q", 4)).is_err());
    rq.kick(&fe).unwrap();
    for _ in 0..4 {
        assert_eq!(rq.wait_used(WAIT).unwrap().len, 4);
    }
}

fn rq_buffer(fe: &Frontend) -> u64 {
    let gpa = fe.memory().alloc_pages(1).unwrap();
    fe.memory().fill(gpa, 4, 0xee).unwrap();
    gpa
}

#[test]
fn pause_resume_keeps_ring_positions() {
    init_log();
    let server = MockServer::start();
    let (mut fe, mut rq, _eq) = started(&server, 16);
    for _ in 0..3 {
        rq.submit_wait(&fe, &Chain::request(b"a", 4), WAIT).unwrap();
    }
    // Stopped: a request is not processed.
    assert_eq!(fe.stop().unwrap(), [Some(3), Some(0)]);
    assert!(!fe.ring_running(0).unwrap());
    rq.submit(&Chain::request(b"b", 4)).unwrap();
    rq.kick(&fe).unwrap();
    rq.expect_no_used(Duration::from_millis(100)).unwrap();
    // Resumed at the saved base: the pending request, then a new one.
    fe.start().unwrap();
    assert_eq!(fe.ring_next_base(0).unwrap(), 3);
    rq.kick(&fe).unwrap();
    assert_eq!(rq.wait_used(WAIT).unwrap().len, 4);
    rq.submit_wait(&fe, &Chain::request(b"c", 4), WAIT).unwrap();
    assert_eq!(fe.pause_resume().unwrap(), [Some(5), Some(0)]);
    rq.submit_wait(&fe, &Chain::request(b"d", 4), WAIT).unwrap();
    assert_eq!(rq.avail_idx(), 6);
    let reqs: Vec<Vec<u8>> = server.seen().into_iter().map(|s| s.readable).collect();
    assert_eq!(reqs, [b"a", b"a", b"a", b"b", b"c", b"d"]);
}

#[test]
fn guest_reset_restarts_rings_at_zero() {
    init_log();
    let server = MockServer::start();
    let (mut fe, mut rq, _eq) = started(&server, 16);
    for _ in 0..2 {
        rq.submit_wait(&fe, &Chain::request(b"a", 4), WAIT).unwrap();
    }
    let bases = fe.guest_reset(|| rq.reset()).unwrap();
    assert_eq!(bases, [Some(2), Some(0)]);
    assert_eq!(fe.ring_next_base(0).unwrap(), 0);
    assert_eq!((rq.avail_idx(), rq.device_used_idx().unwrap()), (0, 0));
    let c = rq.submit_wait(&fe, &Chain::request(b"z", 8), WAIT).unwrap();
    assert_eq!(c.written, [POISON, POISON, POISON, POISON, STATUS, 0, 0, 0]);
    assert_eq!(rq.device_used_idx().unwrap(), 1);
    assert_eq!(server.seen().len(), 3);
}

#[test]
fn reconnect() {
    init_log();
    let server = MockServer::start();
    for round in 0..3u8 {
        let (fe, mut rq, _eq) = started(&server, 16);
        let c = rq
            .submit_wait(&fe, &Chain::request(&[round], 4), WAIT)
            .unwrap();
        assert_eq!(c.written, [STATUS, 0, 0, 0]);
        // `fe` drops here: the connection closes and the mock serves the next one.
    }
    let reqs: Vec<Vec<u8>> = server.seen().into_iter().map(|s| s.readable).collect();
    assert_eq!(reqs, [[0], [1], [2]]);
}

#[test]
fn connect_retries_while_backend_starts() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("late.sock");
    let server = MockServer::start_at(dir, path.clone(), Duration::from_millis(300));
    let fe = Frontend::connect(&path, private_memory(), CONNECT_TIMEOUT).unwrap();
    assert_eq!(fe.num_queues(), 2);
    drop(fe);
    drop(server);
    let missing = tempfile::tempdir().unwrap().path().join("none.sock");
    let err = Frontend::connect(&missing, private_memory(), Duration::from_millis(100));
    assert!(err.is_err());
}

/// virtio-drivers' own `VirtQueue` over the `Transport` + `Hal`, as a guest driver uses them.
#[test]
fn transport_and_hal_with_virtqueue() {
    init_log();
    let server = MockServer::start();
    let fe = Frontend::connect(server.path(), GuestMemory::global(), CONNECT_TIMEOUT).unwrap();
    let mut t = VhostUserTransport::new(fe, VIRTIO_ID_IOMMU, 40).unwrap();
    assert_eq!(
        t.device_type(),
        virtio_drivers::transport::DeviceType::IOMMU
    );
    assert_eq!(t.read_device_features(), VIRTIO_FEATURES);

    // Config space through the transport: whole-space reads and writes, like QEMU.
    let mask: u64 = t.read_config_space(0).unwrap();
    assert_eq!(mask, 0xffff_ffff_ffff_f000);
    let bypass: u8 = t.read_config_space(BYPASS_OFFSET).unwrap();
    assert_eq!(bypass, 1);
    t.write_config_space(BYPASS_OFFSET, 0u8).unwrap();
    let bypass: u8 = t.read_config_space(BYPASS_OFFSET).unwrap();
    assert_eq!(bypass, 0);
    assert!(
        t.read_config_space::<u64>(36).is_err(),
        "read past the config space"
    );
    {
        let st = server.state.lock().unwrap();
        assert_eq!(st.config_writes.len(), 1);
        let (offset, bytes) = &st.config_writes[0];
        assert_eq!((*offset, bytes.len(), bytes[BYPASS_OFFSET]), (0, 40, 0));
    }

    let free_before = GuestMemory::global().free_page_count();
    let t = run_with_timeout(WAIT, "virtio-drivers request", move || {
        let mut t = t;
        for round in 0..2u8 {
            // begin_init writes status 0 first: on the second round that is a device reset,
            // which stops the backend; DRIVER_OK then restarts every ring at base 0.
            let negotiated = t.begin_init(Features::from_bits_retain(VIRTIO_FEATURES));
            assert_eq!(negotiated.bits(), VIRTIO_FEATURES);
            let mut q = VirtQueue::<GuestHal, 16>::new(&mut t, 0, false, false).unwrap();
            t.finish_init();
            assert!(t.take_error().is_none());
            assert!(t.frontend().ring_running(0).unwrap());
            assert!(
                !t.frontend().ring_running(1).unwrap(),
                "queue 1 never set up"
            );
            for i in 0..3u8 {
                let req = [round, i, 0xcc];
                let mut resp = [0xeeu8; 8];
                let len = q
                    .add_notify_wait_pop(&[&req], &mut [&mut resp], &mut t)
                    .unwrap();
                assert_eq!(len, 8);
                assert_eq!(resp, [0xee, 0xee, 0xee, 0xee, STATUS, 0, 0, 0]);
            }
            // The backend signals the call eventfd right after it publishes the used entry, so
            // the last call may land just after the driver saw its reply: drain (bounded) until
            // a queue interrupt was seen and a further ack finds nothing.
            let deadline = std::time::Instant::now() + WAIT;
            let mut seen = false;
            loop {
                let st = t.ack_interrupt();
                if st.is_empty() && seen {
                    break;
                }
                assert!(st.is_empty() || st == InterruptStatus::QUEUE_INTERRUPT);
                seen |= st == InterruptStatus::QUEUE_INTERRUPT;
                assert!(std::time::Instant::now() < deadline, "no queue interrupt");
                std::thread::yield_now();
            }
            t.set_status(DeviceStatus::empty());
            assert_eq!(t.get_status(), DeviceStatus::empty());
            assert!(
                !t.frontend().ring_running(0).unwrap(),
                "reset stops the ring"
            );
            drop(q);
        }
        assert_eq!(t.driver_features(), VIRTIO_FEATURES);
        t
    })
    .unwrap();
    drop(t);
    // Queue pages and bounce buffers all went back (this is the only test in this binary that
    // uses the global guest RAM).
    assert_eq!(GuestMemory::global().free_page_count(), free_before);
    let seen = server.seen();
    assert_eq!(seen.len(), 6);
    assert_eq!(
        seen[4],
        mock::Seen {
            queue: 0,
            readable: vec![1, 1, 0xcc],
            writable: vec![8]
        }
    );
}

bitflags::bitflags! {
    /// Every feature bit, so `begin_init` negotiates exactly what the device offers.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Features: u64 {
        const _ = !0;
    }
}

#[test]
fn control_client_line_protocol() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        let mut line = String::new();
        while r.read_line(&mut line).unwrap() > 0 {
            let req: serde_json::Value = serde_json::from_str(&line).unwrap();
            let reply = json!({"ok": true, "echo": req});
            writeln!(w, "{reply}").unwrap();
            line.clear();
        }
    });
    let mut c = ControlClient::connect(&path, CONNECT_TIMEOUT).unwrap();
    let r = c.cmd("stats", serde_json::Value::Null).unwrap();
    assert_eq!(r, json!({"ok": true, "echo": {"cmd": "stats"}}));
    let r = c
        .cmd("translate", json!({"endpoint": 8, "iova": 4096}))
        .unwrap();
    assert_eq!(
        r["echo"],
        json!({"cmd": "translate", "endpoint": 8, "iova": 4096})
    );
    assert!(c.cmd("x", json!([1])).is_err(), "args must be an object");
    drop(c);
    server.join().unwrap();
}

#[test]
fn daemon_process_args_stderr_and_kill() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake-daemon");
    std::fs::write(&fake, "#!/bin/sh\necho \"started $*\" >&2\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut d = Daemon::spawn_binary(&fake, &["--extra", "1"]).unwrap();
    let want = format!(
        "started --socket-path {} --control-socket {} --extra 1\n",
        d.socket().display(),
        d.control_socket().display()
    );
    let deadline = std::time::Instant::now() + WAIT;
    while d.stderr() != want && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(d.stderr(), want);
    assert!(d.try_wait().unwrap().is_none(), "still running");
    let pid = d.pid();
    let dir_path = d.dir().to_path_buf();
    drop(d);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "killed and reaped"
    );
    assert!(!dir_path.exists(), "tempdir removed");
}
