//! The translation service (spec/TRANSLATION.md) in process: the real service thread and
//! socket, the engine behind its lock, a client on the bench thread speaking the raw protocol.
//!
//! - `translate_round_trip`: TRANSLATE written → daemon answers from the engine →
//!   TRANSLATE_REPLY read (a 4 KiB read of a mapped page).
//! - `invalidate_push_ack`: what a guest UNMAP adds for one client: the engine's UNMAP and
//!   [`Hub::invalidate`] under the engine lock (as the queue thread does), the INVALIDATE read
//!   by the client, INVAL_ACK written, the service thread releasing the hold and waking the
//!   queue thread (a blocking eventfd read here), [`Hub::take_completed`]. The MAP that puts
//!   the page back is not timed.
//!
//! `cargo bench -p vhost-device-iommu --bench translation` runs criterion, then prints the
//! medians of 5000 single timings each. `TRANSLATION_BENCH_ITERS=N` instead runs N of each
//! without criterion or timing, for `valgrind --tool=callgrind` (run it with N and 0 and
//! divide the difference by N: instructions per operation, both threads together);
//! `TRANSLATION_BENCH_ONLY=translate` or `invalidate` runs one of them.

use std::io::{Read, Write};
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
use vmm_sys_util::eventfd::EventFd;

const EP: u32 = 8;
const IOVA: u64 = 0x10_0000;
const PAGE: u64 = 0x1000;
/// TRANSLATE_REPLY with one range; INVALIDATE.
const REPLY_LEN: usize = 8 + 32 + 32;
const INVALIDATE_LEN: usize = 8 + 40;

struct Rig {
    engine: SharedEngine,
    hub: Arc<Hub>,
    wake: Arc<EventFd>,
    client: UnixStream,
    translate: Vec<u8>,
    _dir: tempfile::TempDir,
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
    fn new() -> Rig {
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
        let wake = Arc::new(EventFd::new(0).unwrap());
        let slot = Arc::new(Mutex::new(Some(wake.clone())));
        let path = dir.path().join("t.sock");
        let hub = translation::spawn(
            TranslationConfig {
                path: path.clone(),
                max_clients: 16,
                ack_timeout: Duration::from_secs(10),
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
            client,
            translate,
            _dir: dir,
        }
    }

    fn translate(&mut self) {
        self.client.write_all(&self.translate).unwrap();
        let mut r = [0u8; REPLY_LEN];
        self.client.read_exact(&mut r).unwrap();
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
        self.client.read_exact(&mut inv).unwrap();
        let seq = u64::from_le_bytes(inv[8..16].try_into().unwrap());
        self.client
            .write_all(&encode(&ClientMessage::InvalAck(InvalAck { seq })))
            .unwrap();
        loop {
            self.wake.read().unwrap();
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
    let mut rig = Rig::new();
    let mut g = c.benchmark_group("translation");
    g.bench_function("translate_round_trip", |b| b.iter(|| rig.translate()));
    g.bench_function("invalidate_push_ack", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rig.invalidate()).sum());
    });
    g.finish();
}

fn medians() {
    let mut rig = Rig::new();
    let n = 5000;
    let t: Vec<Duration> = (0..n)
        .map(|_| {
            let t0 = Instant::now();
            rig.translate();
            t0.elapsed()
        })
        .collect();
    let i: Vec<Duration> = (0..n).map(|_| rig.invalidate()).collect();
    println!(
        "medians of {n}: translate_round_trip {:?}, invalidate_push_ack {:?}",
        median(t),
        median(i)
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
        let mut rig = Rig::new();
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
