//! MAP / UNMAP / translate cost with N live 4 KiB mappings in one domain, through the whole
//! request path (`Engine::handle_request`: parse, checks, interval store, emulated host mirror).
//!
//! Compare with cloud-hypervisor's numbers in the README's "Speed" table: its UNMAP is O(n)
//! (4 µs at 1k, 20–50 ms at 1M); here every operation is O(log n).
//!
//! `cargo bench -p vhost-device-iommu --bench mappings` runs N = 1k, 100k and 1M. Under
//! `cargo test --benches` (no `--bench` flag) each benchmark runs once and 1M is skipped.

mod common;

use std::hint::black_box;

use common::{map_req, send, unmap_req, PAGE};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use vhost_device_iommu::engine::{EndpointConfig, Engine, EngineConfig, Limits};
use vhost_device_iommu::host::{Access, EmulatedHost};
use virtio_iommu_testkit::requests as req;

/// Random mappings live below this IOVA; benchmark pairs use IOVAs above it.
const SPLIT: u64 = 1 << 47;

fn sizes() -> Vec<u64> {
    if std::env::args().any(|a| a == "--bench") {
        vec![1_000, 100_000, 1_000_000]
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

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("mappings");
    g.sample_size(10);
    for n in sizes() {
        for random in [false, true] {
            let kind = if random { "rand" } else { "seq" };
            let (mut v, iovas) = device(n, random);
            let mut rng = Rng(42);
            let fresh: Vec<u64> = (0..1024)
                .map(|_| SPLIT + rng.page_below(SPLIT - PAGE))
                .collect();

            // A MAP of a new page and its UNMAP, N mappings live.
            let mut k = 0usize;
            g.bench_with_input(
                BenchmarkId::new(format!("map_unmap_pair_{kind}"), n),
                &n,
                |b, _| {
                    b.iter(|| {
                        let iova = fresh[k % fresh.len()];
                        k += 1;
                        assert_eq!(send(&mut v, &map_req(iova)), 0);
                        assert_eq!(send(&mut v, &unmap_req(iova)), 0);
                    });
                },
            );

            // UNMAP of one of the N mappings, then MAP it back (the cloud-hypervisor
            // "UNMAP with ≈N live mappings" row plus a MAP).
            let mut k = 0usize;
            g.bench_with_input(
                BenchmarkId::new(format!("unmap_remap_{kind}"), n),
                &n,
                |b, _| {
                    b.iter(|| {
                        let iova = iovas[(k * 7919) % iovas.len()];
                        k += 1;
                        assert_eq!(send(&mut v, &unmap_req(iova)), 0);
                        assert_eq!(send(&mut v, &map_req(iova)), 0);
                    });
                },
            );

            // Translation: one hot page (IOTLB hit), and a sweep over the mappings (misses).
            g.bench_with_input(
                BenchmarkId::new(format!("translate_hit_{kind}"), n),
                &n,
                |b, _| {
                    let iova = iovas[0] + 8;
                    b.iter(|| {
                        black_box(
                            v.device_dma()
                                .translate(0, None, iova, 64, Access::Read)
                                .unwrap(),
                        )
                    });
                },
            );
            let mut k = 0usize;
            g.bench_with_input(
                BenchmarkId::new(format!("translate_miss_{kind}"), n),
                &n,
                |b, _| {
                    b.iter(|| {
                        let iova = iovas[(k * 7919) % iovas.len()];
                        k += 1;
                        black_box(
                            v.device_dma()
                                .translate(0, None, iova, 64, Access::Read)
                                .unwrap(),
                        )
                    });
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
