//! The whole backend event path: `IommuBackend::handle_event` on real `VringRwLock` queues over
//! guest memory, EVENT_IDX on or off, with arbitrary descriptor tables, avail rings and avail
//! indices (impossible ones too), kicks of both queues and wake-ups, fault events for the
//! eventq, and device restarts.
//!
//! Checked after every event (`handle_event` returning at all is the first check: a loop is
//! the fuzzer's timeout):
//! - each ring's `next_avail` moved by at most the chains published (none when the avail index
//!   is more than a queue size ahead: the ring is broken), and its `next_used` by at most the
//!   chains taken;
//! - every new used entry names a head inside the descriptor table, with a length of at most
//!   the writable bytes of that head's chain, and the used index in memory is the device's;
//! - pending events stay within the engine's limit.
//!
//! A chain whose device-writable buffers overlap a ring or descriptor table lets the device
//! rewrite what the driver published while it serves it; then only the bounds that hold
//! whatever the rings say are checked.

use std::collections::BTreeMap;
use std::sync::Arc;

use vhost_device_iommu::backend::{
    lock, IommuBackend, QueueRing, SharedEngine, CHAINS_PER_WAKE, WAKE_EVENT,
};
use vhost_device_iommu::engine::Engine;
use vhost_device_iommu::host::{Access, EmulatedHost};
use vhost_device_iommu::GuestRam;
use vhost_user_backend::{VhostUserBackendMut, VringT};
use virtio_iommu_spec::{EVENT_QUEUE, REQUEST_QUEUE};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;

use crate::code::{Reader, Writer};
use crate::engine::{config, guest_ram, Header, ENDPOINTS};

/// The largest queue (and the device's maximum).
pub const MAX_QUEUE_SIZE: u16 = 256;
/// Descriptor table, avail ring and used ring of the requestq and the eventq.
pub const RINGS: [[u64; 3]; 2] = [[0x0, 0x1000, 0x2000], [0x3000, 0x4000, 0x5000]];
/// Where the seeds put requests and buffers.
pub const DATA: u64 = 0x6000;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;

/// The device's setup, from the input's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Setup {
    /// VIRTIO_F_RING_EVENT_IDX negotiated.
    pub event_idx: bool,
    /// Endpoints bypass at boot.
    pub boot_bypass: bool,
    /// log2 of both queues' size (modulo 9: 1 to 256 entries).
    pub size_log2: u8,
}

impl Setup {
    /// Entries per queue.
    #[must_use]
    pub fn size(&self) -> u16 {
        1 << (self.size_log2 % 9)
    }
}

/// One step of the driver (or the VMM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendOp {
    /// Writes descriptor `index % size` of a queue's table.
    Desc {
        /// 0 requestq, 1 eventq (bit 0).
        queue: u8,
        /// Slot.
        index: u16,
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
        /// `VIRTQ_DESC_F_*` (any bits).
        flags: u16,
        /// Next slot.
        next: u16,
    },
    /// Writes bytes anywhere (dropped outside RAM).
    Write(u32, Vec<u8>),
    /// Puts heads in the avail ring from its current index and publishes them.
    Publish {
        /// Queue (bit 0).
        queue: u8,
        /// Head indices (any value).
        heads: Vec<u16>,
    },
    /// Sets the avail index to anything.
    AvailIdx {
        /// Queue (bit 0).
        queue: u8,
        /// The index.
        idx: u16,
    },
    /// Sets `used_event` (the avail ring's last word) to anything.
    UsedEvent {
        /// Queue (bit 0).
        queue: u8,
        /// The index.
        idx: u16,
    },
    /// `handle_event`: 0 requestq kick, 1 eventq kick, 2 wake-up, 3 a requestq event that is
    /// not EPOLLIN (modulo 4).
    Kick(u8),
    /// A DMA of a simulated device that may fault (queues a fault event).
    Fault {
        /// Index into `engine::ENDPOINTS`.
        endpoint: u8,
        /// Input address.
        iova: u64,
    },
    /// The VMM stops the rings, sets the features again and restarts both at `base` (a guest
    /// reset at 0, a resume elsewhere).
    Restart(u16),
}

