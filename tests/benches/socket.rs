//! Requests through the real vhost-user socket: the release `vhost-device-iommu` binary as a
//! child process, the mini-VMM ([`Frontend`]) as its frontend, the request queue driven from
//! this thread the way a VMM's guest does it: descriptors in guest RAM (a shared memfd), the
//! avail index published, a kick on the ring's kick eventfd (skipped when the daemon's
//! `avail_event` says it is not needed, as a virtio driver does), then a blocking poll(2) on the
//! ring's call eventfd until the used ring shows the request. With EVENT_IDX (negotiated: the
//! daemon offers it) the driver's `used_event` asks for one notification, at the last request
//! of a kick.
//!
//! - `socket/sync_round_trip`: one request per kick, MAP then UNMAP of one 4 KiB page
//!   alternately (the DMA API's map/unmap of one buffer), ns per round trip.
//! - `socket/batch64`: 64 requests per kick, 32 MAP+UNMAP pairs of distinct 4 KiB pages (every
//!   kick leaves the domain empty), ns per request (criterion's time of one kick / 64).
//! - `socket/sync_round_trip_poll_off` (figures only): `sync_round_trip` with the daemon's
//!   `--request-poll-us 0`, in the same run: what watching the request ring after each request
//!   saves a driver that sends the next one as soon as the last completes.
//! - `socket/page_request_round_trip` (`socket/page_request.rs`, issue 18 goal 3): a PASID
//!   TRANSLATE on the daemon's translation socket faults on a not-present stage-1 leaf, the
//!   page request reaches the unmodified guest driver on the event queue, this thread (the
//!   guest) maps the page and answers PAGE_RESP on the request queue, and the TRANSLATE is
//!   answered: ns per round trip (its figures: median, p99, the daemon's CPU time and context
//!   switches per round trip; `SOCKET_BENCH_PRQ_ROUNDS=N`, default 2000, 1000 with
//!   `BENCH_QUICK`).
//!
//! Not timed: poisoning the reply buffers before a kick and checking every reply afterwards
//! (used id, used length 4, status S_OK and zero reserved bytes). The requests and descriptors
//! are written once at setup; a kick only fills avail-ring slots.
//!
//! `cargo bench -p virtio-iommu-e2e --bench socket` runs criterion, then prints the
//! `figure NAME VALUE UNIT` lines of `--figures` (the mode `scripts/bench.sh` runs without
//! criterion): for 1 and 64 requests per kick, the median and p99 of single round trips (ns),
//! the wall rate (requests per second of the timed parts, the frontend on this thread, the
//! daemon's threads wherever the scheduler puts them), requests per daemon CPU-second (the sum
//! over the daemon's threads of `/proc/PID/task/*/schedstat`'s first field, ns on a CPU), and
//! the daemon threads' context switches per request (voluntary + involuntary, from
//! `/proc/PID/task/*/status`: its wake-ups) and the frontend's kicks per request. With
//! `SOCKET_BENCH_SYSCALLS=perf` (or `strace`) it also runs each case once more with
//! `perf stat -e raw_syscalls:sys_enter -p PID` (or `strace -f -c -p PID`) attached to the
//! running daemon, every thread, and prints the daemon's syscalls per request.
//! `SOCKET_BENCH_ROUNDS=N` changes the number of single round trips (default 5000) and
//! `SOCKET_BENCH_KICKS=N` the kicks of 64 (default 2000, 500 with `BENCH_QUICK`).
//!
//! - `socket/sync_round_trip_journal`, `socket/batch64_journal`: the same two through a daemon
//!   with `--state-file` (issue 17: what keeping the state for a restart costs a request).
//!
//! `--daemon-run CASE N` (`sync` or `batch64`, either with `-journal`) only sends N round trips or kicks, untimed, and
//! stops the daemon with SIGTERM: `scripts/bench.sh` runs it with the daemon under callgrind
//! (a wrapper script as `VHOST_DEVICE_IOMMU_BIN`) for N and 0, the daemon's instructions per
//! request being the difference over the requests.
//!
//! Needs `target/release/vhost-device-iommu` (`cargo build -p vhost-device-iommu --release`),
//! or `VHOST_DEVICE_IOMMU_BIN`.

#[path = "socket/page_request.rs"]
mod page_request;

