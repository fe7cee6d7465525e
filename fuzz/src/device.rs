//! The guest driver against a hostile device: a fake transport whose device side does what the
//! fuzz input says — arbitrary used-ring entries (ids, lengths, indices), replies with any
//! status and length, event records of any content and length, config values that change
//! under the driver, refused features, short config spaces, unusable queues.
//!
//! The device writes only where a real one could: into buffers the driver currently describes
//! in its descriptor table (a recycled descriptor has address 0 and is skipped), and into the
//! used rings. Checked after every step: no panic (libFuzzer); no unbounded wait (the driver
//! runs with the default options, whose wait is bounded, with the bound shortened so that an
//! unanswered call costs microseconds); every device anomaly a typed error (no
//! `Error::Transport` from a request or event call); a PROBE reply the driver accepts has only
//! well-formed reserved regions; the driver's anomaly counters stay within the ring; and the
//! IOVA allocator built from the device's config and PROBE replies only hands out ranges
//! inside the input range, aligned, and outside every reserved region the device reported.
//!
//! Inputs are a small byte code ([`Scenario::decode`], every byte string is a scenario) so that
//! [`Scenario::encode`] can write seeds that describe well-behaved and specific devices.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::ptr::NonNull;
use std::rc::Rc;

use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};
use virtio_iommu_driver::iova::IovaAllocator;
use virtio_iommu_driver::sva::PageRequestGroups;
use virtio_iommu_driver::{
    AttachFlags, DriverOptions, Error, Features, InvalCaches, InvalScope, Invalidate, MapFlags,
    Mapping, PageResp, PageRespCode, Request, ReservedRegion, TableDesc, Token, VirtIOIommu,
    MAX_REQUESTS_IN_FLIGHT,
};
use virtio_iommu_spec::ext::VtdFlags;
use virtio_iommu_spec::features::VIRTIO_F_VERSION_1;
use virtio_iommu_spec::request::{Attach, Detach, Map, Probe, Unmap};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::code::{Reader, Writer};

/// Polls of the used ring a blocking call makes before `Error::Timeout` (the default bound,
/// `DriverOptions::DEFAULT_MAX_SPINS`, would take seconds per unanswered call).
const MAX_SPINS: u64 = 64;
/// Descriptor flags of the split ring.
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

/// DMA memory from the global allocator; physical address = virtual address.
#[derive(Debug)]
pub struct FuzzHal;

fn dma_layout(pages: usize) -> Layout {
    Layout::from_size_align(pages.max(1) * PAGE_SIZE, PAGE_SIZE).expect("valid layout")
}

// SAFETY: `dma_alloc` returns zeroed, page-aligned, exclusively owned memory, freed only by
// `dma_dealloc` with the same page count; `share` hands out the buffer's own address.
unsafe impl Hal for FuzzHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        // SAFETY: the layout has a non-zero size.
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

/// Which queue a device action targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// The request queue.
    Request,
    /// The event queue.
    Event,
}

impl Queue {
    fn index(self) -> usize {
        match self {
            Queue::Request => 0,
            Queue::Event => 1,
        }
    }
}

/// The used length a completion reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsedLen {
    /// The size of the chain's writable part.
    Exact,
    /// Zero.
    Zero,
    /// Any value.
    Raw(u32),
}

/// One thing the device does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevAct {
    /// Completes a chain the driver made available (`pick` chooses among those the device
    /// holds): `data` at the start of its writable part, `status` in the last 4 bytes of a
    /// request's writable part, and a used entry naming the chain's head.
    Complete {
        /// Target queue.
        queue: Queue,
        /// Which held chain.
        pick: u8,
        /// Status byte (request queue only).
        status: u8,
        /// Reported used length.
        len: UsedLen,
        /// Bytes written from the start of the writable part.
        data: Vec<u8>,
    },
    /// A used entry with any id and length (the device writes no buffer).
    RawUsed {
        /// Target queue.
        queue: Queue,
        /// Descriptor id.
        id: u32,
        /// Used length.
        len: u32,
    },
    /// Sets the used index to any value.
    SetUsedIdx {
        /// Target queue.
        queue: Queue,
        /// New index.
        idx: u16,
    },
    /// Changes a config byte (and the generation counter).
    Config {
        /// Byte offset (mod 40).
        offset: u8,
        /// New value.
        value: u8,
    },
    /// The generation counter changes on every read from now on (or stops doing so).
    ToggleUnstable,
}

