//! 4 KiB reads through the blk backend's real request path, unconfined and confined, side by
//! side in one run.
//!
//! Timed: `BlkBackend::handle_event` for a requestq kick, i.e. the backend's drain
//! (`backend.rs`: avail index, `pop_descriptor_chain`, `add_used`, used index) and per chain
//! `chain.rs` (descriptors recorded, the 16-byte header read, 4 KiB copied from the RAM disk
//! into the guest's buffer, the status byte written), on a 256-entry split queue in a
//! `GuestMemoryMmap`, [`BATCH`] three-descriptor chains per kick. Not timed: publishing the
//! chains in the avail ring and checking the used index (and, once, every status and byte).
//! No vhost-user socket and no eventfd are involved: what differs between the two cases is
//! only the memory the backend was given at SET_MEM_TABLE.
//!
//! - `blk/read_4k_unconfined`: guest-physical addresses (`DeviceMemory::Direct`);
//! - `blk/read_4k_confined`: the client crate's `ConfinedMemory` over its `Translator` of endpoint 8
//!   (its `PinnedMemory` for the rings, pinned once per kick);
//!   the daemon's engine and translation service run in process; rings are mapped at identity
//!   IOVAs, each header/status page and each data page by its own MAP at IOVAs far from guest
//!   RAM. A warm-up kick fills the IOTLB; the number of `TRANSLATE`s is checked not to move
//!   afterwards (warm IOTLB: no socket traffic while timed).
//!
//! `cargo bench -p vhost-user-blk-confined --bench read_4k` runs criterion (time per request:
//! whole kicks timed, shared out per request; throughput in bytes), then prints the medians of interleaved single-kick timings of both
//! cases, as requests/s and MB/s, and their ratio. `read_4k --instructions` (what
//! `scripts/bench.sh` runs under callgrind) runs each case without criterion: a warm-up kick,
//! then [`COUNTED_KICKS`] kicks; only [`measured`] is collected, a dump after each
//! [`part_end`] separates the parts, and one `part NAME UNITS` line per part (`part - 0` for a
//! warm-up) is printed in dump order.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use vhost_device_iommu::backend::SharedEngine;
use vhost_device_iommu::engine::{Engine, EngineConfig};
use vhost_device_iommu::host::EmulatedHost;
use vhost_device_iommu::translation::{self, Hub, TranslationConfig};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use vhost_user_blk_confined::backend::REQUEST_QUEUE;
use vhost_user_blk_confined::request::{RequestHeader, F_ACCESS_PLATFORM, F_VERSION_1, S_OK, T_IN};
use vhost_user_blk_confined::{BlkBackend, Confinement, Disk, SharedDisk};
use virtio_iommu_client::{Client, ClientConfig, EndpointRange, Translator};
use virtio_iommu_testkit::bench::{criterion_config, measured, median, part_end};
use virtio_iommu_testkit::requests as req;
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use zerocopy::IntoBytes;

const EP: u32 = 8;
const PAGE: u64 = 0x1000;
/// Queue size; the rings sit in the first three pages.
const QUEUE: u16 = 256;
const DESC: u64 = 0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
/// Chains per kick (three descriptors each).
const BATCH: u16 = 64;
/// Bytes read per request.
const IO: usize = 4096;
/// Guest-physical pages of the buffers: per chain a header/status page, then a data page.
const BUFFERS_GPA: u64 = 0x10_0000;
/// IOVAs of the buffers when confined (one page apart: no two MAPs adjacent).
const BUFFERS_IOVA: u64 = 0x40_0000_0000;
/// Kicks per counted part in `--instructions` mode.
const COUNTED_KICKS: u64 = 64;
const NEXT: u16 = 1;
const WRITE: u16 = 2;

fn gpa_header(k: u16) -> u64 {
    BUFFERS_GPA + u64::from(k) * PAGE
}

fn gpa_data(k: u16) -> u64 {
    BUFFERS_GPA + u64::from(BATCH + k) * PAGE
}

fn iova_of(gpa: u64) -> u64 {
    BUFFERS_IOVA + 2 * (gpa - BUFFERS_GPA)
}

/// The sector chain `k` reads (its own 4 KiB of the disk).
fn sector(k: u16) -> u64 {
    u64::from(k) * (IO as u64 / 512)
}

/// A byte of the disk's pattern.
fn disk_byte(at: usize) -> u8 {
    u8::try_from((at / 512 * 7 + at % 251) % 256).unwrap()
}

fn status(e: &mut Engine, r: &virtio_iommu_spec::Request) -> u8 {
    let mut w = [0xffu8; 4];
    assert_eq!(e.handle_request(r.encode().as_bytes(), &mut w), 4);
    w[0]
}

