//! Cost per request through the requestq path the daemon runs (`IommuBackend::process_requests`):
//! `RingView` (the rings resolved once per batch) → `queue::process_request` over its chain walk
//! (gather, `Engine::handle_request`, scatter) → `put_used`, one used-index publish per batch;
//! on a 256-entry split queue in an anonymous `GuestRam` (the daemon's memory type, with its
//! dirty bitmap, no log set), 128 requests (2-descriptor chains) per batch.
//!
//! The same thing cloud-hypervisor's own benchmark of its in-VMM device times
//! (`request_queue()`, 128 requests per call; its numbers are in the README's "Speed" table). Not timed: writing the requests and refilling the avail ring, checking
//! every reply (used length and S_OK), and undoing a batch's effect so N stays steady.
//!
//! Every reported time is per request, or per pair for the `*_pair` cases.
//!
//! `cargo bench -p vhost-device-iommu --bench queue` runs N = 1k, 10k and 100k live mappings
//! (add 1M with `QUEUE_BENCH_1M=1`). Under `cargo test --benches` (no `--bench` flag) each
//! benchmark runs once and only N = 1k is set up.
//!
//! `queue --instructions` (what `scripts/bench.sh` runs under callgrind) runs every case once
//! more without criterion: a warm-up batch, then [`COUNTED`] units; only [`measured`] is
//! collected (`--toggle-collect`), and a dump after each [`part_end`] separates the parts. It
//! prints one `part NAME UNITS` line per part (`part - 0` for a warm-up) in dump order.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{map_req, send, unmap_req, PAGE};
use criterion::{criterion_group, BenchmarkId, Criterion};
use vhost_device_iommu::engine::{Engine, EngineConfig};
use vhost_device_iommu::host::EmulatedHost;
use vhost_device_iommu::queue::{process_request, Scratch};
use vhost_device_iommu::ring::RingView;
use vhost_device_iommu::GuestRam;
use virtio_iommu_spec::Request;
use virtio_iommu_testkit::bench::{criterion_config, measured, part_end};
use virtio_iommu_testkit::requests as req;
use virtio_iommu_testkit::ring::{Desc, RingConfig, DESC_F_NEXT, DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// Queue size, as in the anchor.
const QSIZE: u16 = 256;
/// Chains per batch: two descriptors each fill the 256-entry table.
const BATCH: usize = 128;
/// `EngineConfig::default().probe_size`.
const PROBE_SIZE: u32 = 512;

// Guest memory layout. The rings are laid out by hand, each at its own page (virtio-queue
// 0.18's MockSplitQueue overlaps avail and used rings at 256 entries).
const MEM_SIZE: usize = 1 << 20;
const DESC_TABLE: u64 = 0x1000; // 256 * 16 bytes
const AVAIL_RING: u64 = 0x2000; // 4 + 256 * 2 + 2 bytes
const USED_RING: u64 = 0x3000; // 4 + 256 * 8 + 2 bytes
/// Device-readable request bytes of chain k at `REQ_AREA + k * REQ_STRIDE`.
const REQ_AREA: u64 = 0x1_0000;
const REQ_STRIDE: u64 = 0x80;
/// Device-writable part of chain k at `RESP_AREA + k * RESP_STRIDE` (room for PROBE's 516).
const RESP_AREA: u64 = 0x2_0000;
const RESP_STRIDE: u64 = 0x400;

/// The ring at those addresses.
const RING: RingConfig = RingConfig {
    size: QSIZE,
    desc: DESC_TABLE,
    avail: AVAIL_RING,
    used: USED_RING,
};

/// Seq IOVAs start above the x86 MSI window the default endpoint reserves.
const SEQ_BASE: u64 = 1 << 32;
/// Random IOVAs: 4 KiB aligned in [2^32, 2^48).
const RAND_LO: u64 = 1 << 32;
const RAND_HI: u64 = 1 << 48;
/// Fresh IOVAs MAPped by the timed batches (then unmapped, untimed) in the random cases.
const POOL: usize = 8 * BATCH;

fn sizes() -> Vec<u64> {
    if std::env::args().any(|a| a == "--bench") {
        let mut v = vec![1_000, 10_000, 100_000];
        if std::env::var_os("QUEUE_BENCH_1M").is_some() && std::env::var_os("BENCH_QUICK").is_none()
        {
            v.push(1_000_000);
        }
        v
    } else {
        vec![1_000]
    }
}

/// xorshift64*: deterministic page-aligned IOVAs in `[lo, hi)`.
struct Rng(u64);

impl Rng {
    fn page_in(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        lo + (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % ((hi - lo) / PAGE)) * PAGE
    }
}

/// One request as the driver posts it.
struct Posted {
    readable: Vec<u8>,
    writable: u32,
    /// Used length the device must report: the whole writable part, or 0 (no reply).
    expect_used: u32,
}

impl Posted {
    fn req(r: &Request) -> Self {
        let w = u32::try_from(r.writable_len(PROBE_SIZE)).unwrap();
        Posted {
            readable: r.encode().as_bytes().to_vec(),
            writable: w,
            expect_used: w,
        }
    }

    /// A request whose type byte is no known type: the device returns it unanswered.
    fn unknown() -> Self {
        let mut readable = vec![0u8; 20];
        readable[0] = 0x7f;
        Posted {
            readable,
            writable: 4,
            expect_used: 0,
        }
    }
}

/// Driver side and device side of one requestq.
struct Rig {
    mem: GuestRam,
    q: Queue,
    /// Driver's avail index.
    avail: u16,
    /// Driver's last seen used index.
    used: u16,
    engine: Engine,
    scratch: Scratch,
}

impl Rig {
    fn new(engine: Engine) -> Self {
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_size(QSIZE);
        let lo_hi = |a: u64| {
            (
                Some(u32::try_from(a & 0xffff_ffff).unwrap()),
                Some(u32::try_from(a >> 32).unwrap()),
            )
        };
        let (lo, hi) = lo_hi(DESC_TABLE);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = lo_hi(AVAIL_RING);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = lo_hi(USED_RING);
        q.set_used_ring_address(lo, hi);
        q.set_ready(true);
        assert!(q.is_valid(&mem));
        Rig {
            mem,
            q,
            avail: 0,
            used: 0,
            engine,
            scratch: Scratch::default(),
        }
    }

    /// Writes up to [`BATCH`] requests as chains (2k, 2k + 1) and makes them available.
    fn post(&mut self, reqs: &[Posted]) {
        assert!(reqs.len() <= BATCH);
        for (k, r) in (0u64..).zip(reqs) {
            let rd = REQ_AREA + k * REQ_STRIDE;
            let wr = RESP_AREA + k * RESP_STRIDE;
            let head = u16::try_from(2 * k).unwrap();
            self.mem.write_slice(&r.readable, GuestAddress(rd)).unwrap();
            // Sentinel: a reply must overwrite it.
            let w = usize::try_from(r.writable).unwrap();
            self.mem
                .write_slice(&vec![0xa5u8; w], GuestAddress(wr))
                .unwrap();
            let len = u32::try_from(r.readable.len()).unwrap();
            let readable = Desc {
                addr: rd,
                len,
                flags: DESC_F_NEXT,
                next: head + 1,
            };
            let writable = Desc {
                addr: wr,
                len: r.writable,
                flags: DESC_F_WRITE,
                next: 0,
            };
            RING.write_desc(&self.mem, head, readable).unwrap();
            RING.write_desc(&self.mem, head + 1, writable).unwrap();
            RING.put_avail(&self.mem, self.avail, head).unwrap();
            self.avail = self.avail.wrapping_add(1);
        }
        RING.set_avail_idx(&self.mem, self.avail).unwrap();
    }

    /// The timed part: what `IommuBackend::process_requests` does per chain.
    fn run(&mut self) -> Duration {
        let start = Instant::now();
        measured(|| {
            let mem = &self.mem;
            let view = RingView::new(mem, &self.q).unwrap();
            let avail = view.avail_idx().unwrap();
            let mut next_avail = self.q.next_avail();
            let old_used = self.q.next_used();
            let mut next_used = old_used;
            while next_avail != avail {
                let head = view.avail_head(next_avail).unwrap();
                next_avail = next_avail.wrapping_add(1);
                let used =
                    process_request(mem, view.chain(head), &mut self.engine, &mut self.scratch);
                view.put_used(next_used, head, used).unwrap();
                next_used = next_used.wrapping_add(1);
            }
            self.q.set_next_avail(next_avail);
            self.q.set_next_used(next_used);
            view.publish_used(old_used, next_used, false).unwrap();
        });
        start.elapsed()
    }

    /// Checks every used element of the batch: the expected length and, for a reply, S_OK.
    fn check(&mut self, reqs: &[Posted]) {
        let used_idx = RING.used_idx(&self.mem).unwrap();
        assert_eq!(
            used_idx.wrapping_sub(self.used),
            u16::try_from(reqs.len()).unwrap()
        );
        for (k, r) in (0u64..).zip(reqs) {
            let (id, len) = RING.used_elem(&self.mem, self.used).unwrap();
            assert_eq!(u64::from(id), 2 * k);
            assert_eq!(len, r.expect_used);
            if len > 0 {
                let tail = RESP_AREA + k * RESP_STRIDE + u64::from(len) - 4;
                let status: u8 = self.mem.read_obj(GuestAddress(tail)).unwrap();
                assert_eq!(status, 0, "request {k} did not return S_OK");
            }
            self.used = self.used.wrapping_add(1);
        }
    }
}

/// The engine: default config, every offered feature negotiated, endpoint 0 in domain 1, and
/// `live` mappings in domain 1.
fn rig(live: &[u64]) -> Rig {
    let mut v = Engine::new(EngineConfig::default(), Box::new(EmulatedHost::new())).unwrap();
    v.negotiate(v.offered_features());
    let attach = req::attach(1, 0);
    assert_eq!(send(&mut v, &attach), 0);
    for iova in live {
        assert_eq!(send(&mut v, &map_req(*iova)), 0);
    }
    Rig::new(v)
}

/// `n` live IOVAs plus [`POOL`] fresh ones not among them.
fn iovas(n: u64, random: bool) -> (Vec<u64>, Vec<u64>) {
    let n = usize::try_from(n).unwrap();
    if !random {
        let all: Vec<u64> = (0u64..)
            .take(n + POOL)
            .map(|i| SEQ_BASE + i * PAGE)
            .collect();
        return (all[..n].to_vec(), all[n..].to_vec());
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut seen = HashSet::new();
    let mut all = Vec::with_capacity(n + POOL);
    while all.len() < n + POOL {
        let iova = rng.page_in(RAND_LO, RAND_HI);
        if seen.insert(iova) {
            all.push(iova);
        }
    }
    let fresh = all.split_off(n);
    (all, fresh)
}

/// Runs `iters` units in batches of up to `per_batch` units; `make(first_unit, units)` gives
/// the batch's requests and the untimed cleanup requests. Returns the timed total.
fn timed(
    rig: &mut Rig,
    iters: u64,
    per_batch: u64,
    mut make: impl FnMut(u64, u64) -> (Vec<Posted>, Vec<Request>),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let n = (iters - done).min(per_batch);
        let (reqs, cleanup) = make(done, n);
        rig.post(&reqs);
        total += rig.run();
        rig.check(&reqs);
        for r in &cleanup {
            assert_eq!(send(&mut rig.engine, r), 0);
        }
        done += n;
    }
    total
}

const BATCH_U64: u64 = BATCH as u64;

/// Units per counted part in `--instructions` mode.
const COUNTED: u64 = 8 * BATCH_U64;

/// The cases with N live mappings: their requests and the untimed undo of each batch.
struct WithN {
    live: Vec<u64>,
    fresh: Vec<u64>,
    random: bool,
    n: u64,
    next: u64,
}

/// What one batch of a case is: its requests, its cleanup and units per batch.
#[derive(Clone, Copy)]
enum Case {
    /// MAP of a new page with N live; the batch is unmapped afterwards (untimed).
    Map,
    /// UNMAP of one of the N live mappings; MAPped back afterwards (untimed).
    Unmap,
    /// MAP of a new page then its UNMAP, N live kept steady (time per pair).
    Pair,
}

impl Case {
    const ALL: [Case; 3] = [Case::Map, Case::Unmap, Case::Pair];

    fn name(self) -> &'static str {
        match self {
            Case::Map => "map",
            Case::Unmap => "unmap",
            Case::Pair => "map_unmap_pair",
        }
    }

    fn per_batch(self) -> u64 {
        match self {
            Case::Pair => BATCH_U64 / 2,
            Case::Map | Case::Unmap => BATCH_U64,
        }
    }
}

