//! A fake virtio-iommu for the driver's tests: a `Transport` whose `notify` plays the device,
//! synchronously, on the split rings the driver set up with the test kit's `GuestHal`.
//!
//! The device side reads the rings and buffers through the guest-physical addresses the driver
//! published, exactly as a VMM would through guest memory.

use std::sync::{Arc, Mutex, MutexGuard};

use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::PhysAddr;
use virtio_iommu_driver::VirtIOIommu;
use virtio_iommu_spec::features::VIRTIO_F_VERSION_1;
use virtio_iommu_spec::request::TAIL_SIZE;
use virtio_iommu_spec::{Config, Features, Status};
use virtio_iommu_testkit::ring::{DESC_F_NEXT, DESC_F_WRITE};
use virtio_iommu_testkit::{GuestHal, GuestMemory, RingConfig};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// The driver under test: on the test kit's guest RAM, talking to the fake.
pub type Iommu = VirtIOIommu<GuestHal, FakeTransport>;

/// What the device answers: `data` is written at the start of the writable part, and the
/// used length is reported as `used_len`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub data: Vec<u8>,
    pub used_len: u32,
}

impl Answer {
    /// The whole writable part, zero but for `status` in its last 4 bytes.
    pub fn status(status: u8, writable_len: usize) -> Answer {
        let mut data = vec![0u8; writable_len];
        data[writable_len - TAIL_SIZE] = status;
        Answer {
            data,
            used_len: u32::try_from(writable_len).unwrap(),
        }
    }

    /// `S_OK` with the exact used length.
    pub fn ok(writable_len: usize) -> Answer {
        Answer::status(Status::Ok as u8, writable_len)
    }
}

/// Decides the answer to one request from its readable bytes and writable size; `None`
/// keeps the request pending.
pub type Responder = Box<dyn FnMut(&[u8], usize) -> Option<Answer> + Send>;

/// One descriptor of a chain as the device saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub len: u32,
    pub write: bool,
}

/// A request the device received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub readable: Vec<u8>,
    pub descs: Vec<Desc>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct QueueRegs {
    pub size: u32,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// Device's next available-ring index.
    pub last_avail: u16,
}

impl QueueRegs {
    /// The ring the driver published.
    fn ring(&self) -> RingConfig {
        RingConfig {
            size: u16::try_from(self.size).expect("queue size fits u16"),
            desc: self.desc,
            avail: self.avail,
            used: self.used,
        }
    }
}

/// A chain taken from the ring but not yet returned.
struct Held {
    head: u16,
    writable: Vec<(u64, u32)>,
    answer: Option<Answer>,
}

pub struct DevState {
    pub device_type: DeviceType,
    pub device_features: u64,
    pub driver_features: u64,
    pub status: DeviceStatus,
    pub config: [u8; 40],
    pub generation: u32,
    /// Bump the generation on every read of it (a device whose config never settles).
    pub unstable_generation: bool,
    /// Clear `FEATURES_OK` when the driver sets it.
    pub reject_features: bool,
    pub queues: [QueueRegs; 2],
    pub notifies: [u32; 2],
    /// New chains found on each requestq notification.
    pub batch_sizes: Vec<usize>,
    pub seen: Vec<Seen>,
    pub responder: Responder,
    /// Return the chains of one notification in reverse order.
    pub reverse: bool,
    held: Vec<Held>,
    pub interrupt_pending: bool,
    pub config_writes: Vec<(usize, Vec<u8>)>,
    /// Record config writes without applying them (a device that does not keep `bypass`).
    pub ignore_config_writes: bool,
}

/// All features the device can offer, plus `VERSION_1`.
pub fn all_features() -> u64 {
    Features::all().bits() | VIRTIO_F_VERSION_1
}

/// The usual features a modern device offers (no extensions, no legacy BYPASS).
pub fn standard_features() -> u64 {
    (Features::INPUT_RANGE
        | Features::DOMAIN_RANGE
        | Features::MAP_UNMAP
        | Features::PROBE
        | Features::MMIO
        | Features::BYPASS_CONFIG)
        .bits()
        | VIRTIO_F_VERSION_1
}

pub fn config(
    page_size_mask: u64,
    input: (u64, u64),
    domains: (u32, u32),
    probe_size: u32,
    bypass: u8,
) -> [u8; 40] {
    let c = Config {
        page_size_mask: page_size_mask.into(),
        input_range_start: input.0.into(),
        input_range_end: input.1.into(),
        domain_range_start: domains.0.into(),
        domain_range_end: domains.1.into(),
        probe_size: probe_size.into(),
        bypass,
        reserved: [0; 3],
    };
    c.as_bytes().try_into().unwrap()
}

/// 4 KiB pages, input range [0, 2^48), domains 1..=1023, 512-byte probe area, bypass on.
pub fn default_config() -> [u8; 40] {
    config(!0xfff, (0, (1 << 48) - 1), (1, 1023), 512, 1)
}

#[derive(Clone)]
pub struct Fake {
    pub state: Arc<Mutex<DevState>>,
}