/// A setup and the steps.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackendScenario {
    /// The setup.
    pub setup: Setup,
    /// The steps.
    pub ops: Vec<BackendOp>,
}

fn read_op(r: &mut Reader<'_>) -> BackendOp {
    match r.u8() % 8 {
        0 => BackendOp::Desc {
            queue: r.u8(),
            index: r.u16(),
            addr: r.u64(),
            len: r.u32(),
            flags: r.u16(),
            next: r.u16(),
        },
        1 => BackendOp::Write(r.u32(), r.vec()),
        2 => {
            let queue = r.u8();
            let n = r.u8();
            let heads = (0..n).map(|_| r.u16()).collect();
            BackendOp::Publish { queue, heads }
        }
        3 => BackendOp::AvailIdx {
            queue: r.u8(),
            idx: r.u16(),
        },
        4 => BackendOp::UsedEvent {
            queue: r.u8(),
            idx: r.u16(),
        },
        5 => BackendOp::Kick(r.u8()),
        6 => BackendOp::Fault {
            endpoint: r.u8(),
            iova: r.u64(),
        },
        _ => BackendOp::Restart(r.u16()),
    }
}

fn write_op(w: &mut Writer, op: &BackendOp) {
    match op {
        BackendOp::Desc {
            queue,
            index,
            addr,
            len,
            flags,
            next,
        } => {
            w.u8(0);
            w.u8(*queue);
            w.u16(*index);
            w.u64(*addr);
            w.u32(*len);
            w.u16(*flags);
            w.u16(*next);
        }
        BackendOp::Write(gpa, data) => {
            w.u8(1);
            w.u32(*gpa);
            w.vec(data);
        }
        BackendOp::Publish { queue, heads } => {
            w.u8(2);
            w.u8(*queue);
            let n = heads.len().min(255);
            w.u8(u8::try_from(n).unwrap_or(u8::MAX));
            for h in &heads[..n] {
                w.u16(*h);
            }
        }
        BackendOp::AvailIdx { queue, idx } => {
            w.u8(3);
            w.u8(*queue);
            w.u16(*idx);
        }
        BackendOp::UsedEvent { queue, idx } => {
            w.u8(4);
            w.u8(*queue);
            w.u16(*idx);
        }
        BackendOp::Kick(e) => {
            w.u8(5);
            w.u8(*e);
        }
        BackendOp::Fault { endpoint, iova } => {
            w.u8(6);
            w.u8(*endpoint);
            w.u64(*iova);
        }
        BackendOp::Restart(base) => {
            w.u8(7);
            w.u16(*base);
        }
    }
}

impl BackendScenario {
    /// Decodes the byte code: a flag byte, the queue size, then ops until the input ends.
    /// Every input is a scenario.
    #[must_use]
    pub fn decode(data: &[u8]) -> Self {
        let mut r = Reader::new(data);
        let flags = r.u8();
        let setup = Setup {
            event_idx: flags & 1 != 0,
            boot_bypass: flags & 2 != 0,
            size_log2: r.u8() % 9,
        };
        let mut ops = Vec::new();
        while !r.is_empty() {
            ops.push(read_op(&mut r));
        }
        BackendScenario { setup, ops }
    }

    /// The byte code of this scenario.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(u8::from(self.setup.event_idx) | u8::from(self.setup.boot_bypass) << 1);
        w.u8(self.setup.size_log2);
        for op in &self.ops {
            write_op(&mut w, op);
        }
        w.finish()
    }
}

/// What a scenario reached (the seeds' tests check that they reach what they were built for).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BackendOutcome {
    /// Used entries the device added, per queue.
    pub used: [usize; 2],
    /// Of those, entries with a non-zero length.
    pub answered: [usize; 2],
    /// Events handled.
    pub events: usize,
    /// Events after which a queue had chains published that it did not take (broken,
    /// impossible index, or stopped at its budget).
    pub left: usize,
}