use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use virtio_iommu_e2e::frontend::VHOST_BITS;
use virtio_iommu_e2e::{Daemon, Frontend};
use virtio_iommu_spec::Request;
use virtio_iommu_testkit::bench::{criterion_config, median};
use virtio_iommu_testkit::requests as req;
use virtio_iommu_testkit::ring::{Desc, RingConfig, DESC_F_NEXT, DESC_F_WRITE};
use virtio_iommu_testkit::GuestMemory;

/// Request queue size: 64 two-descriptor chains fill the table.
const QSIZE: u16 = 128;
/// Requests per kick of `batch64`.
const BATCH: u16 = 64;
/// Event queue size (no buffers are posted on it).
const EQ_SIZE: u16 = 16;
const DOMAIN: u32 = 1;
const ENDPOINT: u32 = 8;
/// IOVAs above the x86 MSI window the default endpoint reserves.
const IOVA: u64 = 1 << 32;
const PAGE: u64 = 0x1000;
/// Where the pages map to (any address: the emulated host does not check it).
const PHYS: u64 = 0x8000_0000;
const RAM_BASE: u64 = 0x4000_0000;
const RAM_SIZE: u64 = 4 << 20;
/// Reply buffer room per chain (MAP, UNMAP and ATTACH replies are 4 bytes).
const REPLY_ROOM: u64 = 64;
/// Request buffer room per chain.
const REQUEST_ROOM: u64 = 64;
/// What a reply buffer holds before the daemon writes it.
const POISON: u8 = 0xa5;
/// Bound of every wait for the daemon.
const WAIT: Duration = Duration::from_secs(10);
/// `VIRTIO_F_RING_EVENT_IDX`.
const EVENT_IDX: u64 = 1 << 29;
/// `VIRTQ_USED_F_NO_NOTIFY`.
const USED_F_NO_NOTIFY: u16 = 1;

/// The daemon, a started frontend and the request queue's driver side.
struct Rig {
    mem: Arc<GuestMemory>,
    ring: RingConfig,
    /// GPA of chain k's request and reply buffers (chain k is descriptors 2k and 2k + 1).
    request_gpa: u64,
    reply_gpa: u64,
    event_idx: bool,
    avail_idx: u16,
    last_used: u16,
    /// Whether the sync case's page is mapped (it alternates MAP and UNMAP).
    mapped: bool,
    kicks: u64,
    /// Declared before the daemon: the connection closes before the daemon is killed.
    fe: Frontend,
    daemon: Daemon,
    /// Holds the daemon's `--state-file` (the `_journal` cases).
    _state_dir: Option<tempfile::TempDir>,
}

/// CPU time and context switches of all the daemon's threads so far.
#[derive(Debug, Clone, Copy, Default)]
struct DaemonUsage {
    cpu_ns: u64,
    voluntary: u64,
    involuntary: u64,
}

impl DaemonUsage {
    fn of(pid: u32) -> DaemonUsage {
        let mut u = DaemonUsage::default();
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("daemon's threads");
        for task in tasks {
            let dir = task.expect("a thread").path();
            // A thread that exits between the listing and the read is not counted.
            if let Ok(s) = std::fs::read_to_string(dir.join("schedstat")) {
                let ns = s
                    .split_whitespace()
                    .next()
                    .and_then(|f| f.parse::<u64>().ok());
                u.cpu_ns += ns.expect("schedstat's run time");
            }
            if let Ok(s) = std::fs::read_to_string(dir.join("status")) {
                let count = |v: &str| v.trim().parse::<u64>().expect("a switch count");
                for line in s.lines() {
                    if let Some(v) = line.strip_prefix("voluntary_ctxt_switches:") {
                        u.voluntary += count(v);
                    } else if let Some(v) = line.strip_prefix("nonvoluntary_ctxt_switches:") {
                        u.involuntary += count(v);
                    }
                }
            }
        }
        u
    }

    fn since(self, before: DaemonUsage) -> DaemonUsage {
        DaemonUsage {
            cpu_ns: self.cpu_ns - before.cpu_ns,
            voluntary: self.voluntary - before.voluntary,
            involuntary: self.involuntary - before.involuntary,
        }
    }
}

fn area(mem: &GuestMemory, bytes: u64) -> u64 {
    let pages = usize::try_from(bytes.div_ceil(PAGE)).expect("small");
    mem.alloc_pages(pages).expect("guest RAM")
}

fn ring(mem: &GuestMemory, size: u16) -> RingConfig {
    let [d, a, u] = RingConfig::area_sizes(size);
    RingConfig {
        size,
        desc: area(mem, d),
        avail: area(mem, a),
        used: area(mem, u),
    }
}

