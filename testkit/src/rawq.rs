//! A low-level split virtqueue in guest RAM, for tests that need exact control of what the
//! device sees: any split of a request over descriptors, indirect tables, wrong directions,
//! zero-length or missing writable parts, descriptors pointing anywhere.
//!
//! The three ring areas get separate pages (virtio-queue's `MockSplitQueue` overlaps them at
//! 256 entries). The queue is the driver's side only: whoever carries notifications to the
//! device implements [`Notify`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::memory::{GuestMemory, PAGE_BYTES};
use crate::ring::{Desc, RingConfig, DESC_SIZE};
pub use crate::ring::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};

/// Byte every device-writable buffer holds before submission, so a test can tell which bytes
/// the device wrote.
pub const POISON: u8 = 0xa5;

/// Carries a queue notification (a kick) to the device.
pub trait Notify {
    /// Notifies the device that queue `index` has new buffers.
    ///
    /// # Errors
    /// Whatever the transport reports.
    fn notify(&self, index: usize) -> Result<()>;
}

/// One descriptor of a [`Chain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Device-readable bytes, copied into freshly allocated guest pages.
    Readable(Vec<u8>),
    /// A device-writable buffer of this length, filled with [`POISON`].
    Writable(u32),
    /// A descriptor written verbatim (the queue only adds `DESC_F_NEXT` and `next` to chain it):
    /// for addresses outside RAM, odd flags, or a buffer a test placed itself.
    Raw {
        /// Guest-physical address.
        addr: u64,
        /// Length.
        len: u32,
        /// Flags (`DESC_F_WRITE`, ...).
        flags: u16,
    },
}

/// A descriptor chain to submit, built in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    /// The descriptors, in chain order.
    pub segments: Vec<Segment>,
    /// Put the descriptors in an indirect table behind a single ring descriptor.
    pub indirect: bool,
}

impl Chain {
    /// An empty chain (submitting it as is is refused: a chain has at least one descriptor).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The usual shape: one readable descriptor with `request`, one writable of `reply_len`.
    #[must_use]
    pub fn request(request: &[u8], reply_len: u32) -> Self {
        Self::new().readable(request).writable(reply_len)
    }

    /// Appends a readable descriptor.
    #[must_use]
    pub fn readable(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.segments.push(Segment::Readable(bytes.into()));
        self
    }

    /// Appends readable descriptors holding `bytes` cut into pieces of `sizes` (the rest, if
    /// any, goes in one more descriptor; sizes past the end give empty descriptors).
    #[must_use]
    pub fn readable_split(mut self, bytes: &[u8], sizes: &[usize]) -> Self {
        let mut rest = bytes;
        for &n in sizes {
            let (head, tail) = rest.split_at(n.min(rest.len()));
            self.segments.push(Segment::Readable(head.to_vec()));
            rest = tail;
        }
        if !rest.is_empty() {
            self.segments.push(Segment::Readable(rest.to_vec()));
        }
        self
    }

    /// Appends a writable descriptor of `len` bytes.
    #[must_use]
    pub fn writable(mut self, len: u32) -> Self {
        self.segments.push(Segment::Writable(len));
        self
    }

    /// Appends one writable descriptor per entry of `sizes`.
    #[must_use]
    pub fn writable_split(mut self, sizes: &[u32]) -> Self {
        self.segments
            .extend(sizes.iter().map(|&n| Segment::Writable(n)));
        self
    }

    /// Appends a verbatim descriptor.
    #[must_use]
    pub fn raw(mut self, addr: u64, len: u32, flags: u16) -> Self {
        self.segments.push(Segment::Raw { addr, len, flags });
        self
    }

    /// Sends the chain through an indirect descriptor table.
    #[must_use]
    pub fn indirect(mut self) -> Self {
        self.indirect = true;
        self
    }
}

/// A used-ring entry, with what the device wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// Head descriptor index (the id the device returned).
    pub head: u16,
    /// Length the device reported.
    pub len: u32,
    /// The chain's [`Segment::Writable`] buffers after completion, concatenated in chain order
    /// (their full length: bytes the device did not write still hold [`POISON`]).
    pub written: Vec<u8>,
}

