//! The client's IOTLB hit: an access whose translation is cached costs a lookup under the
//! IOTLB's read lock and no socket traffic.
//!
//! The daemon's engine and translation service run in process (the real service thread and
//! socket); endpoint 8 has [`PAGES`] separate 4 KiB mappings (non-adjacent IOVAs, so the
//! IOTLB holds one range per page). Every page is translated once before anything is timed;
//! the timed loops cycle over all of them, and the count of `TRANSLATE`s sent is checked not
//! to move.
//!
//! - `client/iotlb_hit`: `Iommu::translate` of 8 bytes through the [`Translator`], the
//!   returned iterator consumed (one mapping);
//! - `client/iommu_read_u64`: an 8-byte `read_obj` through `IommuMemory` (the hit plus the
//!   guest-memory access a backend makes);
//! - `client/confined_read_u64`: the same read through [`ConfinedMemory`] (the hit without
//!   vm-memory's `Iotlb` lookups).
//!
//! `cargo bench -p virtio-iommu-client --bench iotlb_hit` runs criterion (ns per access).
//! `iotlb_hit --instructions` (what `scripts/bench.sh` runs under callgrind) runs each case
//! once more without criterion: a warm-up part, then [`COUNTED`] accesses; only [`measured`]
//! is collected, a dump after each [`part_end`] separates the parts, and one `part NAME UNITS`
//! line per part (`part - 0` for a warm-up) is printed in dump order.

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::{criterion_group, Criterion};
use vhost_device_iommu::backend::SharedEngine;
use vhost_device_iommu::engine::{Engine, EngineConfig};
use vhost_device_iommu::host::EmulatedHost;
use vhost_device_iommu::translation::{self, Hub, TranslationConfig};
use virtio_iommu_client::{Client, ClientConfig, ConfinedMemory, EndpointRange, Translator};
use virtio_iommu_testkit::bench::{criterion_config, measured, part_end};
use virtio_iommu_testkit::requests as req;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, Iommu, IommuMemory, Permissions};
use vmm_sys_util::eventfd::EventFd;

const EP: u32 = 8;
const PAGE: u64 = 0x1000;
/// Pages mapped and cached.
const PAGES: u64 = 256;
/// First IOVA; page `i` is at `IOVA + 2 * i * PAGE` (a gap between any two).
const IOVA: u64 = 0x40_0000_0000;
/// Accesses per counted part in `--instructions` mode.
const COUNTED: u64 = 100_000;

fn iova(i: u64) -> u64 {
    IOVA + 2 * i * PAGE + 0x18
}

/// The daemon in process, a connected client, and its IOTLB filled.
struct Rig {
    client: Client,
    translator: Translator,
    dma: IommuMemory<GuestMemoryMmap, Translator>,
    confined: ConfinedMemory<GuestMemoryMmap>,
    next: u64,
    _engine: SharedEngine,
    _hub: Arc<Hub>,
    _dir: tempfile::TempDir,
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
        for i in 0..PAGES {
            let base = iova(i) & !(PAGE - 1);
            assert_eq!(
                status(&mut engine, &req::map(1, base, base + PAGE - 1, i * PAGE)),
                0
            );
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
        let ram = GuestMemoryMmap::<()>::from_ranges(&[(
            GuestAddress(0),
            usize::try_from(PAGES * PAGE).unwrap(),
        )])
        .unwrap();
        for i in 0..PAGES {
            ram.write_obj(i, GuestAddress(i * PAGE + 0x18)).unwrap();
        }
        let confined = ConfinedMemory::new(ram.clone(), client.translator(EP, None));
        let dma = IommuMemory::new(ram, client.translator(EP, None), true, ());
        for i in 0..PAGES {
            assert_eq!(dma.read_obj::<u64>(GuestAddress(iova(i))).unwrap(), i);
        }
        let rig = Rig {
            translator: client.translator(EP, None),
            client,
            dma,
            confined,
            next: 0,
            _engine: engine,
            _hub: hub,
            _dir: dir,
        };
        assert_eq!(rig.translates(), PAGES, "one TRANSLATE per page to fill");
        rig
    }

    fn translates(&self) -> u64 {
        self.client.stats().translates.load(Ordering::Relaxed)
    }

    fn page(&mut self) -> u64 {
        let i = self.next;
        self.next = (i + 1) % PAGES;
        i
    }

    /// One hit: the translation of 8 bytes, its one mapping.
    fn hit(&mut self) -> u64 {
        let i = self.page();
        let mut it = self
            .translator
            .translate(GuestAddress(iova(i)), 8, Permissions::Read)
            .expect("cached");
        let m = it.next().expect("one mapping");
        debug_assert_eq!(m.base.0, i * PAGE + 0x18);
        m.base.0
    }

    /// One 8-byte read through `IommuMemory`.
    fn read(&mut self) -> u64 {
        let i = self.page();
        let v: u64 = self.dma.read_obj(GuestAddress(iova(i))).expect("cached");
        debug_assert_eq!(v, i);
        v
    }

    /// One 8-byte read through `ConfinedMemory`.
    fn confined_read(&mut self) -> u64 {
        let i = self.page();
        let v: u64 = self
            .confined
            .read_obj(GuestAddress(iova(i)))
            .expect("cached");
        debug_assert_eq!(v, i);
        v
    }

    /// Nothing was asked of the daemon since the fill.
    fn check_no_traffic(&self) {
        assert_eq!(self.translates(), PAGES, "a hit sent a TRANSLATE");
    }
}

fn bench(c: &mut Criterion) {
    let mut rig = Rig::new();
    let mut g = c.benchmark_group("client");
    g.bench_function("iotlb_hit", |b| b.iter(|| black_box(rig.hit())));
    g.bench_function("iommu_read_u64", |b| b.iter(|| black_box(rig.read())));
    g.bench_function("confined_read_u64", |b| {
        b.iter(|| black_box(rig.confined_read()));
    });
    g.finish();
    rig.check_no_traffic();
}

/// One access of a case.
type Case = fn(&mut Rig) -> u64;

/// `--instructions`: each case once, in parts for callgrind (see the module doc).
fn instructions() {
    let mut rig = Rig::new();
    let cases: [(&str, Case); 3] = [
        ("client/iotlb_hit", Rig::hit),
        ("client/iommu_read_u64", Rig::read),
        ("client/confined_read_u64", Rig::confined_read),
    ];
    for (name, f) in cases {
        measured(|| (0..PAGES).map(|_| f(&mut rig)).sum::<u64>());
        part_end("-", 0);
        measured(|| (0..COUNTED).map(|_| f(&mut rig)).sum::<u64>());
        part_end(name, COUNTED);
    }
    rig.check_no_traffic();
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
    Criterion::default().configure_from_args().final_summary();
}