/// The daemon in process, a client of endpoint 8, every page the device touches mapped.
struct Daemon {
    client: Client,
    _engine: SharedEngine,
    _hub: Arc<Hub>,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let mut engine =
            Engine::new(EngineConfig::default(), Box::new(EmulatedHost::new())).unwrap();
        engine.negotiate(engine.offered_features());
        assert_eq!(status(&mut engine, &req::attach(1, EP)), 0);
        // The rings at identity IOVAs, as the vhost-user library needs (README).
        assert_eq!(status(&mut engine, &req::map(1, 0, 3 * PAGE - 1, 0)), 0);
        for k in 0..BATCH {
            for gpa in [gpa_header(k), gpa_data(k)] {
                let iova = iova_of(gpa);
                assert_eq!(
                    status(&mut engine, &req::map(1, iova, iova + PAGE - 1, gpa)),
                    0
                );
            }
        }
        let engine: SharedEngine = Arc::new(parking_lot::Mutex::new(engine));
        let wake = Arc::new(Mutex::new(Some(Arc::new(EventFd::new(0).unwrap()))));
        let path = dir.path().join("t.sock");
        let hub = translation::spawn(
            TranslationConfig {
                path: path.clone(),
                max_clients: 16,
                ack_timeout: Duration::from_secs(10),
                busy_poll: Duration::from_micros(translation::DEFAULT_POLL_US),
            },
            engine.clone(),
            wake,
        )
        .unwrap();
        let client = Client::connect(ClientConfig::new(
            &path,
            vec![EndpointRange {
                first: EP,
                last: EP,
            }],
        ))
        .unwrap();
        Daemon {
            client,
            _engine: engine,
            _hub: hub,
            _dir: dir,
        }
    }

    fn translates(&self) -> u64 {
        self.client.stats().translates.load(Ordering::Relaxed)
    }
}

/// A started device: guest RAM with the rings and chains written once, the backend, its
/// vring.
struct Rig<I: Confinement> {
    ram: GuestMemoryMmap,
    backend: BlkBackend<I>,
    vrings: [VringRwLock; 1],
    avail_idx: u16,
}

impl<I: Confinement> Rig<I> {
    /// The device as a frontend starts it (features, memory table, ring addresses) with
    /// buffers at `addr(gpa)`.
    fn new(iommu: Option<I>, addr: fn(u64) -> u64) -> Self {
        let ram = GuestMemoryMmap::from_ranges(&[(
            GuestAddress(0),
            usize::try_from(gpa_data(BATCH)).unwrap(),
        )])
        .unwrap();
        let mut bytes = vec![0u8; IO * usize::from(BATCH)];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = disk_byte(i);
        }
        let mut disk = Disk::ram(bytes.len() as u64, false).unwrap();
        disk.write(0, &bytes).unwrap();
        let disk: SharedDisk = Arc::new(parking_lot::Mutex::new(disk));
        let confined = iommu.is_some();
        let mut backend = BlkBackend::new(disk, QUEUE, iommu).unwrap();
        let mut features = F_VERSION_1;
        if confined {
            features |= F_ACCESS_PLATFORM;
        }
        backend.acked_features(features);
        backend.set_event_idx(false);
        backend
            .update_memory(GuestMemoryAtomic::new(ram.clone()))
            .unwrap();
        let vring = VringRwLock::new(GuestMemoryAtomic::new(ram.clone()), QUEUE).unwrap();
        vring.set_queue_size(QUEUE);
        vring.set_queue_info(DESC, AVAIL, USED).unwrap();
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        for k in 0..BATCH {
            let header = RequestHeader {
                type_: T_IN.into(),
                reserved: 0.into(),
                sector: sector(k).into(),
            };
            ram.write_slice(header.as_bytes(), GuestAddress(gpa_header(k)))
                .unwrap();
            let d = 3 * k;
            let descs = [
                (addr(gpa_header(k)), 16u32, NEXT, d + 1),
                (
                    addr(gpa_data(k)),
                    u32::try_from(IO).unwrap(),
                    NEXT | WRITE,
                    d + 2,
                ),
                (addr(gpa_header(k)) + 16, 1, WRITE, 0),
            ];
            for (i, (a, len, flags, next)) in (0u64..).zip(descs) {
                let at = DESC + (u64::from(d) + i) * 16;
                ram.write_obj(a, GuestAddress(at)).unwrap();
                ram.write_obj(len, GuestAddress(at + 8)).unwrap();
                ram.write_obj(flags, GuestAddress(at + 12)).unwrap();
                ram.write_obj(next, GuestAddress(at + 14)).unwrap();
            }
        }
        Rig {
            ram,
            backend,
            vrings: [vring],
            avail_idx: 0,
        }
    }

    /// Publishes the batch's chains (not timed).
    fn publish(&mut self) {
        for k in 0..BATCH {
            let slot = u64::from(self.avail_idx.wrapping_add(k) % QUEUE);
            self.ram
                .write_obj(3 * k, GuestAddress(AVAIL + 4 + 2 * slot))
                .unwrap();
        }
        self.avail_idx = self.avail_idx.wrapping_add(BATCH);
        self.ram
            .store(self.avail_idx, GuestAddress(AVAIL + 2), Ordering::Release)
            .unwrap();
    }

    /// The kick: the backend drains the batch.
    fn kick(&mut self) {
        self.backend
            .handle_event(REQUEST_QUEUE, EventSet::IN, &self.vrings, 0)
            .unwrap();
    }

    /// Every chain of the batch came back (not timed).
    fn check_used(&self) {
        let used: u16 = self
            .ram
            .load(GuestAddress(USED + 2), Ordering::Acquire)
            .unwrap();
        assert_eq!(used, self.avail_idx, "every chain served");
    }

    /// One timed kick; returns its duration.
    fn timed_kick(&mut self) -> Duration {
        self.publish();
        let t0 = Instant::now();
        self.kick();
        let took = t0.elapsed();
        self.check_used();
        took
    }

    /// Statuses, used lengths and the bytes of every chain (after the warm-up).
    fn check_bytes(&self) {
        for k in 0..BATCH {
            let st: u8 = self.ram.read_obj(GuestAddress(gpa_header(k) + 16)).unwrap();
            assert_eq!(st, S_OK, "chain {k}");
            let mut got = vec![0u8; IO];
            self.ram
                .read_slice(&mut got, GuestAddress(gpa_data(k)))
                .unwrap();
            let first = usize::from(k) * IO;
            assert!(
                got.iter()
                    .enumerate()
                    .all(|(i, b)| *b == disk_byte(first + i)),
                "chain {k}: the bytes of sectors {}..",
                sector(k)
            );
        }
        for slot in 0..u64::from(BATCH) {
            let len: u32 = self
                .ram
                .read_obj(GuestAddress(USED + 4 + 8 * slot + 4))
                .unwrap();
            assert_eq!(len as usize, IO + 1);
        }
    }
}

