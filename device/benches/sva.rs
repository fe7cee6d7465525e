//! vSVA through the engine: a PASID-tagged device access translated through a guest's
//! 4-level x86-64 first-stage table (VT-d, bound with ATTACH_TABLE) on the emulated host, and
//! a page request answered by the "driver", all through the entry points the daemon's
//! translation service calls (`Engine::device_translate`: `start`, `resume`; the event queue's
//! `pop_event`; `Engine::handle_request` for PAGE_RESP). No sockets, no vhost-user: this is
//! the engine's share of each operation.
//!
//! Setup: endpoint 0 (8 PASID bits, page requests) in domain 1, 1 000 stage-2 mappings MAPped in
//! the domain (the emulated host's stage 2 is the identity over guest RAM, PROTOCOL.md §9.6, so
//! they are not consulted for PASID traffic), a VT-d table for PASID 1 in 64 MiB of guest RAM.
//!
//! - `sva/nested_miss`: a 64-byte read with PASID 1 that the stage-1 IOTLB (512 entries,
//!   direct-mapped) does not hold: the accesses cycle over [`MISS_PAGES`] pages (16× the
//!   IOTLB), each a full 4-level walk of guest memory. That no access hit is checked: before
//!   each pass over the pages (not timed) every leaf is pointed at the other of two data pages
//!   without invalidating, so a cached leaf would answer the previous pass's address.
//! - `sva/nested_hit`: the same access to one page, answered by the stage-1 IOTLB.
//! - `sva/page_request_round_trip`: per page, the access faults (leaf not present) → the engine
//!   parks it and queues a page request → the event is popped as the daemon delivers it to the
//!   eventq (48-byte record) and parsed as the driver does → the bench makes the leaf present
//!   (the guest's fix of its page table; not-present entries are never cached, so no
//!   INVALIDATE) → PAGE_RESP SUCCESS built with the test kit, through `handle_request` → the
//!   parked translation resumed, walking again. A pool of [`PRQ_PAGES`] pages is used in turn;
//!   clearing their leaves and invalidating before reuse is not timed.
//!
//! The translate cases pass one `Instant` taken outside the timed part (the daemon reads the
//! clock per TRANSLATE; it only matters for parking); the round trip reads it as the daemon
//! does. Every answer (translated range, event fields, PAGE_RESP status) is checked outside
//! the timed part.
//!
//! `cargo bench -p vhost-device-iommu --bench sva` runs criterion. `sva --instructions` (what
//! `scripts/bench.sh` runs under callgrind) runs every case once more without criterion: a
//! warm-up, then the counted units, collected only inside [`measured`], one `part NAME UNITS`
//! line per callgrind dump (`part - 0`: warm-up).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use vhost_device_iommu::engine::{
    DmaAttrs, DmaTicket, EndpointConfig, Engine, EngineConfig, TranslateAccess, TranslateOutcome,
};
use vhost_device_iommu::host::EmulatedHost;
use vhost_device_iommu::GuestRam;
use virtio_iommu_spec::event::FaultFlags;
use virtio_iommu_spec::ext::{InvalCaches, InvalScope, PageRespCode, TableFormat, VtdFlags};
use virtio_iommu_spec::formats::x86::{ADDR_MASK, P, RW, US};
use virtio_iommu_spec::{Event, PageRequest, Request};
use virtio_iommu_testkit::bench::{criterion_config, measured, part_end};
use virtio_iommu_testkit::requests as req;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic};

const EP: u32 = 0;
const DOMAIN: u32 = 1;
const PASID: u32 = 1;
const PAGE: u64 = 0x1000;
/// Guest RAM: [0, 64 MiB).
const RAM: u64 = 64 << 20;
/// The two data pages leaves point at; stage-2 mappings live below.
const DATA: [u64; 2] = [0x10_0000, 0x10_1000];
/// Table pages are allocated from here up.
const TABLES: u64 = 0x20_0000;
/// Stage-2 mappings MAPped in the domain (identity, below `DATA`).
const S2_MAPPINGS: u64 = 1_000;
/// Bytes per access.
const LEN: u64 = 64;