/// The request of chain k: pair j = k / 2 maps (even k) or unmaps (odd k) page j.
fn bench_request(k: u16) -> Request {
    let start = IOVA + u64::from(k / 2) * PAGE;
    if k % 2 == 0 {
        req::map(
            DOMAIN,
            start,
            start + PAGE - 1,
            PHYS + u64::from(k / 2) * PAGE,
        )
    } else {
        req::unmap(DOMAIN, start, start + PAGE - 1)
    }
}

impl Rig {
    fn new() -> Rig {
        Self::with(false, &[])
    }

    /// With `journal`, the daemon keeps its state in a `--state-file` (every answered request
    /// written there before it is published); `extra`: more daemon options.
    fn with(journal: bool, extra: &[&str]) -> Rig {
        let state_dir = journal.then(|| tempfile::tempdir().expect("tempdir"));
        let mut args: Vec<String> = state_dir
            .iter()
            .map(|d| d.path().join("viommu.state").display().to_string())
            .flat_map(|p| ["--state-file".to_string(), p])
            .collect();
        args.extend(extra.iter().map(ToString::to_string));
        let daemon = Daemon::spawn_logging("warn", &args).expect("daemon starts");
        let mem = Arc::new(GuestMemory::new(RAM_BASE, RAM_SIZE).expect("guest RAM"));
        let mut fe = daemon.connect(mem.clone()).expect("frontend connects");
        let rq = ring(&mem, QSIZE);
        let eq = ring(&mem, EQ_SIZE);
        let chains = u64::from(QSIZE / 2);
        let request_gpa = area(&mem, chains * REQUEST_ROOM);
        let reply_gpa = area(&mem, chains * REPLY_ROOM);
        let features = fe.device_features() & !VHOST_BITS;
        fe.configure(features, &[(0, rq), (1, eq)])
            .expect("device starts");
        let mut rig = Rig {
            mem,
            ring: rq,
            request_gpa,
            reply_gpa,
            event_idx: features & EVENT_IDX != 0,
            avail_idx: 0,
            last_used: 0,
            mapped: false,
            kicks: 0,
            fe,
            daemon,
            _state_dir: state_dir,
        };
        rig.load(0, &req::attach(DOMAIN, ENDPOINT));
        rig.run(&[0]);
        rig.check(&[0]);
        for k in 0..BATCH {
            rig.load(k, &bench_request(k));
        }
        rig
    }

    fn request_at(&self, k: u16) -> u64 {
        self.request_gpa + u64::from(k) * REQUEST_ROOM
    }

    fn reply_at(&self, k: u16) -> u64 {
        self.reply_gpa + u64::from(k) * REPLY_ROOM
    }

    /// Puts `r` in chain k's request buffer and writes the chain's two descriptors.
    fn load(&mut self, k: u16, r: &Request) {
        let bytes = r.encode();
        let bytes = bytes.as_bytes();
        assert!(bytes.len() as u64 <= REQUEST_ROOM);
        assert_eq!(r.writable_len(512), 4, "a 4-byte reply");
        self.mem.write(self.request_at(k), bytes).unwrap();
        let readable = Desc {
            addr: self.request_at(k),
            len: u32::try_from(bytes.len()).unwrap(),
            flags: DESC_F_NEXT,
            next: 2 * k + 1,
        };
        let writable = Desc {
            addr: self.reply_at(k),
            len: 4,
            flags: DESC_F_WRITE,
            next: 0,
        };
        self.ring.write_desc(&*self.mem, 2 * k, readable).unwrap();
        self.ring
            .write_desc(&*self.mem, 2 * k + 1, writable)
            .unwrap();
    }

