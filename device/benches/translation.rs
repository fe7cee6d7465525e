//! The translation service (spec/TRANSLATION.md) in process: the real service thread and
//! socket, the engine behind its lock, a client on the bench thread speaking the raw protocol.
//!
//! - `translate_round_trip`: TRANSLATE written → daemon answers from the engine →
//!   TRANSLATE_REPLY read (a 4 KiB read of a mapped page).
//! - `invalidate_push_ack`: what a guest UNMAP adds for one client: the engine's UNMAP and
//!   [`Hub::invalidate`] under the engine lock (as the queue thread does), the INVALIDATE read
//!   by the client, INVAL_ACK written, the service thread releasing the hold and waking the
//!   queue thread (a blocking eventfd read here, as the daemon's queue thread sleeps),
//!   [`Hub::take_completed`]. The MAP that puts the page back is not timed.
//!
//! Each twice, side by side: with the daemon's default busy-polling (`--translation-poll-us`
//! 50; the client then waits for its reply as the client crate does: polling as long, then
//! sleeping), and with `_poll_off` (both sleep at once).
//!
//! `cargo bench -p vhost-device-iommu --bench translation` runs criterion, then prints the
//! medians of 5000 single timings each, polling on and off in alternating blocks.
//! `TRANSLATION_BENCH_ITERS=N` instead runs N of each without criterion or timing, for
//! `valgrind --tool=callgrind` (run it with N and 0 and divide the difference by N:
//! instructions per operation, both threads together); `TRANSLATION_BENCH_ONLY=translate` or
//! `invalidate` runs one of them, `TRANSLATION_BENCH_POLL_US=U` sets the polling (default 50).

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use vhost_device_iommu::backend::{lock, SharedEngine};
use vhost_device_iommu::engine::{Engine, EngineConfig};
use vhost_device_iommu::host::EmulatedHost;
use vhost_device_iommu::translation::{self, Hub, TranslationConfig};
use virtio_iommu_spec::translation::{
    ClientMessage, Hello, InvalAck, Translate, TranslateFlags, WireEndpointRange, VERSION,
};
use virtio_iommu_testkit::bench::{criterion_config, median};
use virtio_iommu_testkit::requests as req;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const EP: u32 = 8;
const IOVA: u64 = 0x10_0000;
const PAGE: u64 = 0x1000;
/// TRANSLATE_REPLY with one range; INVALIDATE.
const REPLY_LEN: usize = 8 + 32 + 32;
const INVALIDATE_LEN: usize = 8 + 40;
/// The daemon's and the client crate's default busy-polling.
const POLL: Duration = Duration::from_micros(translation::DEFAULT_POLL_US);

struct Rig {
    engine: SharedEngine,
    hub: Arc<Hub>,
    wake: Arc<EventFd>,
    /// Sleeps on `wake` once the bound passed (with polling).
    wake_wait: Epoll,
    client: UnixStream,
    /// With polling: the client's socket is non-blocking, and this sleeps once the bound
    /// passed.
    client_wait: Option<Epoll>,
    poll: Duration,
    translate: Vec<u8>,
    _dir: tempfile::TempDir,
}

/// One poll's pause, as the daemon's and the client crate's `BusyPoll` pause: a spin, and every
/// fourth time a yield and a look at the clock; `false` once `until` has passed.
fn pause(spins: &mut u32, until: Instant) -> bool {
    *spins += 1;
    if *spins % 4 != 0 {
        std::hint::spin_loop();
        return true;
    }
    std::thread::yield_now();
    Instant::now() < until
}

fn encode(m: &ClientMessage<'_>) -> Vec<u8> {
    let mut v = vec![0u8; m.encoded_len()];
    m.encode_into(&mut v).unwrap();
    v
}

fn status(e: &mut Engine, r: &virtio_iommu_spec::Request) -> u8 {
    let mut w = [0xffu8; 4];
    assert_eq!(e.handle_request(r.encode().as_bytes(), &mut w), 4);
    w[0]
}

