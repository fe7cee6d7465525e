//! A fake virtio-iommu for the driver's tests: an identity-mapped `Hal`, and a `Transport`
//! whose `notify` plays the device on the split rings the driver set up, synchronously.
//!
//! The device side reads the rings and buffers through the addresses the driver published,
//! exactly as a VMM would through guest memory.

#![allow(dead_code)] // each test binary uses a different part

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};
use virtio_iommu_spec::features::VIRTIO_F_VERSION_1;
use virtio_iommu_spec::request::TAIL_SIZE;
use virtio_iommu_spec::{Config, Features, Status};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// DMA memory from the global allocator; physical address = virtual address.
#[derive(Debug)]
pub struct FakeHal;

fn dma_layout(pages: usize) -> Layout {
    Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).expect("valid layout")
}

// SAFETY: `dma_alloc` returns zeroed, page-aligned, exclusively owned memory, freed only by
// `dma_dealloc`; `share` hands out the buffer's own address, valid while the driver keeps it.
unsafe impl Hal for FakeHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        // SAFETY: the layout has a non-zero size (virtqueues need at least one page).
        let ptr = NonNull::new(unsafe { alloc_zeroed(dma_layout(pages)) }).expect("DMA alloc");
        (ptr.as_ptr() as PhysAddr, ptr)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: the caller passes back what `dma_alloc` returned for `pages`.
        unsafe { dealloc(vaddr.as_ptr(), dma_layout(pages)) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("non-null MMIO address")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr().cast::<u8>() as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

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

impl Seen {
    pub fn writable_len(&self) -> usize {
        self.descs
            .iter()
            .filter(|d| d.write)
            .map(|d| d.len as usize)
            .sum()
    }
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
        // SAFETY: the driver published these ring addresses with `queue_set`; they stay valid
        // until it unsets the queue.
        unsafe {
            let avail_idx = ring_idx(q.avail).load(Ordering::Acquire);
            if avail_idx == q.last_avail {
                return false;
            }
            let slot = u64::from(q.last_avail) % u64::from(q.size);
            let head = read_u16(q.avail + 4 + 2 * slot);
            let d = read_desc(q.desc, head);
            assert!(
                d.flags & DESC_F_WRITE != 0,
                "event buffers are device-writable"
            );
            assert_eq!(d.flags & DESC_F_NEXT, 0, "one descriptor per event buffer");
            assert_eq!(d.len, 48, "event buffers hold the extended record");
            let n = bytes.len().min(d.len as usize);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), d.addr as *mut u8, n);
            push_used(q, u32::from(head), used_len);
        }
        s.queues[1].last_avail = s.queues[1].last_avail.wrapping_add(1);
        s.interrupt_pending = true;
        true
    }

    /// Descriptors posted on the event queue and not yet used.
    pub fn posted_events(&self) -> u16 {
        let s = self.lock();
        let q = s.queues[1];
        // SAFETY: as in `inject_event`.
        let idx = unsafe { ring_idx(q.avail).load(Ordering::Acquire) };
        idx.wrapping_sub(q.last_avail)
    }
}

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

struct RawDesc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// # Safety
/// `addr` must be a published ring address.
unsafe fn ring_idx<'a>(ring: u64) -> &'a AtomicU16 {
    // SAFETY: per the caller, `ring + 2` is the ring's aligned 16-bit `idx`.
    unsafe { AtomicU16::from_ptr((ring + 2) as *mut u16) }
}

/// # Safety
/// `addr` must be readable for 2 bytes.
unsafe fn read_u16(addr: u64) -> u16 {
    // SAFETY: per the caller.
    unsafe { std::ptr::read_volatile(addr as *const u16) }
}

/// # Safety
/// `table` must be a published descriptor table and `i` below its size.
unsafe fn read_desc(table: u64, i: u16) -> RawDesc {
    // SAFETY: per the caller; descriptors are 16 bytes.
    let raw: [u8; 16] = unsafe { std::ptr::read_volatile((table + 16 * u64::from(i)) as *const _) };
    RawDesc {
        addr: u64::from_le_bytes(raw[0..8].try_into().unwrap()),
        len: u32::from_le_bytes(raw[8..12].try_into().unwrap()),
        flags: u16::from_le_bytes(raw[12..14].try_into().unwrap()),
        next: u16::from_le_bytes(raw[14..16].try_into().unwrap()),
    }
}

/// # Safety
/// `q` must describe published rings.
unsafe fn push_used(q: QueueRegs, id: u32, len: u32) {
    // SAFETY: per the caller; used elements are 8 bytes after the 4-byte header.
    unsafe {
        let idx = ring_idx(q.used).load(Ordering::Acquire);
        let slot = u64::from(idx) % u64::from(q.size);
        let elem = q.used + 4 + 8 * slot;
        std::ptr::write_volatile(elem as *mut u32, id);
        std::ptr::write_volatile((elem + 4) as *mut u32, len);
        ring_idx(q.used).store(idx.wrapping_add(1), Ordering::Release);
    }
}

impl DevState {
    /// Takes every new chain off the request queue and answers it.
    fn process_requests(&mut self) {
        let q = self.queues[0];
        // SAFETY: the driver published these rings with `queue_set`.
        let avail_idx = unsafe { ring_idx(q.avail).load(Ordering::Acquire) };
        let mut taken = Vec::new();
        while self.queues[0].last_avail != avail_idx {
            let slot = u64::from(self.queues[0].last_avail) % u64::from(q.size);
            // SAFETY: as above.
            let head = unsafe { read_u16(q.avail + 4 + 2 * slot) };
            self.queues[0].last_avail = self.queues[0].last_avail.wrapping_add(1);
            let mut readable = Vec::new();
            let mut writable = Vec::new();
            let mut descs = Vec::new();
            let mut i = head;
            for _ in 0..q.size {
                // SAFETY: the driver only links descriptors inside its table.
                let d = unsafe { read_desc(q.desc, i) };
                let write = d.flags & DESC_F_WRITE != 0;
                descs.push(Desc { len: d.len, write });
                if write {
                    writable.push((d.addr, d.len));
                } else {
                    assert!(
                        writable.is_empty(),
                        "readable descriptor after a writable one"
                    );
                    // SAFETY: the descriptor names `len` readable bytes of driver memory.
                    readable.extend_from_slice(unsafe {
                        std::slice::from_raw_parts(d.addr as *const u8, d.len as usize)
                    });
                }
                if d.flags & DESC_F_NEXT == 0 {
                    break;
                }
                i = d.next;
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
        let mut data = &answer.data[..];
        for (addr, len) in &h.writable {
            let n = data.len().min(*len as usize);
            // SAFETY: the descriptor names `len` writable bytes of driver memory.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), *addr as *mut u8, n) };
            data = &data[n..];
        }
        // SAFETY: the rings were published with `queue_set`.
        unsafe { push_used(self.queues[0], u32::from(h.head), answer.used_len) };
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