/// A request the fuzzer builds (pre-flight checks decide which ones are sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReqSpec {
    /// ATTACH.
    Attach(u32, u32, u32),
    /// DETACH.
    Detach(u32, u32),
    /// MAP.
    Map(u32, u64, u64, u64, u32),
    /// UNMAP.
    Unmap(u32, u64, u64),
    /// PROBE.
    Probe(u32),
    /// ATTACH_TABLE, x86 first-stage.
    AttachVtd(u32, u32, u32, u32, u64, u64),
    /// ATTACH_TABLE, SMMUv3 CD table.
    AttachArm(u32, u32, u8, u8, u64, u32),
    /// INVALIDATE of a domain or one PASID.
    Invalidate(u32, u16, Option<u32>),
    /// PAGE_RESP.
    PageResp(u32, Option<u32>, u16, u8),
}

impl ReqSpec {
    fn request(self) -> Request {
        match self {
            ReqSpec::Attach(domain, endpoint, f) => Request::Attach(Attach {
                domain,
                endpoint,
                flags: AttachFlags::from_bits_retain(f),
            }),
            ReqSpec::Detach(domain, endpoint) => Request::Detach(Detach { domain, endpoint }),
            ReqSpec::Map(domain, virt_start, virt_end, phys_start, f) => Request::Map(Map {
                domain,
                virt_start,
                virt_end,
                phys_start,
                flags: MapFlags::from_bits_retain(f),
            }),
            ReqSpec::Unmap(domain, virt_start, virt_end) => Request::Unmap(Unmap {
                domain,
                virt_start,
                virt_end,
            }),
            ReqSpec::Probe(endpoint) => Request::Probe(Probe { endpoint }),
            ReqSpec::AttachVtd(domain, endpoint, pasid, addr_width, pgd, flags) => {
                Request::AttachTable(virtio_iommu_spec::request::AttachTable {
                    domain,
                    endpoint,
                    table: TableDesc::Vtd {
                        pasid,
                        addr_width,
                        pgd,
                        flags: VtdFlags::from_bits_retain(flags),
                    },
                })
            }
            ReqSpec::AttachArm(domain, endpoint, s1fmt, s1dss, s1contextptr, s1cdmax) => {
                Request::AttachTable(virtio_iommu_spec::request::AttachTable {
                    domain,
                    endpoint,
                    table: TableDesc::ArmSmmuV3 {
                        s1fmt,
                        s1dss,
                        s1contextptr,
                        s1cdmax,
                    },
                })
            }
            ReqSpec::Invalidate(domain, caches, pasid) => Request::Invalidate(Invalidate {
                domain,
                caches: InvalCaches::from_bits_retain(caches),
                scope: pasid.map_or(InvalScope::Domain, InvalScope::Pasid),
                archid: None,
                leaf: false,
            }),
            ReqSpec::PageResp(endpoint, pasid, group_id, code) => Request::PageResp(PageResp {
                endpoint,
                pasid,
                group_id,
                code: match code % 3 {
                    0 => PageRespCode::Success,
                    1 => PageRespCode::Invalid,
                    _ => PageRespCode::Failure,
                },
            }),
        }
    }
}

/// One driver step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The device does these at a later request-queue notification: each `Arm` is one
    /// notification's work, in order (so a blocking call is answered during the call).
    Arm(Vec<DevAct>),
    /// The device does these now, between driver calls.
    Device(Vec<DevAct>),
    /// Blocking request.
    Request(ReqSpec),
    /// Non-blocking submit; the token is kept.
    Submit(ReqSpec),
    /// Poll a kept token (or a made-up one).
    Poll(u8),
    /// Wait for a kept token.
    Wait(u8),
    /// `map_batch` of up to 80 mappings (more than one ring-full).
    MapBatch(u32, u64, u32, u8),
    /// `set_bypass`.
    SetBypass(bool),
    /// `poll_event`.
    PollEvent,
    /// `handle_page_requests`, resolving every request with this code.
    PageRequests(u8),
    /// `read_config`.
    ReadConfig,
    /// `ack_interrupt`.
    AckInterrupt,
    /// Allocate IOVA space from the allocator built on the device's answers.
    Alloc(u64, u8),
}