    /// Posts `chains`, kicks (if the daemon asks for kicks) and sleeps on the call eventfd until
    /// the used ring has them all: what a round trip costs the frontend, timed.
    fn run(&mut self, chains: &[u16]) -> Duration {
        for &k in chains {
            self.mem.fill(self.reply_at(k), 4, POISON).unwrap();
        }
        let n = u16::try_from(chains.len()).unwrap();
        let target = self.last_used.wrapping_add(n);
        let t0 = Instant::now();
        let old = self.avail_idx;
        for &k in chains {
            self.ring
                .put_avail(&*self.mem, self.avail_idx, 2 * k)
                .unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
        }
        let ring_end = 4 + 2 * u64::from(QSIZE);
        if self.event_idx {
            // One notification, for the last of them.
            self.mem
                .store_u16(self.ring.avail + ring_end, target.wrapping_sub(1))
                .unwrap();
        }
        self.ring.set_avail_idx(&*self.mem, self.avail_idx).unwrap();
        // The index store is visible before the daemon's `avail_event` (or flags) is read.
        fence(Ordering::SeqCst);
        let kick = if self.event_idx {
            let event = self
                .mem
                .load_u16(self.ring.used + 4 + 8 * u64::from(QSIZE))
                .unwrap();
            self.avail_idx.wrapping_sub(event).wrapping_sub(1) < self.avail_idx.wrapping_sub(old)
        } else {
            self.mem.load_u16(self.ring.used).unwrap() & USED_F_NO_NOTIFY == 0
        };
        if kick {
            self.fe.kick(0).unwrap();
            self.kicks += 1;
        }
        let call = self.fe.call_eventfd(0).unwrap();
        while self.ring.used_idx(&*self.mem).unwrap() != target {
            let mut pfd = libc::pollfd {
                fd: call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = libc::c_int::try_from(WAIT.as_millis()).unwrap();
            // SAFETY: one valid pollfd for the duration of the call; poll writes only `revents`.
            let rc = unsafe { libc::poll(&raw mut pfd, 1, ms) };
            assert!(
                rc > 0 || std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted,
                "no call from the daemon within {WAIT:?} (poll {rc})"
            );
            // Consumes the notification (EAGAIN if poll was interrupted).
            let _ = call.read();
        }
        let took = t0.elapsed();
        self.last_used = target;
        took
    }

    /// Checks the used entries of the last [`Self::run`] of `chains`: in order, length 4, S_OK.
    fn check(&self, chains: &[u16]) {
        let n = u16::try_from(chains.len()).unwrap();
        let first = self.last_used.wrapping_sub(n);
        for (i, &k) in (0..n).zip(chains) {
            let (id, len) = self
                .ring
                .used_elem(&*self.mem, first.wrapping_add(i))
                .unwrap();
            assert_eq!((id, len), (u32::from(2 * k), 4), "used entry of chain {k}");
            let reply = self.mem.read_vec(self.reply_at(k), 4).unwrap();
            assert_eq!(reply, [0; 4], "chain {k}: S_OK and zero reserved bytes");
        }
    }

    /// One sync round trip: the MAP of the page, or its UNMAP.
    fn round_trip(&mut self) -> Duration {
        let k = u16::from(self.mapped);
        let took = self.run(&[k]);
        self.check(&[k]);
        self.mapped = !self.mapped;
        took
    }

    /// Unmaps the sync case's page if it is mapped (chain 0's page is also pair 0's).
    fn settle(&mut self) {
        if self.mapped {
            self.round_trip();
        }
    }

    /// One kick of 64 requests.
    fn batch(&mut self) -> Duration {
        self.settle();
        let chains: Vec<u16> = (0..BATCH).collect();
        let took = self.run(&chains);
        self.check(&chains);
        took
    }

    fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// Stops the daemon with SIGTERM (it exits cleanly, so a daemon under callgrind writes its
    /// counts) and waits for it.
    fn terminate(mut self) {
        let pid = libc::pid_t::try_from(self.pid()).unwrap();
        // SAFETY: a signal to our own child by its pid (not yet waited for).
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = self.daemon.wait_exit(Duration::from_secs(60)).unwrap();
        assert!(status.success(), "daemon exit: {status}");
    }
}

fn bench(c: &mut Criterion) {
    let mut rig = Rig::new();
    let mut g = c.benchmark_group("socket");
    g.bench_function("sync_round_trip", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rig.round_trip()).sum());
    });
    g.bench_function("batch64", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rig.batch()).sum::<Duration>() / u32::from(BATCH));
    });
    let mut prq = page_request::PrqRig::new();
    g.bench_function("page_request_round_trip", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| prq.round_trip()).sum());
    });
    g.finish();
}

fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| v.parse().expect("a count"))
}

fn figure(name: &str, value: f64, unit: &str) {
    // Three decimals for the small per-request counts, none for rates and times.
    if value < 100.0 {
        println!("figure {name} {value:.3} {unit}");
    } else {
        println!("figure {name} {value:.0} {unit}");
    }
}

