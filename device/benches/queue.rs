//! Cost per request through the requestq path the daemon runs (`IommuBackend::process_requests`):
//! `pop_descriptor_chain` → `queue::process_request` (gather, `Engine::handle_request`,
//! scatter) → `add_used`, on a 256-entry split queue in an anonymous `GuestMemoryMmap`, 128
//! requests (2-descriptor chains) per batch.
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

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{map_req, send, unmap_req, PAGE};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use vhost_device_iommu::engine::{Engine, EngineConfig};
use vhost_device_iommu::host::EmulatedHost;
use vhost_device_iommu::queue::{process_request, Scratch};
use virtio_iommu_spec::Request;
use virtio_iommu_testkit::requests as req;
use virtio_iommu_testkit::ring::{Desc, RingConfig, DESC_F_NEXT, DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

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
        if std::env::var_os("QUEUE_BENCH_1M").is_some() {
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
    mem: GuestMemoryMmap,
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
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
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
        let mem = &self.mem;
        let start = Instant::now();
        while let Some(chain) = self.q.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let used = process_request(mem, chain, &mut self.engine, &mut self.scratch);
            self.q.add_used(mem, head, used).unwrap();
        }
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

fn with_n(c: &mut Criterion) {
    let mut g = c.benchmark_group("queue");
    for n in sizes() {
        for random in [false, true] {
            let kind = if random { "rand" } else { "seq" };
            let (live, fresh) = iovas(n, random);
            let mut rig = rig(&live);
            // The seq cases map past the live ones (appending), as cloud-hypervisor's seq MAP.
            let fresh_at =
                |i: u64| fresh[usize::try_from(i).unwrap() % if random { POOL } else { BATCH }];
            let live_at = |i: u64| live[usize::try_from(i * 7919 % n).unwrap()];

            // MAP of a new page with N live; the batch is unmapped afterwards (untimed).
            let mut next = 0u64;
            g.bench_with_input(BenchmarkId::new(format!("map_{kind}"), n), &n, |b, _| {
                b.iter_custom(|iters| {
                    timed(&mut rig, iters, BATCH_U64, |_, k| {
                        let io: Vec<u64> = (next..next + k).map(fresh_at).collect();
                        next += k;
                        (
                            io.iter().map(|i| Posted::req(&map_req(*i))).collect(),
                            io.iter().map(|i| unmap_req(*i)).collect(),
                        )
                    })
                });
            });

            // UNMAP of one of the N live mappings; MAPped back afterwards (untimed).
            let mut next = 0u64;
            g.bench_with_input(BenchmarkId::new(format!("unmap_{kind}"), n), &n, |b, _| {
                b.iter_custom(|iters| {
                    timed(&mut rig, iters, BATCH_U64, |_, k| {
                        let io: Vec<u64> = (next..next + k).map(live_at).collect();
                        next += k;
                        (
                            io.iter().map(|i| Posted::req(&unmap_req(*i))).collect(),
                            io.iter().map(|i| map_req(*i)).collect(),
                        )
                    })
                });
            });

            // MAP of a new page then its UNMAP, N live kept steady (time per pair).
            let mut next = 0u64;
            g.bench_with_input(
                BenchmarkId::new(format!("map_unmap_pair_{kind}"), n),
                &n,
                |b, _| {
                    b.iter_custom(|iters| {
                        timed(&mut rig, iters, BATCH_U64 / 2, |_, k| {
                            let io: Vec<u64> = (next..next + k).map(fresh_at).collect();
                            next += k;
                            let reqs = io
                                .iter()
                                .flat_map(|i| [map_req(*i), unmap_req(*i)])
                                .map(|r| Posted::req(&r))
                                .collect();
                            (reqs, Vec::new())
                        })
                    });
                },
            );
        }
    }
    g.finish();
}

fn fixed(c: &mut Criterion) {
    let mut g = c.benchmark_group("queue");
    let mut rig = rig(&[]);

    g.bench_function("probe", |b| {
        let probe = req::probe(0);
        b.iter_custom(|iters| {
            timed(&mut rig, iters, BATCH_U64, |_, k| {
                ((0..k).map(|_| Posted::req(&probe)).collect(), Vec::new())
            })
        });
    });

    // ATTACH of endpoint 1 to a new domain 2, then DETACH (frees the domain); per pair.
    g.bench_function("attach_detach_pair", |b| {
        let attach = req::attach(2, 1);
        let detach = req::detach(2, 1);
        b.iter_custom(|iters| {
            timed(&mut rig, iters, BATCH_U64 / 2, |_, k| {
                let reqs = (0..k)
                    .flat_map(|_| [Posted::req(&attach), Posted::req(&detach)])
                    .collect();
                (reqs, Vec::new())
            })
        });
    });

    // Unknown request type: popped, returned with used length 0 (the floor).
    g.bench_function("unknown_type", |b| {
        b.iter_custom(|iters| {
            timed(&mut rig, iters, BATCH_U64, |_, k| {
                ((0..k).map(|_| Posted::unknown()).collect(), Vec::new())
            })
        });
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = fixed, with_n
}
criterion_main!(benches);