impl WithN {
    fn new(n: u64, random: bool) -> (Self, Rig) {
        let (live, fresh) = iovas(n, random);
        let rig = rig(&live);
        (
            WithN {
                live,
                fresh,
                random,
                n,
                next: 0,
            },
            rig,
        )
    }

    fn kind(&self) -> &'static str {
        if self.random {
            "rand"
        } else {
            "seq"
        }
    }

    /// The seq cases map past the live ones (appending), as cloud-hypervisor's seq MAP.
    fn fresh_at(&self, i: u64) -> u64 {
        let pool = if self.random { POOL } else { BATCH };
        self.fresh[usize::try_from(i).unwrap() % pool]
    }

    fn live_at(&self, i: u64) -> u64 {
        self.live[usize::try_from(i * 7919 % self.n).unwrap()]
    }

    fn batch(&mut self, case: Case, k: u64) -> (Vec<Posted>, Vec<Request>) {
        let range = self.next..self.next + k;
        self.next += k;
        match case {
            Case::Map => {
                let io: Vec<u64> = range.map(|i| self.fresh_at(i)).collect();
                (
                    io.iter().map(|i| Posted::req(&map_req(*i))).collect(),
                    io.iter().map(|i| unmap_req(*i)).collect(),
                )
            }
            Case::Unmap => {
                let io: Vec<u64> = range.map(|i| self.live_at(i)).collect();
                (
                    io.iter().map(|i| Posted::req(&unmap_req(*i))).collect(),
                    io.iter().map(|i| map_req(*i)).collect(),
                )
            }
            Case::Pair => {
                let reqs = range
                    .map(|i| self.fresh_at(i))
                    .flat_map(|i| [map_req(i), unmap_req(i)])
                    .map(|r| Posted::req(&r))
                    .collect();
                (reqs, Vec::new())
            }
        }
    }
}