fn ns(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

/// The `pct` percentile of sorted timings: the smallest one at least `pct` % of them do not
/// exceed.
fn percentile(sorted: &[Duration], pct: usize) -> Duration {
    let i = (sorted.len() * pct).div_ceil(100).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Runs `units` requests as `rounds` calls of `one`, then prints the case's figures.
fn case(rig: &mut Rig, name: &str, rounds: u64, per_round: u64, one: fn(&mut Rig) -> Duration) {
    for _ in 0..rounds / 10 + 1 {
        one(rig); // Warm-up.
    }
    rig.settle();
    let kicks = rig.kicks;
    let before = DaemonUsage::of(rig.pid());
    let times: Vec<Duration> = (0..rounds).map(|_| one(rig)).collect();
    let used = DaemonUsage::of(rig.pid()).since(before);
    let requests = (rounds * per_round) as f64;
    let wall: Duration = times.iter().sum();
    let mut sorted = times.clone();
    sorted.sort_unstable();
    let per = per_round as f64;
    figure(
        &format!("{name}/median"),
        ns(median(times)) / per,
        "ns/request",
    );
    figure(
        &format!("{name}/p99"),
        ns(percentile(&sorted, 99)) / per,
        "ns/request",
    );
    figure(
        &format!("{name}/wall_rate"),
        requests / wall.as_secs_f64(),
        "requests/s",
    );
    figure(
        &format!("{name}/daemon_cpu"),
        requests / (used.cpu_ns as f64 / 1e9),
        "requests/daemon-CPU-s",
    );
    figure(
        &format!("{name}/wakeups"),
        (used.voluntary + used.involuntary) as f64 / requests,
        "context-switches/request",
    );
    figure(
        &format!("{name}/voluntary"),
        used.voluntary as f64 / requests,
        "voluntary-switches/request",
    );
    figure(
        &format!("{name}/kicks"),
        (rig.kicks - kicks) as f64 / requests,
        "kicks/request",
    );
}

/// How the daemon's syscalls are counted (`SOCKET_BENCH_SYSCALLS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counter {
    /// `perf stat -e raw_syscalls:sys_enter -p PID`: tracepoint counts, the daemon's timing
    /// (and so its batching and wake-ups) barely changed.
    Perf,
    /// `strace -f -c -p PID`: a per-syscall table, but every syscall stops the daemon, which
    /// then seldom sleeps (the frontend refills the ring before it re-arms its notifications).
    Strace,
}

/// The syscalls the daemon makes, besides their total.
const PERF_EVENTS: &str = "raw_syscalls:sys_enter,syscalls:sys_enter_write,\
    syscalls:sys_enter_read,syscalls:sys_enter_epoll_wait";

/// Runs `rounds` calls of `one` with `counter` attached to every daemon thread; prints the
/// daemon's syscalls per request (the whole table goes to stderr).
fn syscalls_case(
    rig: &mut Rig,
    counter: Counter,
    name: &str,
    rounds: u64,
    per_round: u64,
    one: fn(&mut Rig) -> Duration,
) {
    rig.settle();
    let pid = rig.pid().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("syscalls.out");
    let mut cmd = match counter {
        Counter::Perf => {
            let mut c = Command::new("perf");
            c.args(["stat", "-x", ",", "-e", PERF_EVENTS, "-o"]);
            c
        }
        Counter::Strace => {
            let mut c = Command::new("strace");
            c.args(["-f", "-c", "-o"]);
            c
        }
    };
    let mut tool = cmd
        .arg(&out)
        .args(["-p", &pid])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the syscall counter runs");
    match counter {
        // perf says nothing when it has attached: give it time (the idle daemon makes no
        // syscalls meanwhile).
        Counter::Perf => std::thread::sleep(Duration::from_millis(500)),
        Counter::Strace => {
            let deadline = Instant::now() + WAIT;
            while !all_traced(rig.pid()) {
                assert!(Instant::now() < deadline, "strace did not attach");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    assert!(
        tool.try_wait().unwrap().is_none(),
        "the syscall counter exited early"
    );
    for _ in 0..rounds {
        one(rig);
    }
    let tool_pid = libc::pid_t::try_from(tool.id()).unwrap();
    // SAFETY: a signal to our own child by its pid (still ours: not yet waited for).
    assert_eq!(unsafe { libc::kill(tool_pid, libc::SIGINT) }, 0);
    // Both exit with 128 + SIGINT after detaching; their output file is what counts.
    tool.wait().unwrap();
    let summary = std::fs::read_to_string(&out).unwrap();
    eprintln!("{counter:?}: the daemon's syscalls, {name}, {rounds} rounds:\n{summary}");
    let calls: u64 = match counter {
        Counter::Perf => summary
            .lines()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.get(2) == Some(&"raw_syscalls:sys_enter"))
            // `<not counted>`: no syscall at all.
            .map(|f| f[0].parse().unwrap_or(0)),
        Counter::Strace => summary
            .lines()
            .find(|l| l.trim_end().ends_with(" total"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|f| f.parse().ok()),
    }
    .expect("a syscall total");
    figure(
        &format!("{name}/syscalls"),
        calls as f64 / (rounds * per_round) as f64,
        "syscalls/request",
    );
}

/// Whether every thread of `pid` has a tracer.
fn all_traced(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("status")).is_ok_and(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("TracerPid:"))
                .is_some_and(|v| v.trim() != "0")
        })
    })
}