impl Rig {
    /// The service and the client polling for `poll` (zero: off).
    fn new(poll: Duration) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let mut engine =
            Engine::new(EngineConfig::default(), Box::new(EmulatedHost::new())).unwrap();
        engine.negotiate(engine.offered_features());
        assert_eq!(status(&mut engine, &req::attach(1, EP)), 0);
        assert_eq!(
            status(
                &mut engine,
                &req::map(1, IOVA, IOVA + PAGE - 1, 0x4000_0000)
            ),
            0
        );
        let engine: SharedEngine = Arc::new(parking_lot::Mutex::new(engine));
        // Polling: the queue thread's wake-up is read without waiting, as the backend does
        // while replies are held, then waited for in epoll.
        let flags = if poll.is_zero() { 0 } else { EFD_NONBLOCK };
        let wake = Arc::new(EventFd::new(flags).unwrap());
        let wake_wait = Epoll::new().unwrap();
        wake_wait
            .ctl(
                ControlOperation::Add,
                wake.as_raw_fd(),
                EpollEvent::new(EventSet::IN, 0),
            )
            .unwrap();
        let slot = Arc::new(Mutex::new(Some(wake.clone())));
        let path = dir.path().join("t.sock");
        let hub = translation::spawn(
            TranslationConfig {
                path: path.clone(),
                max_clients: 16,
                ack_timeout: Duration::from_secs(10),
                busy_poll: poll,
            },
            engine.clone(),
            slot,
        )
        .unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        let ranges = [WireEndpointRange::new(0, 0xffff)];
        client
            .write_all(&encode(&ClientMessage::Hello(Hello {
                version: VERSION,
                flags: 0,
                ranges: &ranges,
            })))
            .unwrap();
        let mut reply = [0u8; 8 + 24];
        client.read_exact(&mut reply).unwrap();
        assert_eq!(reply[0], 0x81);
        assert_eq!(&reply[12..16], &[0; 4], "accepted");
        let client_wait = (!poll.is_zero()).then(|| {
            client.set_nonblocking(true).unwrap();
            let ep = Epoll::new().unwrap();
            ep.ctl(
                ControlOperation::Add,
                client.as_raw_fd(),
                EpollEvent::new(EventSet::IN, 0),
            )
            .unwrap();
            ep
        });
        let translate = encode(&ClientMessage::Translate(Translate {
            tag: 1,
            iova: IOVA,
            len: PAGE,
            endpoint: EP,
            pasid: 0,
            flags: TranslateFlags::READ,
        }));
        Rig {
            engine,
            hub,
            wake,
            wake_wait,
            client,
            client_wait,
            poll,
            translate,
            _dir: dir,
        }
    }

    /// Reads all of `buf`: at once without polling; else polling for the bound, then
    /// sleeping until input comes.
    fn read(&mut self, buf: &mut [u8]) {
        let Some(wait) = &self.client_wait else {
            return self.client.read_exact(buf).unwrap();
        };
        let until = Instant::now() + self.poll;
        let mut got = 0;
        let mut spins = 0u32;
        while got < buf.len() {
            match self.client.read(&mut buf[got..]) {
                Ok(0) => panic!("the service closed the connection"),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !pause(&mut spins, until) {
                        let mut ev = [EpollEvent::default()];
                        wait.wait(-1, &mut ev).unwrap();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// The queue thread's wake-up: a blocking read without polling; else polling for the
    /// bound (as `IommuBackend` does while replies are held), then sleeping in epoll.
    fn wait_wake(&self) {
        if self.poll.is_zero() {
            self.wake.read().unwrap();
            return;
        }
        let until = Instant::now() + self.poll;
        let mut spins = 0u32;
        loop {
            match self.wake.read() {
                Ok(_) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("wake: {e}"),
            }
            if !pause(&mut spins, until) {
                let mut ev = [EpollEvent::default()];
                self.wake_wait.wait(-1, &mut ev).unwrap();
            }
        }
    }

    fn translate(&mut self) {
        self.client.write_all(&self.translate).unwrap();
        let mut r = [0u8; REPLY_LEN];
        self.read(&mut r);
        // OK with one range.
        debug_assert_eq!(&r[16..24], &[0, 0, 0, 0, 1, 0, 0, 0]);
    }

    /// UNMAP + push + ack + release, timed; the MAP back is not.
    fn invalidate(&mut self) -> Duration {
        let t0 = Instant::now();
        let hold = {
            let mut e = lock(&self.engine);
            assert_eq!(status(&mut e, &req::unmap(1, IOVA, IOVA + PAGE - 1)), 0);
            self.hub.invalidate(e.take_invalidations()).expect("held")
        };
        let mut inv = [0u8; INVALIDATE_LEN];
        self.read(&mut inv);
        let seq = u64::from_le_bytes(inv[8..16].try_into().unwrap());
        self.client
            .write_all(&encode(&ClientMessage::InvalAck(InvalAck { seq })))
            .unwrap();
        loop {
            self.wait_wake();
            if self.hub.take_completed().contains(&hold) {
                break;
            }
        }
        let took = t0.elapsed();
        let mut e = lock(&self.engine);
        assert_eq!(
            status(&mut e, &req::map(1, IOVA, IOVA + PAGE - 1, 0x4000_0000)),
            0
        );
        took
    }
}

fn bench(c: &mut Criterion) {
    let mut on = Rig::new(POLL);
    let mut off = Rig::new(Duration::ZERO);
    let mut g = c.benchmark_group("translation");
    g.bench_function("translate_round_trip", |b| b.iter(|| on.translate()));
    g.bench_function("translate_round_trip_poll_off", |b| {
        b.iter(|| off.translate());
    });
    g.bench_function("invalidate_push_ack", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| on.invalidate()).sum());
    });
    g.bench_function("invalidate_push_ack_poll_off", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| off.invalidate()).sum());
    });
    g.finish();
}