/// The split-ring iteration of one chain as virtio-queue does it (next links with a
/// time-to-live of the table size, one level of indirect table, at most 2^32 bytes), returning
/// the device-writable bytes and the writable buffers.
fn chain_writable(mem: &GuestRam, desc_table: u64, size: u16, head: u16) -> (u64, Vec<(u64, u64)>) {
    let (mut table, mut table_size, mut ttl, mut next) = (desc_table, size, size, head);
    let mut indirect = false;
    let (mut yielded, mut writable) = (0u32, 0u64);
    let mut buffers = Vec::new();
    loop {
        if ttl == 0 || next >= table_size {
            break;
        }
        let mut d = [0u8; 16];
        let Some(at) = table.checked_add(u64::from(next) * 16) else {
            break;
        };
        if mem.read_slice(&mut d, GuestAddress(at)).is_err() {
            break;
        }
        let addr = u64::from_le_bytes(d[0..8].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(d[8..12].try_into().unwrap_or_default());
        let flags = u16::from_le_bytes([d[12], d[13]]);
        let link = u16::from_le_bytes([d[14], d[15]]);
        if flags & DESC_F_INDIRECT != 0 {
            if indirect || len % 16 != 0 || len / 16 > u32::from(u16::MAX) {
                break;
            }
            table = addr;
            table_size = u16::try_from(len / 16).unwrap_or(0);
            ttl = table_size;
            next = 0;
            indirect = true;
            continue;
        }
        let Some(y) = yielded.checked_add(len) else {
            break;
        };
        yielded = y;
        if flags & DESC_F_WRITE != 0 {
            writable += u64::from(len);
            buffers.push((addr, u64::from(len)));
        }
        if flags & DESC_F_NEXT != 0 {
            next = link;
            ttl -= 1;
        } else {
            ttl = 0;
        }
    }
    (writable, buffers)
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    let a_last = a.0.saturating_add(a.1.saturating_sub(1));
    let b_last = b.0.saturating_add(b.1.saturating_sub(1));
    a.1 > 0 && b.1 > 0 && a.0 <= b_last && b.0 <= a_last
}

/// One queue's state before an event.
struct Before {
    next_avail: u16,
    next_used: u16,
    /// Chains the driver published (wrapping difference).
    published: u16,
    /// The heads in the published part of the avail ring (none when it is impossible) with
    /// their chains' writable bytes and buffers.
    chains: BTreeMap<u16, (u64, Vec<(u64, u64)>)>,
}

struct Harness {
    setup: Setup,
    mem: GuestRam,
    engine: SharedEngine,
    backend: IommuBackend,
    vrings: Vec<QueueRing>,
    features: u64,
    max_pending: usize,
    out: BackendOutcome,
}

impl Harness {
    fn new(setup: Setup) -> Self {
        let header = Header {
            boot_bypass: setup.boot_bypass,
            extensions: true,
            mmio: true,
            ..Header::default()
        };
        let cfg = config(&header);
        let max_pending = cfg.limits.max_pending_events;
        let engine = Engine::new(cfg, Box::new(EmulatedHost::new())).expect("valid config");
        let engine: SharedEngine = Arc::new(parking_lot::Mutex::new(engine));
        let mut backend = IommuBackend::new(engine.clone(), MAX_QUEUE_SIZE, None, None)
            .expect("eventfd and timerfd");
        let mem = guest_ram();
        let atomic = GuestMemoryAtomic::new(mem.clone());
        // What SET_FEATURES, SET_MEM_TABLE and the rings' setup do, in QEMU's order.
        let features = backend.features();
        backend.acked_features(features);
        backend.set_event_idx(setup.event_idx);
        backend.update_memory(atomic.clone()).expect("memory");
        let vrings: Vec<QueueRing> = RINGS
            .iter()
            .map(|[desc, avail, used]| {
                let v = QueueRing::new(atomic.clone(), MAX_QUEUE_SIZE).expect("vring");
                v.set_queue_size(setup.size());
                v.set_queue_info(*desc, *avail, *used)
                    .expect("ring addresses");
                v.set_queue_event_idx(setup.event_idx);
                v.set_queue_ready(true);
                v.set_enabled(true);
                v
            })
            .collect();
        Harness {
            setup,
            mem,
            engine,
            backend,
            vrings,
            features,
            max_pending,
            out: BackendOutcome::default(),
        }
    }

    fn size(&self) -> u16 {
        self.setup.size()
    }

    fn avail_idx(&self, q: usize) -> u16 {
        self.mem
            .read_obj::<u16>(GuestAddress(RINGS[q][1] + 2))
            .unwrap_or(0)
    }

    fn set_avail_idx(&self, q: usize, idx: u16) {
        let _ = self.mem.write_obj(idx, GuestAddress(RINGS[q][1] + 2));
    }

    fn before(&self, q: usize) -> Before {
        let state = self.vrings[q].get_ref();
        let queue = state.get_queue();
        let (next_avail, next_used) = (queue.next_avail(), queue.next_used());
        drop(state);
        let size = self.size();
        let published = self.avail_idx(q).wrapping_sub(next_avail);
        let mut chains = BTreeMap::new();
        if published <= size {
            for i in 0..published {
                let slot = u64::from(next_avail.wrapping_add(i) % size);
                let head = self
                    .mem
                    .read_obj::<u16>(GuestAddress(RINGS[q][1] + 4 + 2 * slot))
                    .unwrap_or(0);
                chains
                    .entry(head)
                    .or_insert_with(|| chain_writable(&self.mem, RINGS[q][0], size, head));
            }
        }
        Before {
            next_avail,
            next_used,
            published,
            chains,
        }
    }

    /// Whether a writable buffer of a published chain overlaps a ring or a descriptor table
    /// (the device's writes may then rewrite what the driver published).
    fn self_modifying(&self, before: &[Before]) -> bool {
        let size = u64::from(self.size());
        let mut areas: Vec<(u64, u64)> = Vec::new();
        for [desc, avail, used] in RINGS {
            areas.extend([
                (desc, 16 * size),
                (avail, 6 + 2 * size),
                (used, 6 + 8 * size),
            ]);
            // Indirect tables of any descriptor.
            for i in 0..size {
                let mut d = [0u8; 16];
                if self
                    .mem
                    .read_slice(&mut d, GuestAddress(desc + 16 * i))
                    .is_ok()
                    && u16::from_le_bytes([d[12], d[13]]) & DESC_F_INDIRECT != 0
                {
                    let addr = u64::from_le_bytes(d[0..8].try_into().unwrap_or_default());
                    let len = u32::from_le_bytes(d[8..12].try_into().unwrap_or_default());
                    areas.push((addr, u64::from(len)));
                }
            }
        }
        before.iter().any(|b| {
            b.chains.values().any(|(_, buffers)| {
                buffers
                    .iter()
                    .any(|buf| areas.iter().any(|a| overlaps(*a, *buf)))
            })
        })
    }

    fn check(&mut self, q: usize, b: &Before, strict: bool) {
        let state = self.vrings[q].get_ref();
        let queue = state.get_queue();
        let (next_avail, next_used) = (queue.next_avail(), queue.next_used());
        drop(state);
        let taken = next_avail.wrapping_sub(b.next_avail);
        let added = next_used.wrapping_sub(b.next_used);
        self.out.used[q] += usize::from(added);
        // Whatever the rings say: one wake-up serves a bounded number of chains, and never
        // more used entries than chains taken.
        assert!(
            taken <= CHAINS_PER_WAKE,
            "queue {q}: {taken} chains in one event"
        );
        assert!(
            added <= taken,
            "queue {q}: {added} used entries for {taken} chains"
        );
        if !strict {
            return;
        }
        let allowed = if b.published > self.size() {
            0
        } else {
            b.published
        };
        assert!(
            taken <= allowed,
            "queue {q}: took {taken} chains, {} published (size {})",
            b.published,
            self.size()
        );
        if taken < b.published {
            self.out.left += 1;
        }
        let size = self.size();
        let used = RINGS[q][2];
        for i in 0..added {
            let slot = u64::from(b.next_used.wrapping_add(i) % size);
            let at = used + 4 + 8 * slot;
            let id = self
                .mem
                .read_obj::<u32>(GuestAddress(at))
                .expect("used ring in RAM");
            let len = self
                .mem
                .read_obj::<u32>(GuestAddress(at + 4))
                .expect("used ring in RAM");
            assert!(id < u32::from(size), "queue {q}: used id {id}, size {size}");
            let head = u16::try_from(id).unwrap_or(u16::MAX);
            let Some((writable, _)) = b.chains.get(&head) else {
                panic!("queue {q}: used id {id} was not published");
            };
            let writable = *writable;
            assert!(
                u64::from(len) <= writable,
                "queue {q}: used len {len} for head {id} with {writable} writable bytes"
            );
            self.out.answered[q] += usize::from(len > 0);
        }
        if added > 0 {
            let idx = self
                .mem
                .read_obj::<u16>(GuestAddress(used + 2))
                .expect("used ring in RAM");
            assert_eq!(idx, next_used, "queue {q}: used index in memory");
        }
    }

    fn event(&mut self, code: u8) {
        let (id, set) = match code % 4 {
            0 => (REQUEST_QUEUE, EventSet::IN),
            1 => (EVENT_QUEUE, EventSet::IN),
            2 => (WAKE_EVENT, EventSet::IN),
            _ => (REQUEST_QUEUE, EventSet::OUT),
        };
        let before = [self.before(0), self.before(1)];
        let strict = !self.self_modifying(&before);
        self.backend
            .handle_event(id, set, &self.vrings, 0)
            .expect("handle_event never fails");
        self.out.events += 1;
        for (q, b) in before.iter().enumerate() {
            self.check(q, b, strict);
        }
        let pending = lock(&self.engine).pending_events();
        assert!(
            pending <= self.max_pending,
            "{pending} pending events past the limit"
        );
    }

    fn restart(&mut self, base: u16) {
        for v in &self.vrings {
            v.set_queue_ready(false);
        }
        self.backend.acked_features(self.features);
        self.backend.set_event_idx(self.setup.event_idx);
        for v in &self.vrings {
            v.set_queue_next_avail(base);
            v.set_queue_next_used(base);
            v.set_queue_ready(true);
        }
    }

    fn step(&mut self, op: &BackendOp) {
        let size = self.size();
        match op {
            BackendOp::Desc {
                queue,
                index,
                addr,
                len,
                flags,
                next,
            } => {
                let q = usize::from(queue & 1);
                let mut d = [0u8; 16];
                d[0..8].copy_from_slice(&addr.to_le_bytes());
                d[8..12].copy_from_slice(&len.to_le_bytes());
                d[12..14].copy_from_slice(&flags.to_le_bytes());
                d[14..16].copy_from_slice(&next.to_le_bytes());
                let at = RINGS[q][0] + 16 * u64::from(index % size);
                self.mem
                    .write_slice(&d, GuestAddress(at))
                    .expect("descriptor table in RAM");
            }
            BackendOp::Write(gpa, data) => {
                let _ = self.mem.write_slice(data, GuestAddress(u64::from(*gpa)));
            }
            BackendOp::Publish { queue, heads } => {
                let q = usize::from(queue & 1);
                let mut idx = self.avail_idx(q);
                for h in heads {
                    let slot = u64::from(idx % size);
                    let _ = self
                        .mem
                        .write_obj(*h, GuestAddress(RINGS[q][1] + 4 + 2 * slot));
                    idx = idx.wrapping_add(1);
                }
                self.set_avail_idx(q, idx);
            }
            BackendOp::AvailIdx { queue, idx } => self.set_avail_idx(usize::from(queue & 1), *idx),
            BackendOp::UsedEvent { queue, idx } => {
                let q = usize::from(queue & 1);
                let at = RINGS[q][1] + 4 + 2 * u64::from(size);
                let _ = self.mem.write_obj(*idx, GuestAddress(at));
            }
            BackendOp::Kick(code) => self.event(*code),
            BackendOp::Fault { endpoint, iova } => {
                let ep = ENDPOINTS[usize::from(*endpoint) % ENDPOINTS.len()];
                let _ = lock(&self.engine)
                    .device_dma()
                    .translate(ep, None, *iova, 1, Access::Read);
            }
            BackendOp::Restart(base) => self.restart(*base),
        }
    }
}

/// Runs one scenario; panics on a broken invariant.
pub fn run(s: &BackendScenario) -> BackendOutcome {
    let mut h = Harness::new(s.setup);
    for op in &s.ops {
        h.step(op);
    }
    h.out
}