/// The swept pages: 16 × the stage-1 IOTLB's 512 entries, 4-level walks (PML4 index 254).
const MISS_VA: u64 = 0x7f00_0000_0000;
const MISS_PAGES: usize = 8192;
/// The hot page.
const HIT_VA: u64 = 0x7e00_0000_0000;
/// The page-request pool (its leaves start not present).
const PRQ_VA: u64 = 0x5500_0000_0000;
const PRQ_PAGES: usize = 4096;
/// A user read-write x86 entry.
const X86_RW: u64 = P | RW | US;

/// Guest RAM with a bump allocator for table pages.
struct Guest {
    mem: GuestMemoryAtomic<GuestRam>,
    next: u64,
}

impl Guest {
    fn new() -> Self {
        let m = GuestRam::from_ranges(&[(GuestAddress(0), usize::try_from(RAM).unwrap())]).unwrap();
        Guest {
            mem: GuestMemoryAtomic::new(m),
            next: TABLES,
        }
    }

    fn page(&mut self) -> u64 {
        let p = self.next;
        self.next += PAGE;
        assert!(self.next <= RAM, "out of table pages");
        p
    }

    fn put(&self, gpa: u64, v: u64) {
        self.mem.memory().write_obj(v, GuestAddress(gpa)).unwrap();
    }

    fn get(&self, gpa: u64) -> u64 {
        self.mem.memory().read_obj(GuestAddress(gpa)).unwrap()
    }

    /// The address of the leaf entry of `va` in the 4-level table at `root`, creating the
    /// tables on the way.
    fn leaf_slot(&mut self, root: u64, va: u64) -> u64 {
        let mut table = root;
        for level in (1..4).rev() {
            let slot = table + ((va >> (12 + 9 * level)) & 0x1ff) * 8;
            let e = self.get(slot);
            table = if e & P == 0 {
                let t = self.page();
                self.put(slot, t | X86_RW);
                t
            } else {
                e & ADDR_MASK
            };
        }
        table + ((va >> 12) & 0x1ff) * 8
    }
}

/// Sends a request straight to the engine; returns the status.
fn send(v: &mut Engine, r: &Request) -> u8 {
    let mut w = [0xffu8; 4];
    assert_eq!(v.handle_request(r.encode().as_bytes(), &mut w), 4);
    w[0]
}

/// A 64-byte read with PASID 1 at `va`.
fn access(va: u64) -> TranslateAccess {
    TranslateAccess {
        endpoint: EP,
        pasid: Some(PASID),
        iova: va,
        last: va + LEN - 1,
        read: true,
        write: false,
        attrs: DmaAttrs::default(),
        no_fault: false,
    }
}

/// The first range of a translation as (iova, last, paddr); `None` for anything else.
fn first(o: &TranslateOutcome) -> Option<(u64, u64, u64)> {
    match o {
        TranslateOutcome::Translated(r) => r.as_slice().first().map(|r| (r.iova, r.last, r.paddr)),
        _ => None,
    }
}

/// Checks a translation of the page at `va` to `gpa`.
fn check(got: Option<(u64, u64, u64)>, va: u64, gpa: u64) {
    assert_eq!(
        got,
        Some((va, va + PAGE - 1, gpa)),
        "translation of {va:#x}"
    );
}

/// The device, its guest, and where each case is.
struct Rig {
    v: Engine,
    g: Guest,
    /// Leaf entry addresses of the swept pages and of the page-request pool.
    miss_leaves: Vec<u64>,
    prq_leaves: Vec<u64>,
    /// Pass over the swept pages (the leaves point at `DATA[pass % 2]`) and the next page.
    pass: usize,
    k: usize,
    /// Next page of the pool.
    p: usize,
}