/// The device's initial state and what the driver does with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// Offered features (`VERSION_1` and `MAP_UNMAP` are forced on unless `raw_features`).
    pub features: u64,
    /// Offer exactly `features`.
    pub raw_features: bool,
    /// The config space.
    pub config: [u8; 40],
    /// Config-space length (reads past it fail), 40 when `None`.
    pub config_len: Option<u8>,
    /// The generation counter changes on every read.
    pub unstable: bool,
    /// The device clears `FEATURES_OK`.
    pub reject_features: bool,
    /// `max_queue_size` of each queue.
    pub max_queue_size: Option<u32>,
    /// Ask for the extensions.
    pub extensions: bool,
    /// The steps.
    pub ops: Vec<Op>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Ring {
    size: u32,
    desc: u64,
    avail: u64,
    used: u64,
    last_avail: u16,
}

#[derive(Debug)]
struct Dev {
    features: u64,
    config: [u8; 40],
    config_len: usize,
    generation: u32,
    unstable: bool,
    reject_features: bool,
    max_queue_size: u32,
    status: DeviceStatus,
    rings: [Ring; 2],
    /// Heads taken from each avail ring, not yet completed by `Complete`.
    held: [VecDeque<u16>; 2],
    armed: VecDeque<Vec<DevAct>>,
}

// Raw ring access. Every address comes from `queue_set` (the driver's live rings: the
// transport forgets them on `queue_unset`) or from a descriptor the driver currently has in
// its table (address and length of a live buffer; recycled descriptors are zeroed).

/// # Safety
/// `addr` must be valid for reads of a `T`.
unsafe fn rd<T: FromBytes>(addr: u64) -> T {
    // SAFETY: per the contract.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

/// # Safety
/// `addr` must be valid for writes of a `T`.
unsafe fn wr<T: IntoBytes + Immutable>(addr: u64, v: T) {
    // SAFETY: per the contract.
    unsafe { core::ptr::write_unaligned(addr as *mut T, v) };
}

impl Dev {
    fn ring(&self, q: usize) -> Option<Ring> {
        let r = self.rings[q];
        (r.desc != 0 && r.size.is_power_of_two()).then_some(r)
    }

    /// Moves newly available heads to `held`.
    fn take_avail(&mut self, q: usize) {
        let Some(mut r) = self.ring(q) else { return };
        // SAFETY: the avail ring of a live queue: flags, idx, then `size` entries.
        let idx: u16 = unsafe { rd(r.avail + 2) };
        let mut n = 0;
        while r.last_avail != idx && n < r.size {
            let slot = u64::from(r.last_avail) % u64::from(r.size);
            // SAFETY: as above, `slot < size`.
            let head: u16 = unsafe { rd(r.avail + 4 + 2 * slot) };
            if !self.held[q].contains(&head) {
                self.held[q].push_back(head);
            }
            r.last_avail = r.last_avail.wrapping_add(1);
            n += 1;
        }
        self.rings[q].last_avail = r.last_avail;
    }

    /// The writable buffers of the chain at `head`, as the descriptor table says now.
    fn writable(&self, r: Ring, head: u16) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        let mut i = head;
        for _ in 0..r.size {
            if u32::from(i) >= r.size {
                break;
            }
            let d = r.desc + 16 * u64::from(i);
            // SAFETY: a descriptor of the live table (`i < size`).
            let (addr, len, flags, next): (u64, u32, u16, u16) =
                unsafe { (rd(d), rd(d + 8), rd(d + 12), rd(d + 14)) };
            if addr != 0 && len != 0 && flags & DESC_F_WRITE != 0 {
                out.push((addr, len));
            }
            if flags & DESC_F_NEXT == 0 {
                break;
            }
            i = next;
        }
        out
    }

    fn push_used(r: Ring, id: u32, len: u32) {
        // SAFETY: the used ring of a live queue: flags, idx, then `size` {id, len} entries.
        unsafe {
            let idx: u16 = rd(r.used + 2);
            let slot = u64::from(idx) % u64::from(r.size);
            wr(r.used + 4 + 8 * slot, id);
            wr(r.used + 8 + 8 * slot, len);
            wr(r.used + 2, idx.wrapping_add(1));
        }
    }

    fn act(&mut self, a: &DevAct) {
        self.take_avail(0);
        self.take_avail(1);
        match a {
            DevAct::Complete {
                queue,
                pick,
                status,
                len,
                data,
            } => {
                let q = queue.index();
                let Some(r) = self.ring(q) else { return };
                if self.held[q].is_empty() {
                    return;
                }
                let at = usize::from(*pick) % self.held[q].len();
                let Some(head) = self.held[q].remove(at) else {
                    return;
                };
                let bufs = self.writable(r, head);
                let total: usize = bufs.iter().map(|(_, l)| *l as usize).sum();
                let mut bytes = data.clone();
                bytes.resize(bytes.len().max(total), 0);
                if q == 0 && total >= 4 {
                    bytes[total - 4] = *status;
                }
                let mut src = &bytes[..];
                for (addr, l) in bufs {
                    let n = src.len().min(l as usize);
                    // SAFETY: a live writable buffer of `l` bytes described by the driver.
                    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), addr as *mut u8, n) };
                    src = &src[n..];
                }
                let used = match len {
                    UsedLen::Exact => u32::try_from(total).unwrap_or(u32::MAX),
                    UsedLen::Zero => 0,
                    UsedLen::Raw(v) => *v,
                };
                Self::push_used(r, u32::from(head), used);
            }
            DevAct::RawUsed { queue, id, len } => {
                if let Some(r) = self.ring(queue.index()) {
                    Self::push_used(r, *id, *len);
                }
            }
            DevAct::SetUsedIdx { queue, idx } => {
                if let Some(r) = self.ring(queue.index()) {
                    // SAFETY: the used ring's idx field of a live queue.
                    unsafe { wr(r.used + 2, *idx) };
                }
            }
            DevAct::Config { offset, value } => {
                self.config[usize::from(*offset) % 40] = *value;
                self.generation = self.generation.wrapping_add(1);
            }
            DevAct::ToggleUnstable => self.unstable = !self.unstable,
        }
    }
}