/// The cases without mappings.
#[derive(Clone, Copy)]
enum Fixed {
    Probe,
    /// ATTACH of endpoint 1 to a new domain 2, then DETACH (frees the domain); per pair.
    AttachDetach,
    /// Unknown request type: popped, returned with used length 0 (the floor).
    Unknown,
}

impl Fixed {
    const ALL: [Fixed; 3] = [Fixed::Probe, Fixed::AttachDetach, Fixed::Unknown];

    fn name(self) -> &'static str {
        match self {
            Fixed::Probe => "probe",
            Fixed::AttachDetach => "attach_detach_pair",
            Fixed::Unknown => "unknown_type",
        }
    }

    fn per_batch(self) -> u64 {
        match self {
            Fixed::AttachDetach => BATCH_U64 / 2,
            Fixed::Probe | Fixed::Unknown => BATCH_U64,
        }
    }

    fn batch(self, k: u64) -> (Vec<Posted>, Vec<Request>) {
        let reqs = match self {
            Fixed::Probe => (0..k).map(|_| Posted::req(&req::probe(0))).collect(),
            Fixed::AttachDetach => (0..k)
                .flat_map(|_| {
                    [
                        Posted::req(&req::attach(2, 1)),
                        Posted::req(&req::detach(2, 1)),
                    ]
                })
                .collect(),
            Fixed::Unknown => (0..k).map(|_| Posted::unknown()).collect(),
        };
        (reqs, Vec::new())
    }
}

