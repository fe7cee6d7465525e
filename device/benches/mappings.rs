//! MAP / UNMAP / translate cost with N live 4 KiB mappings in one domain, through the whole
//! request path (`Engine::handle_request`: parse, checks, interval store, emulated host mirror).
//!
//! Compare with cloud-hypervisor's numbers in the README's "Speed" table: its UNMAP is O(n)
//! (4 µs at 1k, 20–50 ms at 1M); here every operation is O(log n).
//!
//! `cargo bench -p vhost-device-iommu --bench mappings` runs N = 1k, 100k and 1M. Under
//! `cargo test --benches` (no `--bench` flag) each benchmark runs once and 1M is skipped.
//!
//! `mappings --instructions` (what `scripts/bench.sh` runs under callgrind) runs every case
//! once more without criterion: a warm-up, then [`COUNTED`] units, collected only inside
//! [`measured`], one `part NAME UNITS` line per callgrind dump (`part - 0`: warm-up).
//! `mappings --memory seq|rand` prints `memory CASE BYTES_PER_MAPPING`: the resident-set
//! growth of building 1M mappings, divided by their number (one kind per process: memory the
//! allocator keeps after a drop would hide the second kind's growth).

mod common;

use common::{map_req, send, unmap_req, PAGE};
use criterion::{criterion_group, BenchmarkId, Criterion};
use vhost_device_iommu::engine::{EndpointConfig, Engine, EngineConfig, Limits};
use vhost_device_iommu::host::{Access, EmulatedHost};
use virtio_iommu_testkit::bench::{measured, part_end};
use virtio_iommu_testkit::requests as req;

/// Random mappings live below this IOVA; benchmark pairs use IOVAs above it.
const SPLIT: u64 = 1 << 47;

fn sizes() -> Vec<u64> {
    if std::env::args().any(|a| a == "--bench") {
        sizes_for_instructions()
    } else {
        vec![1_000]
    }
}

/// xorshift64*: deterministic page-aligned IOVAs below `limit`.
struct Rng(u64);

impl Rng {
    fn page_below(&mut self, limit: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % (limit / PAGE)) * PAGE
    }
}

/// A device with `n` live mappings in domain 1 (endpoint 0); returns their IOVAs.
fn device(n: u64, random: bool) -> (Engine, Vec<u64>) {
    let cfg = EngineConfig {
        endpoints: vec![EndpointConfig {
            ids: 0..=0,
            reserved: Vec::new(),
            ..EndpointConfig::default()
        }],
        limits: Limits {
            max_mappings_per_domain: 1 << 21,
            ..Limits::default()
        },
        ..EngineConfig::default()
    };
    let mut v = Engine::new(cfg, Box::new(EmulatedHost::new())).unwrap();
    v.negotiate(v.offered_features());
    let attach = req::attach(1, 0);
    assert_eq!(send(&mut v, &attach), 0);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut iovas = Vec::new();
    let mut i = 0;
    while u64::try_from(iovas.len()).unwrap() < n {
        let iova = if random {
            rng.page_below(SPLIT)
        } else {
            i * PAGE
        };
        i += 1;
        // Random IOVAs may collide: S_INVAL, just draw again.
        if send(&mut v, &map_req(iova)) == 0 {
            iovas.push(iova);
        }
    }
    (v, iovas)
}

/// One device with N live mappings and the IOVAs its cases use.
struct WithN {
    v: Engine,
    iovas: Vec<u64>,
    fresh: Vec<u64>,
    k: usize,
}

#[derive(Clone, Copy)]
enum Case {
    /// A MAP of a new page and its UNMAP, N mappings live.
    Pair,
    /// UNMAP of one of the N mappings, then MAP it back (the cloud-hypervisor "UNMAP with ≈N
    /// live mappings" row plus a MAP).
    UnmapRemap,
    /// Translation of one hot page (IOTLB hit).
    TranslateHit,
    /// Translation sweeping over the mappings (IOTLB misses).
    TranslateMiss,
}