/// The driver's view of the hostile device.
#[derive(Debug)]
pub struct FuzzTransport(Rc<RefCell<Dev>>);

impl Transport for FuzzTransport {
    fn device_type(&self) -> DeviceType {
        DeviceType::IOMMU
    }

    fn read_device_features(&mut self) -> u64 {
        self.0.borrow().features
    }

    fn write_driver_features(&mut self, _driver_features: u64) {}

    fn max_queue_size(&mut self, _queue: u16) -> u32 {
        self.0.borrow().max_queue_size
    }

    fn notify(&mut self, queue: u16) {
        let mut d = self.0.borrow_mut();
        if queue == 0 {
            if let Some(acts) = d.armed.pop_front() {
                for a in &acts {
                    d.act(a);
                }
            }
        }
    }

    fn get_status(&self) -> DeviceStatus {
        self.0.borrow().status
    }

    fn set_status(&mut self, status: DeviceStatus) {
        let mut d = self.0.borrow_mut();
        d.status = if d.reject_features {
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
        let mut d = self.0.borrow_mut();
        if let Some(r) = d.rings.get_mut(usize::from(queue)) {
            *r = Ring {
                size,
                desc,
                avail,
                used,
                last_avail: 0,
            };
        }
        if let Some(h) = d.held.get_mut(usize::from(queue)) {
            h.clear();
        }
    }

    fn queue_unset(&mut self, queue: u16) {
        let mut d = self.0.borrow_mut();
        if let Some(r) = d.rings.get_mut(usize::from(queue)) {
            *r = Ring::default();
        }
        if let Some(h) = d.held.get_mut(usize::from(queue)) {
            h.clear();
        }
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.0
            .borrow()
            .rings
            .get(usize::from(queue))
            .is_some_and(|r| r.desc != 0)
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus::QUEUE_INTERRUPT
    }

    fn read_config_generation(&self) -> u32 {
        let mut d = self.0.borrow_mut();
        let g = d.generation;
        if d.unstable {
            d.generation = g.wrapping_add(1);
        }
        g
    }

    fn read_config_space<T: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<T> {
        let d = self.0.borrow();
        let end = offset
            .checked_add(size_of::<T>())
            .ok_or(virtio_drivers::Error::ConfigSpaceTooSmall)?;
        let bytes = d
            .config
            .get(offset..end)
            .filter(|_| end <= d.config_len)
            .ok_or(virtio_drivers::Error::ConfigSpaceTooSmall)?;
        T::read_from_bytes(bytes).map_err(|_| virtio_drivers::Error::ConfigSpaceTooSmall)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> virtio_drivers::Result<()> {
        let mut d = self.0.borrow_mut();
        let bytes = value.as_bytes();
        let end = offset
            .checked_add(bytes.len())
            .filter(|e| *e <= d.config_len)
            .ok_or(virtio_drivers::Error::ConfigSpaceTooSmall)?;
        d.config
            .get_mut(offset..end)
            .ok_or(virtio_drivers::Error::ConfigSpaceTooSmall)?
            .copy_from_slice(bytes);
        Ok(())
    }
}

/// The allocator invariant: `[iova, iova + size)` lies in the input range, is aligned to
/// the granule and avoids every reserved region the device reported.
fn check_alloc(iova: u64, size: u64, granule: u64, input: (u64, u64), reserved: &[ReservedRegion]) {
    assert_eq!(
        iova % granule,
        0,
        "unaligned IOVA {iova:#x} (granule {granule:#x})"
    );
    let last = iova
        .checked_add(size - 1)
        .expect("allocation wraps the address space");
    assert!(
        iova >= input.0 && last <= input.1,
        "[{iova:#x}, {last:#x}] outside the input range {input:x?}"
    );
    for r in reserved.iter().filter(|r| r.start <= r.last) {
        assert!(
            last < r.start || iova > r.last,
            "[{iova:#x}, {last:#x}] overlaps reserved {r:x?}"
        );
    }
}

/// What a scenario achieved (the seeds' tests check that well-behaved devices get answers).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The driver came up.
    pub initialised: bool,
    /// Requests that completed with `Ok` (blocking, polled, waited or batched).
    pub ok: usize,
    /// Events `poll_event` returned.
    pub events: usize,
    /// PAGE_RESPs `handle_page_requests` had accepted.
    pub page_responses: usize,
    /// Reserved regions learnt from PROBE replies.
    pub reserved: usize,
    /// IOVA allocations that succeeded.
    pub allocs: usize,
}

/// Runs one scenario. Panics only on a broken invariant (or a driver panic).
pub fn run(s: &Scenario) -> Outcome {
    let mut out = Outcome::default();
    let features = if s.raw_features {
        s.features
    } else {
        s.features | VIRTIO_F_VERSION_1 | Features::MAP_UNMAP.bits()
    };
    let dev = Rc::new(RefCell::new(Dev {
        features,
        config: s.config,
        config_len: s.config_len.map_or(40, usize::from),
        generation: 0,
        unstable: s.unstable,
        reject_features: s.reject_features,
        max_queue_size: s.max_queue_size.unwrap_or(256),
        status: DeviceStatus::empty(),
        rings: [Ring::default(); 2],
        held: [VecDeque::new(), VecDeque::new()],
        armed: VecDeque::new(),
    }));
    let defaults = DriverOptions::default();
    assert!(
        defaults.max_spins.is_some(),
        "the default wait is unbounded"
    );
    let options = DriverOptions {
        max_spins: Some(MAX_SPINS),
        ..defaults.with_extensions(if s.extensions {
            virtio_iommu_driver::EXTENSION_FEATURES
        } else {
            Features::empty()
        })
    };
    let Ok(mut iommu) =
        VirtIOIommu::<FuzzHal, FuzzTransport>::new_with(FuzzTransport(dev.clone()), options)
    else {
        return out;
    };
    out.initialised = true;
    let cfg = *iommu.config();
    assert_ne!(cfg.page_size_mask, 0, "accepted a zero page-size mask");
    let mut iovas = IovaAllocator::from_config(&cfg);
    let mut reserved: Vec<ReservedRegion> = Vec::new();
    let mut tokens: Vec<Token> = Vec::new();
    let mut groups = PageRequestGroups::new();
    for op in &s.ops {
        let stats = iommu.stats();
        assert!(
            stats.abandoned_in_flight <= MAX_REQUESTS_IN_FLIGHT as u64,
            "{stats:?}"
        );
        assert!(stats.suppressed_warnings <= stats.bad_used_ids + stats.malformed_events);
        match op {
            Op::Arm(acts) => dev.borrow_mut().armed.push_back(acts.clone()),
            Op::Device(acts) => {
                let mut d = dev.borrow_mut();
                for a in acts {
                    d.act(a);
                }
            }
            Op::Request(r) => match typed(iommu.request(&r.request())) {
                Ok(virtio_iommu_driver::Reply::Probe(info)) => {
                    out.ok += 1;
                    for r in &info.reserved_regions {
                        assert!(r.start <= r.last, "accepted an inverted region {r:x?}");
                    }
                    iovas.reserve_probed(&info);
                    reserved.extend(info.reserved_regions.iter().copied());
                }
                Ok(_) => out.ok += 1,
                Err(_) => {}
            },
            Op::Submit(r) => {
                if let Ok(t) = typed(iommu.submit(&r.request())) {
                    tokens.push(t);
                }
            }
            Op::Poll(i) => {
                if let Some(t) = tokens.get(usize::from(*i) % tokens.len().max(1)) {
                    if let Ok(Some(_)) = typed(iommu.poll(*t)) {
                        out.ok += 1;
                    }
                }
            }
            Op::Wait(i) => {
                if let Some(t) = tokens.get(usize::from(*i) % tokens.len().max(1)) {
                    if typed(iommu.wait(*t)).is_ok() {
                        out.ok += 1;
                    }
                }
            }
            Op::MapBatch(domain, iova, size, n) => {
                let n = u64::from(*n % 81);
                let size = u64::from(*size).max(1);
                let maps: Vec<Mapping> = (0..n)
                    .map(|i| Mapping {
                        domain: *domain,
                        iova: iova.wrapping_add(i.wrapping_mul(size)),
                        paddr: i.wrapping_mul(size),
                        size,
                        flags: MapFlags::READ | MapFlags::WRITE,
                    })
                    .collect();
                if let Ok(results) = typed(iommu.map_batch(&maps)) {
                    assert_eq!(results.len(), maps.len());
                    out.ok += results.iter().filter(|r| r.is_ok()).count();
                }
            }
            Op::SetBypass(b) => {
                let _ = iommu.set_bypass(*b);
            }
            Op::PollEvent => {
                if let Ok(Some(_)) = typed(iommu.poll_event()) {
                    out.events += 1;
                }
            }
            Op::PageRequests(code) => {
                let code = match code % 3 {
                    0 => PageRespCode::Success,
                    1 => PageRespCode::Invalid,
                    _ => PageRespCode::Failure,
                };
                if let Ok(d) = typed(iommu.handle_page_requests(&mut groups, |_, _| code)) {
                    out.page_responses += d.responses.len();
                }
                assert!(groups.pending() <= virtio_iommu_driver::sva::MAX_PENDING_GROUPS);
            }
            Op::ReadConfig => {
                if let Ok(c) = iommu.read_config() {
                    assert_ne!(c.page_size_mask, 0);
                }
            }
            Op::AckInterrupt => {
                let _ = iommu.ack_interrupt();
            }
            Op::Alloc(size, align_log2) => {
                let size = (*size).max(1);
                let align = 1u64 << (align_log2 % 64);
                if let Some(iova) = iovas.alloc_aligned(size, align) {
                    out.allocs += 1;
                    let g = iovas.granule();
                    let rounded = size.div_ceil(g) * g;
                    check_alloc(
                        iova,
                        rounded,
                        g,
                        (cfg.input_start, cfg.input_last),
                        &reserved,
                    );
                    assert_eq!(
                        iova % align.max(g),
                        0,
                        "IOVA {iova:#x} not {align:#x}-aligned"
                    );
                }
            }
        }
    }
    out.reserved = reserved.len();
    out
}

/// Checks that a request or event call failed, if it did, with a typed error: device
/// anomalies have their own variants, so `Error::Transport` would mean one went unnamed.
fn typed<T>(r: Result<T, Error>) -> Result<T, Error> {
    if let Err(e) = &r {
        assert!(!matches!(e, Error::Transport(_)), "untyped error {e:?}");
    }
    r
}

/// The scenario's parts in the byte code.
trait ScenarioCode {
    fn queue(&mut self) -> Queue;
    fn act(&mut self) -> DevAct;
    fn acts(&mut self) -> Vec<DevAct>;
    fn req(&mut self) -> ReqSpec;
    fn op(&mut self) -> Op;
}

impl ScenarioCode for Reader<'_> {
    fn queue(&mut self) -> Queue {
        if self.u8() & 1 == 0 {
            Queue::Request
        } else {
            Queue::Event
        }
    }
    fn act(&mut self) -> DevAct {
        match self.u8() % 5 {
            0 => DevAct::Complete {
                queue: self.queue(),
                pick: self.u8(),
                status: self.u8(),
                len: match self.u8() % 3 {
                    0 => UsedLen::Exact,
                    1 => UsedLen::Zero,
                    _ => UsedLen::Raw(self.u32()),
                },
                data: self.vec(),
            },
            1 => DevAct::RawUsed {
                queue: self.queue(),
                id: self.u32(),
                len: self.u32(),
            },
            2 => DevAct::SetUsedIdx {
                queue: self.queue(),
                idx: self.u16(),
            },
            3 => DevAct::Config {
                offset: self.u8(),
                value: self.u8(),
            },
            _ => DevAct::ToggleUnstable,
        }
    }
    fn acts(&mut self) -> Vec<DevAct> {
        let n = self.u8() % 64;
        (0..n).map(|_| self.act()).collect()
    }
    fn req(&mut self) -> ReqSpec {
        match self.u8() % 9 {
            0 => ReqSpec::Attach(self.u32(), self.u32(), self.u32()),
            1 => ReqSpec::Detach(self.u32(), self.u32()),
            2 => ReqSpec::Map(self.u32(), self.u64(), self.u64(), self.u64(), self.u32()),
            3 => ReqSpec::Unmap(self.u32(), self.u64(), self.u64()),
            4 => ReqSpec::Probe(self.u32()),
            5 => ReqSpec::AttachVtd(
                self.u32(),
                self.u32(),
                self.u32(),
                self.u32(),
                self.u64(),
                self.u64(),
            ),
            6 => ReqSpec::AttachArm(
                self.u32(),
                self.u32(),
                self.u8(),
                self.u8(),
                self.u64(),
                self.u32(),
            ),
            7 => ReqSpec::Invalidate(self.u32(), self.u16(), self.opt_u32()),
            _ => ReqSpec::PageResp(self.u32(), self.opt_u32(), self.u16(), self.u8()),
        }
    }
    fn op(&mut self) -> Op {
        match self.u8() % 13 {
            0 => Op::Arm(self.acts()),
            1 => Op::Device(self.acts()),
            2 => Op::Request(self.req()),
            3 => Op::Submit(self.req()),
            4 => Op::Poll(self.u8()),
            5 => Op::Wait(self.u8()),
            6 => Op::MapBatch(self.u32(), self.u64(), self.u32(), self.u8()),
            7 => Op::SetBypass(self.u8() & 1 == 1),
            8 => Op::PollEvent,
            9 => Op::PageRequests(self.u8()),
            10 => Op::ReadConfig,
            11 => Op::AckInterrupt,
            _ => Op::Alloc(self.u64(), self.u8()),
        }
    }
}

