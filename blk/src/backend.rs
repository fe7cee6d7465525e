//! The vhost-user backend: one request queue, the config space, and the memory choice of
//! [`DeviceMemory`].

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use log::{info, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemory, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use zerocopy::IntoBytes;

use crate::chain::Segments;
use crate::confinement::Confinement;
use crate::disk::{Disk, SharedDisk};
use crate::memory::{DeviceMemory, RingAreas, WithMemory};
use crate::request::{
    BlkConfig, F_ACCESS_PLATFORM, F_FLUSH, F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_RO,
    F_VERSION_1,
};
use crate::ring_iovas::{RingIovas, Rings};

/// The request queue's index (virtio-blk without MQ has one).
pub const REQUEST_QUEUE: u16 = 0;
/// Number of virtqueues.
pub const NUM_QUEUES: usize = 1;
/// `handle_event` ID of the self-wake eventfd (IDs up to NUM_QUEUES are the library's).
pub const WAKE_EVENT: u16 = 2;
/// Chains served per wake-up before the thread's other event sources get a turn.
pub const CHAINS_PER_WAKE: u16 = 256;

/// One connection's virtio-blk device. `I` is the IOMMU that translates its accesses when it
/// is confined ([`crate::memory::Unconfined`] for a device that never is).
#[derive(Debug)]
pub struct BlkBackend<I: Confinement> {
    disk: SharedDisk,
    queue_size: u16,
    iommu: Option<I>,
    memory: DeviceMemory<I>,
    event_idx: bool,
    segments: Segments,
    /// Rings to re-read their used index through [`DeviceMemory`] before serving: the library
    /// read it at SET_VRING_ADDR through guest-physical memory, which is wrong for an IOVA.
    resync: [bool; NUM_QUEUES],
    /// Queues whose driver broke the ring's invariants: not served until the device restarts.
    broken: [bool; NUM_QUEUES],
    /// Ring IOVAs the frontend set, when they are IOVAs (see [`crate::frontend_shim`]).
    ring_iovas: Arc<RingIovas>,
    /// Written when a drain stopped at its budget, so the queue thread comes back.
    wake: Arc<EventFd>,
    more: bool,
    /// Consumer fds handed to the library by `exit_event`; it never closes them.
    handed_out: Mutex<Vec<RawFd>>,
}

impl<I: Confinement> BlkBackend<I> {
    /// A device serving `disk` (shared with the next connection's device), translated by
    /// `iommu` if given.
    ///
    /// # Errors
    /// The wake eventfd cannot be created.
    pub fn new(disk: SharedDisk, queue_size: u16, iommu: Option<I>) -> io::Result<Self> {
        Ok(Self {
            disk,
            queue_size,
            iommu,
            memory: DeviceMemory::None,
            event_idx: false,
            segments: Segments::default(),
            resync: [false; NUM_QUEUES],
            broken: [false; NUM_QUEUES],
            ring_iovas: Arc::default(),
            wake: Arc::new(EventFd::new(EFD_NONBLOCK)?),
            more: false,
            handed_out: Mutex::new(Vec::new()),
        })
    }

    /// The self-wake eventfd, for the serve loop to register as [`WAKE_EVENT`].
    #[must_use]
    pub fn wake_fd(&self) -> Arc<EventFd> {
        self.wake.clone()
    }

    /// Where the connection's shim records ring IOVAs for this device to use.
    #[must_use]
    pub fn ring_iovas(&self) -> Arc<RingIovas> {
        self.ring_iovas.clone()
    }

    /// Takes the exit-event consumer fds the library leaked, for the serve loop to close.
    pub fn take_handed_out_fds(&self) -> Vec<RawFd> {
        std::mem::take(
            &mut *self
                .handed_out
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn serve_requests(&mut self, vring: &VringRwLock) {
        let q = usize::from(REQUEST_QUEUE);
        self.more = false;
        if self.broken[q] {
            return;
        }
        let (rings, at) = {
            let mut state = vring.get_mut();
            let queue = state.get_queue_mut();
            // The library set the queue's addresses from a stand-in: put the IOVAs back. Only
            // a confined device's shim records any, so an unconfined drain skips the lock.
            let iovas = self
                .memory
                .translated()
                .then(|| self.ring_iovas.get(q))
                .flatten();
            if let Some(iovas) = iovas {
                if Rings::of(queue) != iovas {
                    if let Err(e) = iovas.apply(queue) {
                        warn!("queue {q}: rings at {iovas:x?}: {e}; the queue is stopped");
                        self.broken[q] = true;
                        return;
                    }
                    self.resync[q] = true;
                }
            }
            (RingAreas::of(queue), Rings::of(queue))
        };
        let mut disk = self.disk.lock();
        let job = Drain {
            vring,
            at,
            segments: &mut self.segments,
            disk: &mut disk,
            event_idx: self.event_idx,
            resync: std::mem::replace(&mut self.resync[q], false),
        };
        match self.memory.with(&rings, job) {
            None | Some(Ok(false)) => {}
            Some(Ok(true)) => {
                self.more = true;
                if let Err(e) = self.wake.write(1) {
                    warn!("requestq: cannot re-arm the queue thread: {e}");
                }
            }
            Some(Err(why)) => {
                warn!("queue {q}: {why}; the queue is stopped until the device is restarted");
                self.broken[q] = true;
            }
        }
    }
}

/// One drain of the request queue, run with the device's memory.
struct Drain<'a> {
    vring: &'a VringRwLock,
    /// The ring addresses the memory was pinned for.
    at: Rings,
    segments: &'a mut Segments,
    disk: &'a mut Disk,
    event_idx: bool,
    resync: bool,
}

impl WithMemory for Drain<'_> {
    /// `Ok(true)`: stopped at the budget with chains left.
    type Output = Result<bool, &'static str>;

    fn run<M: GuestMemory>(self, mem: &M) -> Self::Output {
        let mut state = self.vring.get_mut();
        let q = state.get_queue_mut();
        if !q.ready() {
            return Ok(false); // Stopped by GET_VRING_BASE: nothing to do.
        }
        if Rings::of(q) != self.at {
            // A SET_VRING_ADDR came in between: come back with the new rings.
            return Ok(true);
        }
        if self.resync {
            let used = q
                .used_idx(mem, Ordering::Acquire)
                .map_err(|_| "the used index cannot be read")?;
            q.set_next_used(used.0);
        }
        let mut served = 0u16;
        let mut more = false;
        loop {
            if self.event_idx {
                q.disable_notification(mem)
                    .map_err(|_| "the used ring's event cannot be written")?;
            }
            let mut ready = available(q, mem)?;
            if ready == 0 && self.event_idx {
                // Re-arm, then look once more for chains published meanwhile.
                if !matches!(q.enable_notification(mem), Ok(true)) {
                    break;
                }
                ready = available(q, mem)?;
            }
            if ready == 0 {
                break;
            }
            let batch = ready.min(CHAINS_PER_WAKE - served);
            for _ in 0..batch {
                let chain = q
                    .pop_descriptor_chain(mem)
                    .ok_or("an avail ring entry cannot be read")?;
                let head = chain.head_index();
                if head >= q.size() {
                    return Err("a chain head is outside the descriptor table");
                }
                let done = self.segments.serve(mem, chain, self.disk);
                q.add_used(mem, head, done.used_len)
                    .map_err(|_| "the used ring cannot be written")?;
            }
            served += batch;
            if served == CHAINS_PER_WAKE {
                more = true;
                break;
            }
        }
        if served > 0 && !matches!(q.needs_notification(mem), Ok(false)) {
            if let Err(e) = state.signal_used_queue() {
                warn!("requestq: call eventfd: {e}");
            }
        }
        Ok(more)
    }
}

/// Chains the driver has published and the device not yet taken. More than the ring holds is
/// impossible for a correct driver: the ring is broken.
fn available<M: GuestMemory>(q: &Queue, mem: &M) -> Result<u16, &'static str> {
    let avail = q
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|_| "the avail index cannot be read")?;
    let ready = avail.0.wrapping_sub(q.next_avail());
    if ready > q.size() {
        return Err("the driver published more chains than the ring holds");
    }
    Ok(ready)
}