impl Case {
    const ALL: [Case; 4] = [
        Case::Pair,
        Case::UnmapRemap,
        Case::TranslateHit,
        Case::TranslateMiss,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::Pair => "map_unmap_pair",
            Case::UnmapRemap => "unmap_remap",
            Case::TranslateHit => "translate_hit",
            Case::TranslateMiss => "translate_miss",
        }
    }
}

impl WithN {
    fn new(n: u64, random: bool) -> Self {
        let (v, iovas) = device(n, random);
        let mut rng = Rng(42);
        let fresh = (0..1024)
            .map(|_| SPLIT + rng.page_below(SPLIT - PAGE))
            .collect();
        WithN {
            v,
            iovas,
            fresh,
            k: 0,
        }
    }

    /// One unit of `case`.
    fn run(&mut self, case: Case) {
        let k = self.k;
        self.k += 1;
        match case {
            Case::Pair => {
                let iova = self.fresh[k % self.fresh.len()];
                let (map, unmap) = (map_req(iova), unmap_req(iova));
                assert_eq!(measured(|| send(&mut self.v, &map)), 0);
                assert_eq!(measured(|| send(&mut self.v, &unmap)), 0);
            }
            Case::UnmapRemap => {
                let iova = self.iovas[(k * 7919) % self.iovas.len()];
                let (map, unmap) = (map_req(iova), unmap_req(iova));
                assert_eq!(measured(|| send(&mut self.v, &unmap)), 0);
                assert_eq!(measured(|| send(&mut self.v, &map)), 0);
            }
            Case::TranslateHit | Case::TranslateMiss => {
                let iova = if matches!(case, Case::TranslateHit) {
                    self.iovas[0] + 8
                } else {
                    self.iovas[(k * 7919) % self.iovas.len()]
                };
                let v = &mut self.v;
                measured(|| {
                    v.device_dma()
                        .translate(0, None, iova, 64, Access::Read)
                        .unwrap()
                });
            }
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("mappings");
    g.sample_size(10);
    for n in sizes() {
        for random in [false, true] {
            let kind = if random { "rand" } else { "seq" };
            let mut d = WithN::new(n, random);
            for case in Case::ALL {
                let id = BenchmarkId::new(format!("{}_{kind}", case.name()), n);
                g.bench_with_input(id, &n, |b, _| b.iter(|| d.run(case)));
            }
        }
    }
    g.finish();
}

/// Units per counted part in `--instructions` mode.
const COUNTED: u64 = 1024;

/// `--instructions`: every case, in parts for callgrind (see the module doc).
fn instructions() {
    for n in sizes_for_instructions() {
        for random in [false, true] {
            let kind = if random { "rand" } else { "seq" };
            let mut d = WithN::new(n, random);
            for case in Case::ALL {
                d.run(case);
                part_end("-", 0);
                for _ in 0..COUNTED {
                    d.run(case);
                }
                part_end(&format!("mappings/{}_{kind}/{n}", case.name()), COUNTED);
            }
        }
    }
}

/// N of the full run: 1k, 100k and 1M (1M left out with `BENCH_QUICK`).
fn sizes_for_instructions() -> Vec<u64> {
    let mut v = vec![1_000, 100_000];
    if std::env::var_os("BENCH_QUICK").is_none() {
        v.push(1_000_000);
    }
    v
}

/// Resident set size of this process in bytes (Linux `/proc/self/statm`).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// `--memory KIND`: bytes of resident memory per live mapping at 1M.
fn memory(kind: &str) {
    const N: u64 = 1_000_000;
    let before = rss();
    let (v, iovas) = device(N, kind == "rand");
    let after = rss();
    // The IOVA list is the benchmark's, not the device's.
    let list = u64::try_from(iovas.capacity() * 8).unwrap();
    #[allow(clippy::cast_precision_loss)] // a ratio to print
    let per = after.saturating_sub(before).saturating_sub(list) as f64 / N as f64;
    println!("memory mappings/bytes_per_mapping_{kind}/{N} {per:.1}");
    drop((v, iovas));
}

criterion_group!(benches, bench);

fn main() {
    if std::env::args().any(|a| a == "--instructions") {
        instructions();
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--memory") {
        memory(args.get(i + 1).map_or("seq", String::as_str));
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