/// What [`ScenarioCode`] reads.
trait ScenarioWrite {
    fn queue(&mut self, q: Queue);
    fn act(&mut self, a: &DevAct);
    fn acts(&mut self, acts: &[DevAct]);
    fn req(&mut self, r: &ReqSpec);
    fn op(&mut self, op: &Op);
}

impl ScenarioWrite for Writer {
    fn queue(&mut self, q: Queue) {
        self.u8(q.index() as u8);
    }
    fn act(&mut self, a: &DevAct) {
        match a {
            DevAct::Complete {
                queue,
                pick,
                status,
                len,
                data,
            } => {
                self.u8(0);
                self.queue(*queue);
                self.u8(*pick);
                self.u8(*status);
                match len {
                    UsedLen::Exact => self.u8(0),
                    UsedLen::Zero => self.u8(1),
                    UsedLen::Raw(v) => {
                        self.u8(2);
                        self.u32(*v);
                    }
                }
                self.vec(data);
            }
            DevAct::RawUsed { queue, id, len } => {
                self.u8(1);
                self.queue(*queue);
                self.u32(*id);
                self.u32(*len);
            }
            DevAct::SetUsedIdx { queue, idx } => {
                self.u8(2);
                self.queue(*queue);
                self.u16(*idx);
            }
            DevAct::Config { offset, value } => {
                self.u8(3);
                self.u8(*offset);
                self.u8(*value);
            }
            DevAct::ToggleUnstable => self.u8(4),
        }
    }
    fn acts(&mut self, acts: &[DevAct]) {
        assert!(acts.len() < 64, "at most 63 device actions per op");
        self.u8(acts.len() as u8);
        for a in acts {
            self.act(a);
        }
    }
    fn req(&mut self, r: &ReqSpec) {
        match *r {
            ReqSpec::Attach(a, b, c) => {
                self.u8(0);
                self.u32(a);
                self.u32(b);
                self.u32(c);
            }
            ReqSpec::Detach(a, b) => {
                self.u8(1);
                self.u32(a);
                self.u32(b);
            }
            ReqSpec::Map(a, b, c, d, e) => {
                self.u8(2);
                self.u32(a);
                self.u64(b);
                self.u64(c);
                self.u64(d);
                self.u32(e);
            }
            ReqSpec::Unmap(a, b, c) => {
                self.u8(3);
                self.u32(a);
                self.u64(b);
                self.u64(c);
            }
            ReqSpec::Probe(a) => {
                self.u8(4);
                self.u32(a);
            }
            ReqSpec::AttachVtd(a, b, c, d, e, f) => {
                self.u8(5);
                self.u32(a);
                self.u32(b);
                self.u32(c);
                self.u32(d);
                self.u64(e);
                self.u64(f);
            }
            ReqSpec::AttachArm(a, b, c, d, e, f) => {
                self.u8(6);
                self.u32(a);
                self.u32(b);
                self.u8(c);
                self.u8(d);
                self.u64(e);
                self.u32(f);
            }
            ReqSpec::Invalidate(a, b, c) => {
                self.u8(7);
                self.u32(a);
                self.u16(b);
                self.opt_u32(c);
            }
            ReqSpec::PageResp(a, b, c, d) => {
                self.u8(8);
                self.u32(a);
                self.opt_u32(b);
                self.u16(c);
                self.u8(d);
            }
        }
    }
    fn op(&mut self, op: &Op) {
        match op {
            Op::Arm(acts) => {
                self.u8(0);
                self.acts(acts);
            }
            Op::Device(acts) => {
                self.u8(1);
                self.acts(acts);
            }
            Op::Request(r) => {
                self.u8(2);
                self.req(r);
            }
            Op::Submit(r) => {
                self.u8(3);
                self.req(r);
            }
            Op::Poll(i) => {
                self.u8(4);
                self.u8(*i);
            }
            Op::Wait(i) => {
                self.u8(5);
                self.u8(*i);
            }
            Op::MapBatch(a, b, c, d) => {
                self.u8(6);
                self.u32(*a);
                self.u64(*b);
                self.u32(*c);
                self.u8(*d);
            }
            Op::SetBypass(b) => {
                self.u8(7);
                self.u8(u8::from(*b));
            }
            Op::PollEvent => self.u8(8),
            Op::PageRequests(c) => {
                self.u8(9);
                self.u8(*c);
            }
            Op::ReadConfig => self.u8(10),
            Op::AckInterrupt => self.u8(11),
            Op::Alloc(size, align) => {
                self.u8(12);
                self.u64(*size);
                self.u8(*align);
            }
        }
    }
}