/// Single timings, polling on and off in alternating blocks (so that both see the same
/// machine): the medians of 5000 each.
fn medians() {
    let mut rigs = [Rig::new(POLL), Rig::new(Duration::ZERO)];
    let (blocks, per) = (10, 500);
    let mut t: [Vec<Duration>; 2] = Default::default();
    let mut i: [Vec<Duration>; 2] = Default::default();
    for _ in 0..blocks {
        for (k, rig) in rigs.iter_mut().enumerate() {
            t[k].extend((0..per).map(|_| {
                let t0 = Instant::now();
                rig.translate();
                t0.elapsed()
            }));
        }
        for (k, rig) in rigs.iter_mut().enumerate() {
            i[k].extend((0..per).map(|_| rig.invalidate()));
        }
    }
    let [t_on, t_off] = t.map(median);
    let [i_on, i_off] = i.map(median);
    println!(
        "medians of {}: translate_round_trip {t_on:?} (poll off {t_off:?}), \
         invalidate_push_ack {i_on:?} (poll off {i_off:?})",
        blocks * per
    );
}

criterion_group! {
    name = benches;
    config = criterion_config();
    targets = bench
}

fn main() {
    if let Some(n) = std::env::var_os("TRANSLATION_BENCH_ITERS") {
        let n: u64 = n.to_str().and_then(|s| s.parse().ok()).expect("a count");
        let only = std::env::var("TRANSLATION_BENCH_ONLY").unwrap_or_default();
        let poll = std::env::var("TRANSLATION_BENCH_POLL_US").map_or(POLL, |u| {
            Duration::from_micros(u.parse().expect("microseconds"))
        });
        let mut rig = Rig::new(poll);
        for _ in 0..n {
            if only != "invalidate" {
                rig.translate();
            }
            if only != "translate" {
                rig.invalidate();
            }
        }
        return;
    }
    benches();
    if std::env::args().any(|a| a == "--bench") {
        medians();
    }
    Criterion::default().configure_from_args().final_summary();
}