impl Completion {
    /// The first `len` bytes of [`Self::written`] (the part the device claims to have written),
    /// or all of it if `len` is larger (a test can check that separately).
    #[must_use]
    pub fn used_bytes(&self) -> &[u8] {
        let n = usize::try_from(self.len).map_or(self.written.len(), |n| n.min(self.written.len()));
        &self.written[..n]
    }
}

/// A submitted chain, until the device returns it.
#[derive(Debug)]
struct InFlight {
    descs: Vec<u16>,
    /// Guest pages to free on completion: (gpa, pages).
    pages: Vec<(u64, usize)>,
    /// Writable buffers to read back: (gpa, len).
    writable: Vec<(u64, u32)>,
}

/// A split virtqueue driven by hand.
#[derive(Debug)]
pub struct RawQueue {
    memory: Arc<GuestMemory>,
    index: usize,
    config: RingConfig,
    ring_pages: [(u64, usize); 3],
    free: Vec<u16>,
    avail_idx: u16,
    last_used: u16,
    in_flight: HashMap<u16, InFlight>,
}

impl RawQueue {
    /// Allocates a queue of `size` entries (a power of two, at most 32768) for ring `index`.
    pub fn new(memory: Arc<GuestMemory>, index: usize, size: u16) -> Result<Self> {
        if !size.is_power_of_two() || size > 32768 {
            return Err(Error::Usage(format!("queue size {size}")));
        }
        let lens = RingConfig::area_sizes(size);
        let mut ring_pages = [(0, 0); 3];
        for (slot, len) in ring_pages.iter_mut().zip(lens) {
            let len = usize::try_from(len).map_err(|_| Error::Usage("size".into()))?;
            let pages = len.div_ceil(PAGE_BYTES);
            *slot = (memory.alloc_pages(pages)?, pages);
        }
        let config = RingConfig {
            size,
            desc: ring_pages[0].0,
            avail: ring_pages[1].0,
            used: ring_pages[2].0,
        };
        Ok(Self {
            memory,
            index,
            config,
            ring_pages,
            free: (0..size).rev().collect(),
            avail_idx: 0,
            last_used: 0,
            in_flight: HashMap::new(),
        })
    }

    /// The ring index this queue is for.
    #[must_use]
    pub fn index(&self) -> usize {
        self.index
    }

    /// The layout to give the device.
    #[must_use]
    pub fn config(&self) -> RingConfig {
        self.config
    }