impl Fake {
    pub fn new(device_features: u64, config: [u8; 40]) -> Fake {
        Fake {
            state: Arc::new(Mutex::new(DevState {
                device_type: DeviceType::IOMMU,
                device_features,
                driver_features: 0,
                status: DeviceStatus::empty(),
                config,
                generation: 0,
                unstable_generation: false,
                reject_features: false,
                queues: [QueueRegs::default(); 2],
                notifies: [0; 2],
                batch_sizes: Vec::new(),
                seen: Vec::new(),
                responder: Box::new(|_, w| Some(Answer::ok(w))),
                reverse: false,
                held: Vec::new(),
                interrupt_pending: false,
                config_writes: Vec::new(),
                ignore_config_writes: false,
            })),
        }
    }

    pub fn standard() -> Fake {
        Fake::new(standard_features(), default_config())
    }

    pub fn transport(&self) -> FakeTransport {
        FakeTransport {
            state: self.state.clone(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, DevState> {
        self.state.lock().unwrap()
    }

    pub fn respond(&self, f: impl FnMut(&[u8], usize) -> Option<Answer> + Send + 'static) {
        self.lock().responder = Box::new(f);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// Answers every held request (the responder is asked again for those it held).
    pub fn release_held(&self) {
        let mut s = self.lock();
        let held = std::mem::take(&mut s.held);
        let mut done = Vec::new();
        for mut h in held {
            if h.answer.is_none() {
                let w: usize = h.writable.iter().map(|(_, l)| *l as usize).sum();
                h.answer = Some(Answer::ok(w));
            }
            done.push(h);
        }
        if s.reverse {
            done.reverse();
        }
        for h in done {
            s.complete(h);
        }
    }

    /// Fills the next posted event buffer with `bytes`, reporting `used_len`. Returns false
    /// if the driver posted no buffer.
    pub fn inject_event(&self, bytes: &[u8], used_len: u32) -> bool {
        let mut s = self.lock();
        let q = s.queues[1];
        let (ring, mem) = (q.ring(), GuestMemory::global());
        let avail_idx = ring.avail_idx(&*mem).expect("avail index");
        if avail_idx == q.last_avail {
            return false;
        }
        let head = ring.avail_head(&*mem, q.last_avail).expect("avail ring");
        let d = ring.read_desc(&*mem, head).expect("descriptor");
        assert!(
            d.flags & DESC_F_WRITE != 0,
            "event buffers are device-writable"
        );
        assert_eq!(d.flags & DESC_F_NEXT, 0, "one descriptor per event buffer");
        assert_eq!(d.len, 48, "event buffers hold the extended record");
        let n = bytes.len().min(d.len as usize);
        mem.write(d.addr, &bytes[..n]).expect("event buffer");
        ring.push_used(&*mem, u32::from(head), used_len)
            .expect("used ring");
        s.queues[1].last_avail = s.queues[1].last_avail.wrapping_add(1);
        s.interrupt_pending = true;
        true
    }

    /// Appends a used entry `(id, len)` to `queue` without touching any buffer.
    pub fn push_used(&self, queue: usize, id: u32, len: u32) {
        let s = self.lock();
        s.queues[queue]
            .ring()
            .push_used(&*GuestMemory::global(), id, len)
            .expect("used ring");
    }

    /// Rewrites the used entry of index `idx` on `queue` (the used index stays).
    pub fn set_used_elem(&self, queue: usize, idx: u16, id: u32, len: u32) {
        let s = self.lock();
        let q = s.queues[queue];
        let slot = u64::from(idx) % u64::from(q.size);
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&id.to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        GuestMemory::global()
            .write(q.used + 4 + 8 * slot, &elem)
            .expect("used ring");
    }

    /// The used index of `queue`.
    pub fn used_idx(&self, queue: usize) -> u16 {
        let s = self.lock();
        s.queues[queue]
            .ring()
            .used_idx(&*GuestMemory::global())
            .expect("used ring")
    }

    /// Sets the used index of `queue` (entries in between are whatever the ring holds).
    pub fn set_used_idx(&self, queue: usize, idx: u16) {
        let s = self.lock();
        GuestMemory::global()
            .store_u16(s.queues[queue].used + 2, idx)
            .expect("used ring");
    }

    /// Descriptors posted on the event queue and not yet used.
    pub fn posted_events(&self) -> u16 {
        let s = self.lock();
        let q = s.queues[1];
        let idx = q
            .ring()
            .avail_idx(&*GuestMemory::global())
            .expect("avail index");
        idx.wrapping_sub(q.last_avail)
    }
}

impl DevState {
    /// Takes every new chain off the request queue and answers it.
    fn process_requests(&mut self) {
        let q = self.queues[0];
        let (ring, mem) = (q.ring(), GuestMemory::global());
        let avail_idx = ring.avail_idx(&*mem).expect("avail index");
        let mut taken = Vec::new();
        while self.queues[0].last_avail != avail_idx {
            let head = ring
                .avail_head(&*mem, self.queues[0].last_avail)
                .expect("avail ring");
            self.queues[0].last_avail = self.queues[0].last_avail.wrapping_add(1);
            let mut readable = Vec::new();
            let mut writable = Vec::new();
            let mut descs = Vec::new();
            for d in ring.read_chain(&*mem, head).expect("descriptor chain") {
                let write = d.is_write();
                descs.push(Desc { len: d.len, write });
                if write {
                    writable.push((d.addr, d.len));
                } else {
                    assert!(
                        writable.is_empty(),
                        "readable descriptor after a writable one"
                    );
                    let bytes = mem.read_vec(d.addr, d.len as usize).expect("readable part");
                    readable.extend_from_slice(&bytes);
                }
            }
            let wlen: usize = writable.iter().map(|(_, l)| *l as usize).sum();
            self.seen.push(Seen {
                readable: readable.clone(),
                descs,
            });
            let answer = (self.responder)(&readable, wlen);
            taken.push(Held {
                head,
                writable,
                answer,
            });
        }
        self.batch_sizes.push(taken.len());
        if self.reverse {
            taken.reverse();
        }
        for h in taken {
            if h.answer.is_some() {
                self.complete(h);
            } else {
                self.held.push(h);
            }
        }
    }

    fn complete(&mut self, h: Held) {
        let Some(answer) = h.answer else { return };
        let mem = GuestMemory::global();
        let mut data = &answer.data[..];
        for (addr, len) in &h.writable {
            let n = data.len().min(*len as usize);
            mem.write(*addr, &data[..n]).expect("writable part");
            data = &data[n..];
        }
        self.queues[0]
            .ring()
            .push_used(&*mem, u32::from(h.head), answer.used_len)
            .expect("used ring");
        self.interrupt_pending = true;
    }
}

/// The driver's view of the fake device.
pub struct FakeTransport {
    state: Arc<Mutex<DevState>>,
}

impl std::fmt::Debug for FakeTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeTransport")
    }
}

impl FakeTransport {
    fn s(&self) -> MutexGuard<'_, DevState> {
        self.state.lock().unwrap()
    }
}

impl Transport for FakeTransport {
    fn device_type(&self) -> DeviceType {
        self.s().device_type
    }