impl Rig {
    fn new() -> Self {
        let cfg = EngineConfig {
            endpoints: vec![EndpointConfig {
                ids: EP..=EP,
                reserved: Vec::new(),
                pasid_bits: 8,
                page_requests: true,
                table_formats: vec![TableFormat::Vtd],
            }],
            boot_bypass: false,
            offer_attach_table: true,
            offer_page_request: true,
            ..EngineConfig::default()
        };
        let mut v = Engine::new(cfg, Box::new(EmulatedHost::new())).unwrap();
        v.negotiate(v.offered_features());
        let mut g = Guest::new();
        v.set_guest_memory(g.mem.clone());
        assert_eq!(send(&mut v, &req::attach(DOMAIN, EP)), 0);
        for i in 0..S2_MAPPINGS {
            let a = i * PAGE;
            assert_eq!(send(&mut v, &req::map(DOMAIN, a, a + PAGE - 1, a)), 0);
        }
        let root = g.page();
        let t = req::vtd_table(PASID, 48, root, VtdFlags::empty());
        assert_eq!(send(&mut v, &req::attach_table(DOMAIN, EP, t)), 0);
        let miss_leaves: Vec<u64> = (0..MISS_PAGES as u64)
            .map(|i| g.leaf_slot(root, MISS_VA + i * PAGE))
            .collect();
        for &s in &miss_leaves {
            g.put(s, DATA[0] | X86_RW);
        }
        let hit = g.leaf_slot(root, HIT_VA);
        g.put(hit, DATA[0] | X86_RW);
        let prq_leaves = (0..PRQ_PAGES as u64)
            .map(|i| g.leaf_slot(root, PRQ_VA + i * PAGE))
            .collect();
        Rig {
            v,
            g,
            miss_leaves,
            prq_leaves,
            pass: 0,
            k: 0,
            p: 0,
        }
    }

    /// Swept pages left in this pass; at the end of a pass, starts the next one (every leaf
    /// pointed at the other data page, not invalidated).
    fn miss_left(&mut self) -> usize {
        if self.k == MISS_PAGES {
            self.k = 0;
            self.pass += 1;
            let gpa = DATA[self.pass % 2];
            for &s in &self.miss_leaves {
                self.g.put(s, gpa | X86_RW);
            }
        }
        MISS_PAGES - self.k
    }

    /// The `i`-th access of this pass and the page it must reach.
    fn miss_access(&self, i: usize) -> (TranslateAccess, u64, u64) {
        let va = MISS_VA + (self.k + i) as u64 * PAGE;
        (access(va + 0x80), va, DATA[self.pass % 2])
    }

    /// The next page of the pool (leaf not present); when the pool is used up, clears every
    /// leaf and invalidates the PASID's cached leaves first.
    fn prq_page(&mut self) -> (u64, u64) {
        if self.p == PRQ_PAGES {
            self.p = 0;
            for &s in &self.prq_leaves {
                self.g.put(s, 0);
            }
            let inv = req::invalidate(
                DOMAIN,
                InvalCaches::IOTLB | InvalCaches::DEV_IOTLB,
                InvalScope::Pasid(PASID),
            );
            assert_eq!(send(&mut self.v, &inv), 0);
        }
        let i = self.p;
        self.p += 1;
        (PRQ_VA + i as u64 * PAGE, self.prq_leaves[i])
    }
}

/// What one page-request round trip saw, checked afterwards.
struct RoundTrip {
    va: u64,
    parked: Option<DmaTicket>,
    request: PageRequest,
    resp_used: usize,
    resp_status: u8,
    retried: Option<(u64, u64, u64)>,
}

/// One page-request round trip for the page at `va` with leaf entry `leaf` (timed by the
/// caller, or collected by callgrind through `wrap`).
fn round_trip(
    v: &mut Engine,
    g: &Guest,
    va: u64,
    leaf: u64,
    mut wrap: impl FnMut(&mut dyn FnMut()),
) -> RoundTrip {
    let mut out = None;
    wrap(&mut || {
        let o = v.device_translate().start(access(va), Instant::now());
        let TranslateOutcome::Pending(ticket) = o else {
            panic!("expected a page request for {va:#x}, got {o:?}");
        };
        // The daemon writes the record into an eventq buffer; the driver parses it.
        let ev = v.pop_event(48).expect("a page request event");
        let Ok(Event::PageRequest(pr)) = Event::parse(ev.as_bytes()) else {
            panic!("not a page request: {:?}", ev.as_bytes());
        };
        // The guest maps the page, then answers.
        g.put(leaf, DATA[1] | X86_RW);
        let resp = req::page_resp(EP, pr.pasid, pr.group_id, PageRespCode::Success).encode();
        let mut w = [0xffu8; 4];
        let used = v.handle_request(resp.as_bytes(), &mut w);
        let retried = v.device_translate().resume(ticket, Instant::now());
        out = Some(RoundTrip {
            va,
            parked: Some(ticket),
            request: pr,
            resp_used: used,
            resp_status: w[0],
            retried: retried.as_ref().and_then(first),
        });
    });
    out.unwrap()
}