fn figures() {
    let mut rig = Rig::new();
    let rounds = env_count("SOCKET_BENCH_ROUNDS", 5000);
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let kicks = env_count("SOCKET_BENCH_KICKS", if quick { 500 } else { 2000 });
    case(
        &mut rig,
        "socket/sync_round_trip",
        rounds,
        1,
        Rig::round_trip,
    );
    case(&mut rig, "socket/batch64", kicks, 64, Rig::batch);
    // One request per kick with the queue thread sleeping at once after each (side by side
    // with the default `--request-poll-us`, which sees the next request while it polls).
    let mut unpolled = Rig::with(false, &["--request-poll-us", "0"]);
    case(
        &mut unpolled,
        "socket/sync_round_trip_poll_off",
        rounds,
        1,
        Rig::round_trip,
    );
    drop(unpolled);
    // The same through a daemon with a state file, in the same run (side by side).
    let mut journaled = Rig::with(true, &[]);
    case(
        &mut journaled,
        "socket/sync_round_trip_journal",
        rounds,
        1,
        Rig::round_trip,
    );
    case(
        &mut journaled,
        "socket/batch64_journal",
        kicks,
        64,
        Rig::batch,
    );
    drop(journaled);
    let prq_rounds = env_count("SOCKET_BENCH_PRQ_ROUNDS", if quick { 1000 } else { 2000 });
    page_request::figures(prq_rounds);
    let counter = match std::env::var("SOCKET_BENCH_SYSCALLS").as_deref() {
        Ok("perf") => Some(Counter::Perf),
        Ok("strace") => Some(Counter::Strace),
        Ok(other) => panic!("SOCKET_BENCH_SYSCALLS={other}: perf or strace"),
        Err(_) => None,
    };
    if let Some(c) = counter {
        syscalls_case(
            &mut rig,
            c,
            "socket/sync_round_trip",
            rounds,
            1,
            Rig::round_trip,
        );
        syscalls_case(&mut rig, c, "socket/batch64", kicks, 64, Rig::batch);
    }
}

criterion_group! {
    name = benches;
    config = criterion_config();
    targets = bench
}

/// `--daemon-run CASE N`: N round trips (`sync`) or N kicks of 64 (`batch64`), untimed, then
/// the daemon stopped cleanly: for a daemon run under callgrind (`VHOST_DEVICE_IOMMU_BIN` a
/// wrapper), whose counts of N minus those of 0, divided by the requests, are its instructions
/// per request.
fn daemon_run(case: &str, n: u64) {
    let (base, journal) = match case.strip_suffix("-journal") {
        Some(base) => (base, true),
        None => (case, false),
    };
    let mut rig = Rig::with(journal, &[]);
    let one = match base {
        "sync" => Rig::round_trip,
        "batch64" => Rig::batch,
        other => panic!("--daemon-run {other}: sync or batch64 (either with -journal)"),
    };
    for _ in 0..n {
        one(&mut rig);
    }
    rig.terminate();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--daemon-run") {
        let case = args.get(i + 1).expect("--daemon-run CASE N");
        let n = args.get(i + 2).and_then(|n| n.parse().ok());
        daemon_run(case, n.expect("--daemon-run CASE N"));
        return;
    }
    if std::env::args().any(|a| a == "--figures") {
        figures();
        return;
    }
    benches();
    if std::env::args().any(|a| a == "--bench") {
        figures();
    }
    Criterion::default().configure_from_args().final_summary();
}