    /// The driver's available index (next slot to fill).
    #[must_use]
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Publishes `idx` as the avail index verbatim, as a hostile driver may (e.g. more chains
    /// than the ring holds). The queue's own bookkeeping is unchanged.
    pub fn publish_avail_idx(&self, idx: u16) -> Result<()> {
        self.config.set_avail_idx(&*self.memory, idx)
    }

    /// Sets the avail ring's flags: 1 (`VIRTQ_AVAIL_F_NO_INTERRUPT`) asks a device without
    /// EVENT_IDX for no used-buffer notifications.
    pub fn set_avail_flags(&self, flags: u16) -> Result<()> {
        self.config.set_avail_flags(&*self.memory, flags)
    }

    /// The number of used entries consumed so far (mod 2^16).
    #[must_use]
    pub fn last_used_idx(&self) -> u16 {
        self.last_used
    }

    /// The used index the device last published.
    pub fn device_used_idx(&self) -> Result<u16> {
        self.config.used_idx(&*self.memory)
    }

    /// Rewrites the device's used index to `idx`, as if the device had died before
    /// publishing what lies beyond it (the entries stay in flight here).
    pub fn set_device_used_idx(&self, idx: u16) -> Result<()> {
        self.config.set_used_idx(&*self.memory, idx)
    }

    /// Chains submitted and not yet returned.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Writes `chain` into the ring and publishes it (without kicking). Returns the head index.
    pub fn submit(&mut self, chain: &Chain) -> Result<u16> {
        if chain.segments.is_empty() {
            return Err(Error::Usage("empty chain".into()));
        }
        let ring_descs = if chain.indirect {
            1
        } else {
            chain.segments.len()
        };
        if ring_descs > self.free.len() {
            return Err(Error::Usage("queue full".into()));
        }
        let mut flight = InFlight {
            descs: Vec::new(),
            pages: Vec::new(),
            writable: Vec::new(),
        };
        let result = self.place(chain, &mut flight);
        let head = match result {
            Ok(head) => head,
            Err(e) => {
                self.release(flight);
                return Err(e);
            }
        };
        self.config.put_avail(&*self.memory, self.avail_idx, head)?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // Release ordering: the descriptors and ring entry are visible before the new index.
        self.config.set_avail_idx(&*self.memory, self.avail_idx)?;
        self.in_flight.insert(head, flight);
        Ok(head)
    }

    /// Lays out the buffers and descriptors of `chain`; returns the head descriptor index.
    fn place(&mut self, chain: &Chain, flight: &mut InFlight) -> Result<u16> {
        let mut descs = Vec::with_capacity(chain.segments.len());
        for seg in &chain.segments {
            descs.push(self.buffer(seg, flight)?);
        }
        if chain.indirect {
            let count = u32::try_from(descs.len()).map_err(|_| Error::Usage("chain".into()))?;
            let table_len = count
                .checked_mul(16)
                .ok_or_else(|| Error::Usage("chain".into()))?;
            let table = self.alloc(table_len as usize, flight)?;
            let last = descs.len() - 1;
            for (i, &(addr, len, flags)) in descs.iter().enumerate() {
                let next = u16::try_from(i + 1).unwrap_or(0);
                let flags = if i < last { flags | DESC_F_NEXT } else { flags };
                Desc {
                    addr,
                    len,
                    flags,
                    next,
                }
                .write_at(&*self.memory, table + i as u64 * DESC_SIZE)?;
            }
            let head = self.take_desc(flight)?;
            self.write_ring_desc(head, table, table_len, DESC_F_INDIRECT, 0)?;
            return Ok(head);
        }
        let ids: Vec<u16> = (0..descs.len())
            .map(|_| self.take_desc(flight))
            .collect::<Result<_>>()?;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let (flags, next) = match ids.get(i + 1) {
                Some(&n) => (flags | DESC_F_NEXT, n),
                None => (flags, 0),
            };
            self.write_ring_desc(ids[i], addr, len, flags, next)?;
        }
        Ok(ids[0])
    }

    /// Allocates and fills the buffer of one segment; returns (addr, len, flags).
    fn buffer(&self, seg: &Segment, flight: &mut InFlight) -> Result<(u64, u32, u16)> {
        Ok(match seg {
            Segment::Readable(bytes) => {
                let len = u32::try_from(bytes.len()).map_err(|_| Error::Usage("len".into()))?;
                let gpa = self.alloc(bytes.len(), flight)?;
                self.memory.write(gpa, bytes)?;
                (gpa, len, 0)
            }
            Segment::Writable(len) => {
                let n = usize::try_from(*len).map_err(|_| Error::Usage("len".into()))?;
                let gpa = self.alloc(n, flight)?;
                self.memory.fill(gpa, n, POISON)?;
                flight.writable.push((gpa, *len));
                (gpa, *len, DESC_F_WRITE)
            }
            Segment::Raw { addr, len, flags } => (*addr, *len, *flags),
        })
    }

    fn alloc(&self, len: usize, flight: &mut InFlight) -> Result<u64> {
        let pages = len.div_ceil(PAGE_BYTES).max(1);
        let gpa = self.memory.alloc_pages(pages)?;
        flight.pages.push((gpa, pages));
        Ok(gpa)
    }

    fn take_desc(&mut self, flight: &mut InFlight) -> Result<u16> {
        let id = self
            .free
            .pop()
            .ok_or_else(|| Error::Usage("queue full".into()))?;
        flight.descs.push(id);
        Ok(id)
    }