    fn read_device_features(&mut self) -> u64 {
        self.s().device_features
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.s().driver_features = driver_features;
    }

    fn max_queue_size(&mut self, _queue: u16) -> u32 {
        256
    }

    fn notify(&mut self, queue: u16) {
        let mut s = self.s();
        s.notifies[usize::from(queue)] += 1;
        if queue == 0 {
            s.process_requests();
        }
    }

    fn get_status(&self) -> DeviceStatus {
        self.s().status
    }

    fn set_status(&mut self, status: DeviceStatus) {
        let mut s = self.s();
        s.status = if s.reject_features {
            status - DeviceStatus::FEATURES_OK
        } else {
            status
        };
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {}

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        desc: PhysAddr,
        avail: PhysAddr,
        used: PhysAddr,
    ) {
        self.s().queues[usize::from(queue)] = QueueRegs {
            size,
            desc,
            avail,
            used,
            last_avail: 0,
        };
    }

    fn queue_unset(&mut self, queue: u16) {
        self.s().queues[usize::from(queue)] = QueueRegs::default();
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.s().queues[usize::from(queue)].desc != 0
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        let mut s = self.s();
        if std::mem::take(&mut s.interrupt_pending) {
            InterruptStatus::QUEUE_INTERRUPT
        } else {
            InterruptStatus::empty()
        }
    }

    fn read_config_generation(&self) -> u32 {
        let mut s = self.s();
        let g = s.generation;
        if s.unstable_generation {
            s.generation = g.wrapping_add(1);
        }
        g
    }

    fn read_config_space<T: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<T> {
        assert!(
            align_of::<T>() <= 4 && offset % align_of::<T>() == 0,
            "access width"
        );
        let s = self.s();
        let bytes = s
            .config
            .get(offset..offset + size_of::<T>())
            .ok_or(virtio_drivers::Error::ConfigSpaceTooSmall)?;
        Ok(T::read_from_bytes(bytes).unwrap())
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> virtio_drivers::Result<()> {
        let mut s = self.s();
        let bytes = value.as_bytes().to_vec();
        if s.ignore_config_writes {
            s.config_writes.push((offset, bytes));
            return Ok(());
        }
        s.config
            .get_mut(offset..offset + bytes.len())
            .ok_or(virtio_drivers::Error::ConfigSpaceTooSmall)?
            .copy_from_slice(&bytes);
        s.config_writes.push((offset, bytes));
        Ok(())
    }
}

/// Little-endian byte builder for the expected wire images.
#[derive(Default)]
pub struct B(pub Vec<u8>);

impl B {
    /// Appends a byte.
    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    /// Appends a little-endian u16.
    pub fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a little-endian u32.
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a little-endian u64.
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends `n` zero bytes.
    pub fn zeros(mut self, n: usize) -> Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    /// Request head: type and three reserved bytes.
    pub fn head(self, t: u8) -> Self {
        self.u8(t).zeros(3)
    }
}
