//! The daemon across connections and ring restarts: reconnects start from a reset device and
//! leak no fds; a guest reset drops the domains while a VM pause keeps them; the daemon also
//! runs in-process through the library, and SIGTERM ends it cleanly.

use std::sync::atomic::Ordering;

use super::vm::*;
use serde_json::{json, Value};
use vhost_device_iommu::args::{DaemonConfig, HostKind};
use vhost_device_iommu::engine::EngineConfig;
use virtio_iommu_e2e::watchdog::run_with_timeout;
use virtio_iommu_e2e::{ControlClient, Daemon, Frontend};
use virtio_iommu_spec::{Request, Status};
use virtio_iommu_testkit::RawQueue;

/// One started connection: frontend and raw queues.
struct Guest {
    rq: RawQueue,
    /// Kept so that the event ring stays allocated while the device uses it.
    _eq: RawQueue,
    fe: Frontend,
}

impl Guest {
    fn connect(path: &std::path::Path) -> Guest {
        let mem = memory();
        let mut fe = Frontend::connect(path, mem.clone(), WAIT).expect("frontend connects");
        let rq = RawQueue::new(mem.clone(), 0, 16).unwrap();
        let eq = RawQueue::new(mem, 1, 16).unwrap();
        fe.configure(all_features(&fe), &[(0, rq.config()), (1, eq.config())])
            .expect("device starts");
        Guest { rq, _eq: eq, fe }
    }

    fn send(&mut self, req: &Request) -> Status {
        let c = self.rq.submit_wait(&self.fe, &chain_of(req), WAIT).unwrap();
        reply_status(&c, req.writable_len(PROBE_SIZE))
    }
}

/// Inode of the socket listening at `path` (`__SO_ACCEPTCON` in /proc/net/unix), if any.
fn listener_inode(path: &std::path::Path) -> Option<u64> {
    let path = path.to_str().unwrap();
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    table.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() == 8 && f[3] == "00010000" && f[7] == path)
            .then(|| f[6].parse().ok())
            .flatten()
    })
}

/// Waits until a new listener (not the one with inode `old`) is bound at `path`, without
/// connecting to it.
fn wait_new_listener(path: &std::path::Path, old: Option<u64>) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let now = listener_inode(path);
        if now.is_some() && now != old {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} never listened again",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn dump(ctl: &mut ControlClient) -> Value {
    let r = ctl.cmd("dump", Value::Null).unwrap();
    r["dump"].clone()
}

#[test]
fn reconnects_start_from_a_reset_device_and_leak_nothing() {
    init_log();
    let d = Daemon::spawn::<&str>(&[]).unwrap();
    let mut ctl = d.control().unwrap();
    let mut baseline = None;
    for round in 0..10u32 {
        let mut g = Guest::connect(d.socket());
        // The previous connection's domain and bypass=0 are gone.
        assert_eq!(g.fe.get_config(36, 1).unwrap(), [1], "round {round}");
        assert_eq!(
            dump(&mut ctl),
            json!({"bypass": true, "domains": []}),
            "round {round}"
        );
        let dom = round + 1;
        assert_eq!(g.send(&attach(dom, 1)), Status::Ok);
        assert_eq!(g.send(&map(dom, 0x1000, 0x1fff, 0)), Status::Ok);
        g.fe.set_config(36, &[0]).unwrap();
        assert_eq!(
            dump(&mut ctl),
            json!({"bypass": false, "domains": [domain(dom, &[1], &[mapping(0x1000, 0x1fff, 0, 3)])]})
        );
        // Measured at the same point of every connection.
        let fds = fd_count(d.pid());
        let base = *baseline.get_or_insert(fds);
        assert_eq!(fds, base, "daemon fds in round {round}");
        drop(g);
    }
    let s = ctl.cmd("stats", Value::Null).unwrap();
    assert_eq!(
        s["stats"]["attach"]["ok"],
        json!(10),
        "counters are cumulative"
    );
}