impl<I: Confinement> VhostUserBackendMut for BlkBackend<I> {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.queue_size)
    }

    fn features(&self) -> u64 {
        let mut f = F_VERSION_1
            | F_RING_INDIRECT_DESC
            | F_RING_EVENT_IDX
            | F_FLUSH
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.disk.lock().read_only() {
            f |= F_RO;
        }
        if self.iommu.is_some() {
            f |= F_ACCESS_PLATFORM;
        }
        f
    }

    fn acked_features(&mut self, features: u64) {
        info!("driver features {features:#x}");
        if self.iommu.is_some() && features & F_ACCESS_PLATFORM == 0 {
            // A device behind an IOMMU cannot opt out of it: the accesses are translated all
            // the same (they fault unless the endpoint bypasses or maps them 1:1).
            warn!("the driver did not accept ACCESS_PLATFORM; translating all the same");
        }
        // QEMU sends SET_FEATURES on every device start: the rings start afresh.
        self.broken = [false; NUM_QUEUES];
        self.resync = [self.iommu.is_some(); NUM_QUEUES];
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        let f = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK;
        if self.iommu.is_some() {
            // QEMU refuses a backend that offers ACCESS_PLATFORM without BACKEND_REQ (the
            // channel its IOTLB misses would use). The channel stays unused: the translations
            // come from the daemon, and QEMU sends no IOTLB updates to a device it knows of
            // no IOMMU for.
            f | VhostUserProtocolFeatures::BACKEND_REQ
        } else {
            f
        }
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // Bytes past the config space read as zero; absurd sizes get nothing.
        const MAX_CONFIG_READ: u32 = 256;
        if size > MAX_CONFIG_READ || offset > MAX_CONFIG_READ {
            warn!("GET_CONFIG offset {offset} size {size} is outside any config space");
            return Vec::new();
        }
        let cfg = BlkConfig {
            capacity: self.disk.lock().sectors().into(),
            ..BlkConfig::default()
        };
        let bytes = cfg.as_bytes();
        let (start, len) = (offset as usize, size as usize);
        let mut out = vec![0u8; len];
        if let Some(src) = bytes.get(start..) {
            let n = src.len().min(len);
            out[..n].copy_from_slice(&src[..n]);
        }
        out
    }

    fn set_config(&mut self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // Every field is read-only here; never fail (the library would drop the connection).
        warn!(
            "ignored config write of {} bytes at offset {offset}",
            buf.len()
        );
        Ok(())
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        let mmap = GuestMemoryMmap::clone(&mem.memory());
        self.memory.update(mmap, self.iommu.as_ref());
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK) {
            Ok((consumer, notifier)) => {
                self.handed_out
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(consumer.as_raw_fd());
                Some((consumer, notifier))
            }
            Err(e) => {
                warn!("cannot create the exit eventfd: {e}");
                None
            }
        }
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        // Never return an error: the library ends the queue thread on one.
        if evset != EventSet::IN {
            warn!("unexpected event set {evset:?} for event {device_event}");
            return Ok(());
        }
        match device_event {
            REQUEST_QUEUE => {}
            WAKE_EVENT => {
                let _ = self.wake.read();
                if !self.more {
                    return Ok(());
                }
            }
            other => {
                warn!("unknown device event {other}");
                return Ok(());
            }
        }
        if let Some(v) = vrings.get(usize::from(REQUEST_QUEUE)) {
            self.serve_requests(v);
        }
        Ok(())
    }
}
