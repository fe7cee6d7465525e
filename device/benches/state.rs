//! Device-state save and load (PROTOCOL.md §12) with N live 4 KiB mappings in one domain:
//! `save` is `Engine::save_state` (snapshot + encode), `load` is `Engine::load_state` into a
//! fresh device (decode, checks, rebuild through the request handlers and the emulated host).
//! The stream's size is printed once per N.
//!
//! `cargo bench -p vhost-device-iommu --bench state` runs N = 10k, 100k and 1M; under
//! `cargo test --benches` each runs once at N = 1k. `STATE_BENCH_ONCE=N` skips criterion and
//! does one load and one save, for `valgrind --tool=callgrind` (instructions of `load_state`
//! and `save_state`, inclusive, from `callgrind_annotate --inclusive=yes`).

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, BatchSize, BenchmarkId, Criterion};
use vhost_device_iommu::engine::dump::{DomainDump, MappingDump};
use vhost_device_iommu::engine::{EndpointConfig, Engine, EngineConfig, Limits};
use vhost_device_iommu::host::EmulatedHost;

fn config() -> EngineConfig {
    EngineConfig {
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
    }
}

fn fresh() -> Engine {
    Engine::new(config(), Box::new(EmulatedHost::new())).unwrap()
}

/// The stream of a device with `n` mappings in domain 1 (endpoint 0), every feature negotiated.
fn stream(n: u64, now: Instant) -> Vec<u8> {
    let v = fresh();
    let mut s = v.saved_state(now);
    s.negotiated = v.offered_features();
    s.domains.push(DomainDump {
        id: 1,
        bypass: false,
        endpoints: vec![0],
        mappings: (0..n)
            .map(|i| MappingDump {
                virt_start: i * 0x2000,
                virt_last: i * 0x2000 + 0xfff,
                phys_start: i * 0x1000,
                flags: 3,
            })
            .collect(),
    });
    s.encode()
}

fn sizes() -> Vec<u64> {
    if std::env::args().any(|a| a == "--bench") {
        vec![10_000, 100_000, 1_000_000]
    } else {
        vec![1_000]
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("state");
    g.sample_size(10);
    let now = Instant::now();
    for n in sizes() {
        let bytes = stream(n, now);
        let mut source = fresh();
        source.load_state(&bytes, now).unwrap();
        assert_eq!(source.save_state(now), bytes);
        eprintln!("state of {n} mappings: {} bytes", bytes.len());
        g.bench_with_input(BenchmarkId::new("save", n), &n, |b, _| {
            b.iter(|| black_box(source.save_state(now)));
        });
        g.bench_with_input(BenchmarkId::new("load", n), &n, |b, _| {
            b.iter_batched(
                fresh,
                |mut v| {
                    v.load_state(&bytes, now).unwrap();
                    v
                },
                BatchSize::LargeInput,
            );
        });
    }
    g.finish();
}

/// One load and one save of `n` mappings, outside criterion (for callgrind).
fn once(n: u64) {
    let now = Instant::now();
    let bytes = stream(n, now);
    let mut v = fresh();
    v.load_state(&bytes, now).unwrap();
    let saved = v.save_state(now);
    assert_eq!(saved, bytes);
    eprintln!("state of {n} mappings: {} bytes", saved.len());
}

criterion_group!(benches, bench);

fn main() {
    if let Some(n) = std::env::var("STATE_BENCH_ONCE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        once(n);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