#[test]
fn guest_reset_drops_domains_pause_keeps_them() {
    let mut vm = Vm::start(&[]);
    assert_eq!(vm.send(&attach(1, 1)), Status::Ok);
    assert_eq!(vm.send(&map(1, 0x1000, 0x1fff, 0x1000)), Status::Ok);
    vm.fe.set_config(36, &[0]).unwrap();
    let state = json!({"bypass": false, "domains": [
        domain(1, &[1], &[mapping(0x1000, 0x1fff, 0x1000, 3)])
    ]});

    // VM pause / resume: the rings resume at their bases and every domain stays.
    assert_eq!(vm.fe.pause_resume().unwrap(), [Some(2), Some(0)]);
    assert_eq!(vm.probe(1).0, Status::Ok);
    assert_eq!(vm.dump(), state);
    // A request submitted while stopped is served after the resume, not lost or repeated.
    vm.fe.stop().unwrap();
    let head = vm.rq.submit(&chain_of(&attach(1, 2))).unwrap();
    vm.rq.kick(&vm.fe).unwrap();
    vm.rq.expect_no_used(QUIET).unwrap();
    vm.fe.start().unwrap();
    vm.rq.kick(&vm.fe).unwrap();
    let c = vm.rq.wait_used(WAIT).unwrap();
    assert_eq!(c.head, head);
    assert_eq!(reply_status(&c, 4), Status::Ok);
    assert_eq!(vm.domains()[0]["endpoints"], json!([1, 2]));
    assert_eq!(vm.rq.device_used_idx().unwrap(), 4);

    // Guest reset: the rings restart at 0 after progress; the domains go, bypass stays 0.
    let Vm { fe, rq, eq, .. } = &mut vm;
    let bases = fe
        .guest_reset(|| {
            rq.reset()?;
            eq.reset()
        })
        .unwrap();
    assert_eq!(bases, [Some(4), Some(0)]);
    assert_eq!(vm.probe(1).0, Status::Ok);
    assert_eq!(vm.dump(), json!({"bypass": false, "domains": []}));
    assert_eq!(vm.rq.device_used_idx().unwrap(), 1);
    assert_eq!(vm.bypass(), 0);
    // The device works normally after the reset.
    assert_eq!(vm.send(&attach(2, 1)), Status::Ok);
    assert_eq!(vm.domains(), json!([domain(2, &[1], &[])]));
    // A second pause after the reset keeps the new state.
    assert_eq!(vm.fe.pause_resume().unwrap(), [Some(2), Some(0)]);
    assert_eq!(vm.probe(1).0, Status::Ok);
    assert_eq!(vm.domains(), json!([domain(2, &[1], &[])]));
}

#[test]
fn daemon_in_a_thread_through_the_library() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vhost.sock");
    let control = dir.path().join("control.sock");
    let config = DaemonConfig {
        socket_path: socket.clone(),
        control_socket: Some(control.clone()),
        max_control_clients: 16,
        translation: None,
        state_file: None,
        host: HostKind::Emulated,
        queue_size: 32,
        request_poll: std::time::Duration::from_micros(50),
        engine: EngineConfig {
            boot_bypass: false,
            ..EngineConfig::default()
        },
        vfio: Vec::new(),
        iommufd_fd: None,
    };
    let daemon = vhost_device_iommu::daemon::Daemon::new(config).unwrap();
    let stop = daemon.stop_flag();
    let engine = daemon.engine();
    let runner = std::thread::spawn(move || daemon.run().map_err(|e| e.to_string()));

    let mut g = Guest::connect(&socket);
    assert_eq!(g.fe.get_config(36, 1).unwrap(), [0], "boot bypass off");
    assert_eq!(g.send(&attach(3, 4)), Status::Ok);
    assert_eq!(g.send(&map(3, 0x4000, 0x4fff, 0x8000)), Status::Ok);
    {
        let v = engine.lock();
        assert_eq!(v.domain_of(4), Some(3));
        assert_eq!(v.stats().requests.map.ok, 1);
    }
    let mut ctl = ControlClient::connect(&control, WAIT).unwrap();
    let r = ctl
        .cmd("translate", json!({"endpoint": 4, "iova": 0x4010}))
        .unwrap();
    assert_eq!(r["translation"], json!({"gpa": 0x8010, "len": 1}));
    drop(g);

    // The daemon listens again; stop it while idle: set the flag, then one more connection
    // makes accept() return and the serve loop end after it.
    let g = Guest::connect(&socket);
    assert_eq!(dump(&mut ctl), json!({"bypass": false, "domains": []}));
    // The listener of this connection may outlive it: only a new one shows that the serve
    // loop went past its stop check and is idle in accept().
    let old = listener_inode(&socket);
    drop(g);
    wait_new_listener(&socket, old);
    stop.store(true, Ordering::Release);
    let poke = Frontend::connect(&socket, memory(), WAIT).unwrap();
    drop(poke);
    let result = run_with_timeout(WAIT, "daemon run() to return", move || runner.join())
        .expect("run() returns after the stop flag");
    assert_eq!(result.expect("no panic"), Ok(()));
}

#[test]
fn sigterm_releases_the_host_and_exits_cleanly() {
    init_log();
    let mut d = Daemon::spawn::<&str>(&[]).unwrap();
    let mut ctl = d.control().unwrap();
    let mut g = Guest::connect(d.socket());
    assert_eq!(g.send(&attach(7, 1)), Status::Ok);
    assert_eq!(g.send(&map(7, 0x1000, 0x1fff, 0)), Status::Ok);
    assert_eq!(dump(&mut ctl)["domains"].as_array().map(Vec::len), Some(1));
    let pid = libc::pid_t::try_from(d.pid()).unwrap();
    // SAFETY: kill only sends a signal, to our own child (still running: it answered above).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = d.wait_exit(WAIT).expect("the daemon exits on SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        d.stderr().contains("releasing the host and exiting"),
        "{}",
        d.stderr()
    );
    drop(g);
}