fn with_n(c: &mut Criterion) {
    let mut g = c.benchmark_group("queue");
    for n in sizes() {
        for random in [false, true] {
            let (mut cases, mut rig) = WithN::new(n, random);
            for case in Case::ALL {
                let id = BenchmarkId::new(format!("{}_{}", case.name(), cases.kind()), n);
                g.bench_with_input(id, &n, |b, _| {
                    b.iter_custom(|iters| {
                        timed(&mut rig, iters, case.per_batch(), |_, k| {
                            cases.batch(case, k)
                        })
                    });
                });
            }
        }
    }
    g.finish();
}

fn fixed(c: &mut Criterion) {
    let mut g = c.benchmark_group("queue");
    let mut rig = rig(&[]);
    for case in Fixed::ALL {
        g.bench_function(case.name(), |b| {
            b.iter_custom(|iters| timed(&mut rig, iters, case.per_batch(), |_, k| case.batch(k)));
        });
    }
    g.finish();
}

/// One case in `--instructions` mode: a warm-up batch, then [`COUNTED`] units.
fn count(
    name: &str,
    rig: &mut Rig,
    per_batch: u64,
    mut make: impl FnMut(u64) -> (Vec<Posted>, Vec<Request>),
) {
    timed(rig, per_batch, per_batch, |_, k| make(k));
    part_end("-", 0);
    timed(rig, COUNTED, per_batch, |_, k| make(k));
    part_end(name, COUNTED);
}

/// `--instructions`: every case once, in parts for callgrind (see the module doc).
fn instructions() {
    let mut rig = rig(&[]);
    for case in Fixed::ALL {
        count(
            &format!("queue/{}", case.name()),
            &mut rig,
            case.per_batch(),
            |k| case.batch(k),
        );
    }
    drop(rig);
    for n in sizes_for_instructions() {
        for random in [false, true] {
            let (mut cases, mut rig) = WithN::new(n, random);
            for case in Case::ALL {
                let name = format!("queue/{}_{}/{n}", case.name(), cases.kind());
                count(&name, &mut rig, case.per_batch(), |k| cases.batch(case, k));
            }
        }
    }
}

/// N in `--instructions` mode: the bench's sizes (1M with `QUEUE_BENCH_1M`).
fn sizes_for_instructions() -> Vec<u64> {
    let mut v = vec![1_000, 10_000, 100_000];
    if std::env::var_os("QUEUE_BENCH_1M").is_some() && std::env::var_os("BENCH_QUICK").is_none() {
        v.push(1_000_000);
    }
    v
}

criterion_group! {
    name = benches;
    config = criterion_config();
    targets = fixed, with_n
}

fn main() {
    if std::env::args().any(|a| a == "--instructions") {
        instructions();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