    fn write_ring_desc(&self, id: u16, addr: u64, len: u32, flags: u16, next: u16) -> Result<()> {
        let d = Desc {
            addr,
            len,
            flags,
            next,
        };
        self.config.write_desc(&*self.memory, id, d)
    }

    /// Notifies the device of this queue through `notify`.
    pub fn kick(&self, notify: &impl Notify) -> Result<()> {
        notify.notify(self.index)
    }

    /// Returns the next used entry if the device has published one.
    pub fn poll_used(&mut self) -> Result<Option<Completion>> {
        if self.device_used_idx()? == self.last_used {
            return Ok(None);
        }
        let (id, len) = self.config.used_elem(&*self.memory, self.last_used)?;
        self.last_used = self.last_used.wrapping_add(1);
        let flight = u16::try_from(id)
            .ok()
            .and_then(|head| self.in_flight.remove(&head).map(|f| (head, f)));
        let Some((head, flight)) = flight else {
            return Err(Error::Protocol(format!(
                "device returned id {id} which is not in flight (ring {})",
                self.index
            )));
        };
        let mut written = Vec::new();
        for &(gpa, n) in &flight.writable {
            let n = usize::try_from(n).map_err(|_| Error::Usage("len".into()))?;
            written.extend_from_slice(&self.memory.read_vec(gpa, n)?);
        }
        self.release(flight);
        Ok(Some(Completion { head, len, written }))
    }

    /// Waits up to `timeout` for the next used entry.
    pub fn wait_used(&mut self, timeout: Duration) -> Result<Completion> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.poll_used()? {
                return Ok(c);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout(timeout, "a used-ring entry"));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Asserts that no used entry arrives within `quiet` (e.g. while a ring is disabled).
    pub fn expect_no_used(&mut self, quiet: Duration) -> Result<()> {
        std::thread::sleep(quiet);
        match self.device_used_idx()? {
            idx if idx == self.last_used => Ok(()),
            idx => Err(Error::Protocol(format!(
                "device used idx moved to {idx} (expected {})",
                self.last_used
            ))),
        }
    }

    /// Submits, kicks, and waits for the completion of that chain.
    pub fn submit_wait(
        &mut self,
        notify: &impl Notify,
        chain: &Chain,
        timeout: Duration,
    ) -> Result<Completion> {
        let head = self.submit(chain)?;
        self.kick(notify)?;
        let c = self.wait_used(timeout)?;
        if c.head != head {
            return Err(Error::Protocol(format!(
                "completion for head {} while waiting for {head}",
                c.head
            )));
        }
        Ok(c)
    }

    /// Re-initialises the queue as a rebooted driver would: zeroed rings, indices 0, every
    /// in-flight chain dropped (its buffers freed).
    pub fn reset(&mut self) -> Result<()> {
        for (_, flight) in std::mem::take(&mut self.in_flight) {
            self.release(flight);
        }
        for &(gpa, pages) in &self.ring_pages {
            self.memory.fill(gpa, pages * PAGE_BYTES, 0)?;
        }
        self.free = (0..self.config.size).rev().collect();
        self.avail_idx = 0;
        self.last_used = 0;
        Ok(())
    }

    fn release(&mut self, flight: InFlight) {
        for (gpa, pages) in flight.pages {
            if let Err(e) = self.memory.free_pages(gpa, pages) {
                log::error!("rawq: freeing {gpa:#x}: {e}");
            }
        }
        self.free.extend(flight.descs);
    }
}

impl Drop for RawQueue {
    fn drop(&mut self) {
        for (_, flight) in std::mem::take(&mut self.in_flight) {
            self.release(flight);
        }
        for &(gpa, pages) in &self.ring_pages {
            if let Err(e) = self.memory.free_pages(gpa, pages) {
                log::error!("rawq: freeing ring at {gpa:#x}: {e}");
            }
        }
    }
}