impl Scenario {
    /// Decodes the byte code: a header (features, flag bits, the config space, config
    /// length, queue size), then ops until the input ends. Every input is a scenario.
    #[must_use]
    pub fn decode(data: &[u8]) -> Scenario {
        let mut r = Reader::new(data);
        let features = r.u64();
        let flags = r.u8();
        let config = r.bytes::<40>();
        let config_len = r.u8();
        let max_queue_size = r.u32();
        let mut ops = Vec::new();
        while !r.is_empty() {
            ops.push(r.op());
        }
        Scenario {
            features,
            raw_features: flags & 1 != 0,
            config,
            config_len: (flags & 2 != 0).then_some(config_len),
            unstable: flags & 4 != 0,
            reject_features: flags & 8 != 0,
            max_queue_size: (flags & 16 != 0).then_some(max_queue_size),
            extensions: flags & 32 != 0,
            ops,
        }
    }

    /// The byte code of this scenario ([`Scenario::decode`] gives it back).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u64(self.features);
        w.u8(u8::from(self.raw_features)
            | u8::from(self.config_len.is_some()) << 1
            | u8::from(self.unstable) << 2
            | u8::from(self.reject_features) << 3
            | u8::from(self.max_queue_size.is_some()) << 4
            | u8::from(self.extensions) << 5);
        w.raw(&self.config);
        w.u8(self.config_len.unwrap_or(0));
        w.u32(self.max_queue_size.unwrap_or(0));
        for op in &self.ops {
            w.op(op);
        }
        w.finish()
    }
}