impl RoundTrip {
    fn check(&self, v: &Engine) {
        assert!(self.parked.is_some());
        let pr = &self.request;
        assert_eq!(
            (pr.endpoint, pr.pasid, pr.address, pr.last),
            (EP, Some(PASID), self.va, true),
            "{pr:?}"
        );
        assert_eq!(pr.access, FaultFlags::READ, "{pr:?}");
        assert_eq!((self.resp_used, self.resp_status), (4, 0), "PAGE_RESP");
        check(self.retried, self.va, DATA[1]);
        assert_eq!(v.outstanding_page_requests(EP), 0);
        assert!(!v.has_events());
    }
}

fn bench(c: &mut Criterion) {
    let mut rig = Rig::new();
    let mut g = c.benchmark_group("sva");
    let now = Instant::now();
    let mut got = vec![None; MISS_PAGES];
    g.bench_function("nested_miss", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = usize::try_from(iters).unwrap();
            while left > 0 {
                let n = left.min(rig.miss_left());
                let t0 = Instant::now();
                for (i, slot) in got.iter_mut().enumerate().take(n) {
                    let (acc, _, _) = rig.miss_access(i);
                    *slot = first(&black_box(rig.v.device_translate().start(acc, now)));
                }
                total += t0.elapsed();
                for (i, r) in got.iter().enumerate().take(n) {
                    let (_, va, gpa) = rig.miss_access(i);
                    check(*r, va, gpa);
                }
                rig.k += n;
                left -= n;
            }
            total
        });
    });
    g.bench_function("nested_hit", |b| {
        b.iter_custom(|iters| {
            let n = usize::try_from(iters).unwrap();
            let mut got = Vec::with_capacity(n);
            let t0 = Instant::now();
            for _ in 0..n {
                let o = rig.v.device_translate().start(access(HIT_VA + 0x80), now);
                got.push(first(&black_box(o)));
            }
            let t = t0.elapsed();
            for r in got {
                check(r, HIT_VA, DATA[0]);
            }
            t
        });
    });
    g.bench_function("page_request_round_trip", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (va, leaf) = rig.prq_page();
                let mut t = Duration::ZERO;
                let r = round_trip(&mut rig.v, &rig.g, va, leaf, |f| {
                    let t0 = Instant::now();
                    f();
                    t = t0.elapsed();
                });
                total += t;
                r.check(&rig.v);
            }
            total
        });
    });
    g.finish();
}

/// `--instructions`: every case, in parts for callgrind (see the module doc).
fn instructions() {
    let mut rig = Rig::new();
    let now = Instant::now();
    // Misses: a warm-up pass, then one counted pass over every swept page.
    for counted in [false, true] {
        let n = rig.miss_left();
        assert_eq!(n, MISS_PAGES);
        for i in 0..n {
            let (acc, va, gpa) = rig.miss_access(i);
            let o = measured(|| rig.v.device_translate().start(acc, now));
            check(first(&o), va, gpa);
        }
        rig.k += n;
        if counted {
            part_end("sva/nested_miss", n as u64);
        } else {
            part_end("-", 0);
        }
    }
    const HITS: u64 = 1024;
    for counted in [false, true] {
        for _ in 0..HITS {
            let o = measured(|| rig.v.device_translate().start(access(HIT_VA + 0x80), now));
            check(first(&o), HIT_VA, DATA[0]);
        }
        if counted {
            part_end("sva/nested_hit", HITS);
        } else {
            part_end("-", 0);
        }
    }
    const ROUND_TRIPS: u64 = 256;
    for counted in [false, true] {
        for _ in 0..ROUND_TRIPS {
            let (va, leaf) = rig.prq_page();
            let r = round_trip(&mut rig.v, &rig.g, va, leaf, |f| measured(f));
            r.check(&rig.v);
        }
        if counted {
            part_end("sva/page_request_round_trip", ROUND_TRIPS);
        } else {
            part_end("-", 0);
        }
    }
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
