//! Connection churn: 100 connect/disconnect cycles with requests and events in flight (and
//! frontends that hang up mid-handshake or send garbage), and frontend processes killed with
//! SIGKILL mid-traffic. Each new connection finds a fresh device, and the daemon's fds,
//! threads and heap are back to what they were.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::*;
use serde_json::{json, Value};
use virtio_iommu_e2e::{ControlClient, Daemon, Frontend};
use virtio_iommu_spec::Status;
use virtio_iommu_testkit::{Chain, RawQueue};

/// Heap the daemon may have grown by after all the cycles (allocator noise, not per cycle).
const HEAP_TOLERANCE_KIB: u64 = 1024;

/// One started connection.
struct Guest {
    rq: RawQueue,
    eq: RawQueue,
    fe: Frontend,
}

/// A connection hung up with traffic in flight: its rings and buffers stay allocated (the
/// device may still be finishing its batch in them, and every test shares guest RAM) until
/// the daemon serves the next connection, which it does only after the old one's threads
/// ended.
struct HungUp {
    _rq: RawQueue,
    _eq: RawQueue,
}

impl Guest {
    fn hang_up(self) -> HungUp {
        drop(self.fe);
        HungUp {
            _rq: self.rq,
            _eq: self.eq,
        }
    }
}

/// Connects to `path`, retrying while the daemon re-listens (its socket file is briefly gone).
fn raw_connect(path: &std::path::Path) -> UnixStream {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) if std::time::Instant::now() < deadline => {
                log::debug!("connect: {e}");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("cannot connect to {}: {e}", path.display()),
        }
    }
}

impl Guest {
    fn connect(d: &Daemon) -> Guest {
        let mem = memory();
        let mut fe = Frontend::connect(d.socket(), mem.clone(), WAIT).expect("frontend connects");
        let rq = RawQueue::new(mem.clone(), 0, RQ_SIZE).unwrap();
        let eq = RawQueue::new(mem, 1, EQ_SIZE).unwrap();
        fe.configure(all_features(&fe), &[(0, rq.config()), (1, eq.config())])
            .expect("device starts");
        Guest { rq, eq, fe }
    }

    fn send(&mut self, req: &virtio_iommu_spec::Request) -> Status {
        let c = self.rq.submit_wait(&self.fe, &chain_of(req), WAIT).unwrap();
        reply_status(&c, req.writable_len(PROBE_SIZE))
    }
}

/// The daemon's (fds, threads, heap KiB).
fn resources(pid: u32) -> (usize, usize, u64) {
    (fd_count(pid), thread_count(pid), rss_anon_kib(pid))
}

fn dump(ctl: &mut ControlClient) -> Value {
    ctl.cmd("dump", Value::Null).expect("dump")["dump"].clone()
}

/// Measured at the same point of every connection: started, nothing sent yet, the previous
/// connection's device gone.
fn fresh_connection(d: &Daemon, ctl: &mut ControlClient) -> (Guest, (usize, usize, u64)) {
    let mut g = Guest::connect(d);
    assert_eq!(dump(ctl), json!({"bypass": true, "domains": []}));
    let c = g.rq.submit_wait(&g.fe, &chain_of(&probe(1)), WAIT).unwrap();
    assert_eq!(probe_reply(&c).0, Status::Ok);
    (g, resources(d.pid()))
}

fn assert_back(before: (usize, usize, u64), after: (usize, usize, u64)) {
    assert_eq!(after.0, before.0, "fds: {before:?} → {after:?}");
    assert_eq!(after.1, before.1, "threads: {before:?} → {after:?}");
    assert!(
        after.2 <= before.2 + HEAP_TOLERANCE_KIB,
        "heap: {before:?} → {after:?}"
    );
}

#[test]
fn connect_disconnect_cycles_with_traffic_in_flight() {
    init_log();
    let d = Daemon::spawn_logging::<&str>("info", &[]).unwrap();
    let mut ctl = d.control().unwrap();
    // One warm-up connection, so that lazily allocated state is there before the baseline.
    drop(fresh_connection(&d, &mut ctl));
    let (g, baseline) = fresh_connection(&d, &mut ctl);
    drop(g);
    let mut previous: Option<HungUp> = None;
    for cycle in 0..100u32 {
        if cycle % 10 == 5 {
            // A frontend that hangs up mid-handshake, after garbage instead of a message.
            let mut s = raw_connect(d.socket());
            let _ = s.write_all(&[0xff; 64]);
            drop(s);
        }
        let mut g = Guest::connect(&d);
        drop(previous.take());
        let dom = cycle + 1;
        assert_eq!(g.send(&attach(dom, 1)), Status::Ok);
        // Events in flight: buffers posted, faults raised by the control socket.
        for _ in 0..4 {
            g.eq.submit(&Chain::new().writable(48)).unwrap();
        }
        g.eq.kick(&g.fe).unwrap();
        for i in 0..6u64 {
            let r = ctl
                .cmd("translate", json!({"endpoint": 1, "iova": i << 12}))
                .unwrap();
            assert_eq!(r["fault"]["reason"], json!("mapping"));
        }
        // Requests in flight: a ring's worth submitted and notified, none waited for.
        for i in 0..u64::from(RQ_SIZE / 2) {
            let r = map(dom, i << 12, (i << 12) | 0xfff, 0x4000_0000);
            g.rq.submit(&chain_of(&r)).unwrap();
        }
        g.rq.kick(&g.fe).unwrap();
        previous = Some(g.hang_up());
    }
    let (g, after) = fresh_connection(&d, &mut ctl);
    drop(previous);
    assert_back(baseline, after);
    drop(g);
    let stats = ctl.cmd("stats", Value::Null).unwrap();
    assert_eq!(stats["stats"]["attach"]["ok"], json!(100));
}

#[test]
fn killed_frontend_processes_leave_nothing_behind() {
    init_log();
    let d = Daemon::spawn_logging::<&str>("info", &[]).unwrap();
    let mut ctl = d.control().unwrap();
    drop(fresh_connection(&d, &mut ctl));
    let (g, baseline) = fresh_connection(&d, &mut ctl);
    drop(g);
    let maps = |ctl: &mut ControlClient| {
        ctl.cmd("stats", Value::Null).unwrap()["stats"]["map"]["ok"]
            .as_u64()
            .unwrap()
    };
    for round in 0..5 {
        let before = maps(&mut ctl);
        let mut child = Command::new(env!("CARGO_BIN_EXE_hostile-frontend"))
            .arg(d.socket())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("frontend process starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n", "round {round}");
        // Let its traffic run, then SIGKILL it (our own child, by its handle).
        std::thread::sleep(Duration::from_millis(30));
        assert!(maps(&mut ctl) > before, "round {round}: no traffic");
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let (g, after) = fresh_connection(&d, &mut ctl);
    assert_back(baseline, after);
    drop(g);
}
