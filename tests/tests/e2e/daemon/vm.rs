//! What the daemon end-to-end tests share: a daemon plus a started frontend with raw queues
//! ([`Vm`]), reply checks and control-socket shortcuts; the request builders are the test
//! kit's.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use virtio_iommu_e2e::frontend::VHOST_BITS;
use virtio_iommu_e2e::{ControlClient, Daemon, Frontend};
use virtio_iommu_spec::request::TAIL_SIZE;
use virtio_iommu_spec::{Request, Status};
pub use virtio_iommu_testkit::requests::*;
use virtio_iommu_testkit::{Chain, Completion, GuestMemory, RawQueue};

/// Bound of every wait (a completion, a connection, a reply).
pub const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing happens" is watched for.
pub const QUIET: Duration = Duration::from_millis(100);
/// The daemon's default PROBE area size.
pub const PROBE_SIZE: u32 = 512;
/// Request queue size: room for a request split over 1-byte descriptors.
pub const RQ_SIZE: u16 = 64;
/// Event queue size.
pub const EQ_SIZE: u16 = 16;

/// Logs of the test process itself (the daemon logs to its stderr file).
pub fn init_log() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// The virtio features a driver accepting everything the device offers sends.
#[must_use]
pub fn all_features(fe: &Frontend) -> u64 {
    fe.device_features() & !VHOST_BITS
}

/// A daemon child process, a started frontend with both rings on raw queues, and a control
/// connection.
#[derive(Debug)]
pub struct Vm {
    /// Declared first so that the queues and connection go before the daemon is killed.
    pub rq: RawQueue,
    /// The event queue.
    pub eq: RawQueue,
    /// The vhost-user connection.
    pub fe: Frontend,
    /// The control socket.
    pub ctl: ControlClient,
    /// The daemon process.
    pub daemon: Daemon,
}

impl Vm {
    /// Starts a daemon with `args` and a driver that accepts every offered feature.
    pub fn start(args: &[&str]) -> Vm {
        Self::start_with(args, |f| f)
    }

    /// As [`Vm::start`], the driver accepting `pick(offered features)`.
    pub fn start_with(args: &[&str], pick: impl FnOnce(u64) -> u64) -> Vm {
        init_log();
        Self::start_daemon(Daemon::spawn(args).expect("daemon starts"), pick)
    }

    /// As [`Vm::start`], the daemon logging with `RUST_LOG=rust_log`.
    pub fn start_logging(rust_log: &str, args: &[&str]) -> Vm {
        init_log();
        let daemon = Daemon::spawn_logging(rust_log, args).expect("daemon starts");
        Self::start_daemon(daemon, |f| f)
    }

    fn start_daemon(daemon: Daemon, pick: impl FnOnce(u64) -> u64) -> Vm {
        let mem = GuestMemory::global();
        let mut fe = daemon.connect(mem.clone()).expect("frontend connects");
        let rq = RawQueue::new(mem.clone(), 0, RQ_SIZE).unwrap();
        let eq = RawQueue::new(mem, 1, EQ_SIZE).unwrap();
        let features = pick(all_features(&fe));
        fe.configure(features, &[(0, rq.config()), (1, eq.config())])
            .expect("device starts");
        let ctl = daemon.control().expect("control socket");
        Vm {
            rq,
            eq,
            fe,
            ctl,
            daemon,
        }
    }

    /// Submits `chain` on the request queue and waits for its completion.
    pub fn submit(&mut self, chain: &Chain) -> Completion {
        self.rq
            .submit_wait(&self.fe, chain, WAIT)
            .expect("request completes")
    }

    /// Sends a request in the usual two-descriptor shape and returns its status, checking the
    /// reply framing: used length = writable size, zeros then `[status, 0, 0, 0]`.
    pub fn send(&mut self, req: &Request) -> Status {
        let c = self.submit(&chain_of(req));
        reply_status(&c, req.writable_len(PROBE_SIZE))
    }

    /// Sends a PROBE of `endpoint`; returns the status and the properties area.
    pub fn probe(&mut self, endpoint: u32) -> (Status, Vec<u8>) {
        let req = probe(endpoint);
        let c = self.submit(&chain_of(&req));
        probe_reply(&c)
    }

    /// A control command that must succeed; returns the reply object.
    pub fn cmd(&mut self, cmd: &str, args: Value) -> Value {
        let r = self.ctl.cmd(cmd, args).expect("control reply");
        assert_eq!(r["ok"], json!(true), "{cmd}: {r}");
        r
    }