/// Both devices, warm: one kick each served and checked, the confined one's IOTLB filled.
struct Both {
    plain: Rig<Translator>,
    confined: Rig<Translator>,
    daemon: Daemon,
    filled: u64,
}

impl Both {
    fn new() -> Both {
        let daemon = Daemon::start();
        // The unconfined device never has an IOMMU; `Translator` is only its type parameter.
        let mut plain = Rig::<Translator>::new(None, |gpa| gpa);
        let mut confined = Rig::new(Some(daemon.client.translator(EP, None)), iova_of);
        for rig in [&mut plain, &mut confined] {
            rig.timed_kick();
            rig.check_bytes();
        }
        let filled = daemon.translates();
        assert!(filled > 0, "the confined device translated");
        Both {
            plain,
            confined,
            daemon,
            filled,
        }
    }

    fn check_warm(&self) {
        assert_eq!(
            self.daemon.translates(),
            self.filled,
            "a TRANSLATE after the warm-up: the IOTLB was not warm"
        );
    }
}

fn bench(c: &mut Criterion) {
    let mut both = Both::new();
    let mut g = c.benchmark_group("blk");
    // One iteration is one request: whole kicks are timed and the time shared out.
    g.throughput(Throughput::Bytes(IO as u64));
    for (name, rig) in [
        ("read_4k_unconfined", &mut both.plain),
        ("read_4k_confined", &mut both.confined),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let kicks = iters.div_ceil(u64::from(BATCH));
                let t: Duration = (0..kicks).map(|_| rig.timed_kick()).sum();
                t.mul_f64(iters as f64 / (kicks * u64::from(BATCH)) as f64)
            });
        });
    }
    g.finish();
    both.check_warm();
}

/// Interleaved single-kick timings of both devices: medians, requests/s, MB/s, the ratio.
fn medians() {
    let mut both = Both::new();
    let n = 2000;
    let (mut plain, mut confined) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        plain.push(both.plain.timed_kick());
        confined.push(both.confined.timed_kick());
    }
    both.check_warm();
    let per_request = |d: Duration| d.as_secs_f64() / f64::from(BATCH);
    let (p, c) = (per_request(median(plain)), per_request(median(confined)));
    let line = |name: &str, s: f64| {
        format!(
            "{name} {:.0} ns/request, {:.0} k requests/s, {:.0} MB/s",
            s * 1e9,
            1e-3 / s,
            IO as f64 / s / 1e6
        )
    };
    println!(
        "medians of {n} kicks of {BATCH} 4 KiB reads: {}; {}; confined/unconfined throughput {:.2}",
        line("unconfined", p),
        line("confined", c),
        p / c
    );
}

fn count(name: &str, rig: &mut Rig<Translator>) {
    rig.publish();
    measured(|| rig.kick());
    rig.check_used();
    part_end("-", 0);
    for _ in 0..COUNTED_KICKS {
        rig.publish();
        measured(|| rig.kick());
        rig.check_used();
    }
    part_end(name, COUNTED_KICKS * u64::from(BATCH));
}

/// `--instructions`: both cases, in parts for callgrind (see the module doc).
fn instructions() {
    let mut both = Both::new();
    count("blk/read_4k_unconfined", &mut both.plain);
    count("blk/read_4k_confined", &mut both.confined);
    both.check_warm();
}

criterion_group! {
    name = benches;
    config = criterion_config();
    targets = bench
}

fn main() {
    if std::env::args().any(|a| a == "--instructions") {
        instructions();
        return;
    }
    benches();
    if std::env::args().any(|a| a == "--bench") {
        medians();
    }
    Criterion::default().configure_from_args().final_summary();
}