    /// The `dump` object.
    pub fn dump(&mut self) -> Value {
        self.cmd("dump", Value::Null)["dump"].clone()
    }

    /// The domains of the dump.
    pub fn domains(&mut self) -> Value {
        self.dump()["domains"].clone()
    }

    /// The `stats` object.
    pub fn stats(&mut self) -> Value {
        self.cmd("stats", Value::Null)["stats"].clone()
    }

    /// GET_CONFIG of the `bypass` byte.
    pub fn bypass(&self) -> u8 {
        self.fe.get_config(36, 1).expect("GET_CONFIG")[0]
    }

    /// Asserts the daemon process is alive and still answers a request.
    pub fn assert_alive(&mut self) {
        assert!(
            self.daemon.try_wait().unwrap().is_none(),
            "daemon exited:\n{}",
            self.daemon.stderr()
        );
        assert_eq!(self.probe(0).0, Status::Ok, "daemon still answers");
    }

    /// Sends `reqs` 32 at a time (one kick per batch) and asserts every status is S_OK.
    pub fn send_all(&mut self, reqs: &[Request]) {
        for batch in reqs.chunks(32) {
            for r in batch {
                self.rq.submit(&chain_of(r)).unwrap();
            }
            self.rq.kick(&self.fe).unwrap();
            for r in batch {
                let c = self.rq.wait_used(WAIT).unwrap();
                assert_eq!(
                    reply_status(&c, r.writable_len(PROBE_SIZE)),
                    Status::Ok,
                    "{r:?}"
                );
            }
        }
    }

    /// Posts an empty event buffer of `len` bytes and kicks the event queue.
    pub fn post_event_buffer(&mut self, len: u32) {
        self.eq.submit(&Chain::new().writable(len)).unwrap();
        self.eq.kick(&self.fe).unwrap();
    }
}

/// The usual chain of a request: its readable part, then a writable part of its size.
#[must_use]
pub fn chain_of(req: &Request) -> Chain {
    let len = u32::try_from(req.writable_len(PROBE_SIZE)).unwrap();
    Chain::request(req.encode().as_bytes(), len)
}

/// Checks a non-PROBE reply of `writable` bytes and returns its status.
pub fn reply_status(c: &Completion, writable: usize) -> Status {
    assert_eq!(c.len as usize, writable, "used length = writable size");
    assert_eq!(c.written.len(), writable);
    let (body, tail) = c.written.split_at(writable - TAIL_SIZE);
    assert!(
        body.iter().all(|b| *b == 0),
        "zeros before the tail: {body:?}"
    );
    assert_eq!(tail[1..], [0, 0, 0], "tail reserved bytes");
    Status::try_from(tail[0]).expect("known status")
}

/// Checks a PROBE reply; returns the status and the properties area.
pub fn probe_reply(c: &Completion) -> (Status, Vec<u8>) {
    let n = c.written.len();
    assert_eq!(c.len as usize, n, "used length = writable size");
    let (area, tail) = c.written.split_at(n - TAIL_SIZE);
    assert_eq!(tail[1..], [0, 0, 0], "tail reserved bytes");
    (
        Status::try_from(tail[0]).expect("known status"),
        area.to_vec(),
    )
}

/// A dump mapping entry (READ | WRITE unless the caller says otherwise).
#[must_use]
pub fn mapping(virt_start: u64, virt_last: u64, phys_start: u64, flags: u32) -> Value {
    json!({"virt_start": virt_start, "virt_last": virt_last, "phys_start": phys_start, "flags": flags})
}

/// A dump domain entry.
#[must_use]
pub fn domain(id: u32, endpoints: &[u32], mappings: &[Value]) -> Value {
    json!({"id": id, "bypass": false, "endpoints": endpoints, "mappings": mappings})
}

/// Number of open file descriptors of process `pid`.
#[must_use]
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}

/// Threads of process `pid`.
#[must_use]
pub fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("/proc/PID/task")
        .count()
}

/// Shared guest RAM (all tests of a binary allocate from it).
#[must_use]
pub fn memory() -> Arc<GuestMemory> {
    GuestMemory::global()
}

/// CPU time (user + system, in clock ticks) process `pid` has used so far.
#[must_use]
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// A small deterministic generator (64-bit LCG, high bits), for tests that print their seed.
#[derive(Debug)]
pub struct Lcg(pub u64);

impl Lcg {
    /// The next value in `0..n`.
    pub fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}
