//! A split virtqueue seen through host slices resolved once per batch: the descriptor table,
//! the avail ring and the used ring each looked up in guest memory once, then read and written
//! with bounds-checked offsets. Also the bounded walk over one descriptor chain, and the used
//! index published once per batch.
//!
//! The driver owns the ring memory and may change it at any time: every index read from it is
//! reduced or checked before use, and a chain visits at most as many descriptors as its table
//! holds.

use std::sync::atomic::{fence, Ordering};

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::bitmap::MS;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, VolatileMemory, VolatileSlice};

/// Bytes of one descriptor.
const DESC_SIZE: usize = 16;
/// Bytes of one used element.
const USED_ELEM_SIZE: usize = 8;
/// `VIRTQ_DESC_F_NEXT`.
const F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`.
const F_WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT`.
const F_INDIRECT: u16 = 4;
/// `VIRTQ_AVAIL_F_NO_INTERRUPT`: without EVENT_IDX, the driver asks for no notifications.
const F_NO_INTERRUPT: u16 = 1;

/// Why a ring or a chain cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The descriptor table, avail ring or used ring is not inside one guest memory region.
    #[error("a ring is not inside one guest memory region")]
    RingOutsideMemory,
    /// A chain head or `next` index is outside its descriptor table.
    #[error("descriptor index {0} is outside its table")]
    BadIndex(u16),
    /// The chain visits more descriptors than its table holds (a loop).
    #[error("the chain is longer than its descriptor table")]
    TooLong,
    /// An indirect table inside an indirect table, with NEXT set, or of a length that is zero
    /// or not a multiple of 16.
    #[error("malformed indirect descriptor")]
    BadIndirect,
    /// An indirect table outside guest memory.
    #[error("indirect table at {0:#x} is outside guest memory")]
    IndirectOutsideMemory(u64),
}

/// One descriptor as the walk yields it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Guest address of the buffer.
    pub addr: u64,
    /// Its length.
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

/// The three parts of one split ring in host memory.
#[derive(Debug)]
pub struct RingView<'m, M: GuestMemoryBackend> {
    mem: &'m M,
    desc: VolatileSlice<'m, MS<'m, M>>,
    avail: VolatileSlice<'m, MS<'m, M>>,
    used: VolatileSlice<'m, MS<'m, M>>,
    size: u16,
}

impl<'m, M: GuestMemoryBackend> RingView<'m, M> {
    /// Resolves `q`'s rings in `mem` (sizes as the split ring layout gives them, the avail and
    /// used rings with their event words).
    ///
    /// # Errors
    /// [`RingError::RingOutsideMemory`].
    pub fn new(mem: &'m M, q: &Queue) -> Result<Self, RingError> {
        let size = q.size();
        let n = usize::from(size);
        let slice = |addr: u64, len: usize| {
            mem.get_slice(GuestAddress(addr), len)
                .map_err(|_| RingError::RingOutsideMemory)
        };
        Ok(RingView {
            mem,
            desc: slice(q.desc_table(), n * DESC_SIZE)?,
            avail: slice(q.avail_ring(), 4 + 2 * n + 2)?,
            used: slice(q.used_ring(), 4 + USED_ELEM_SIZE * n + 2)?,
            size,
        })
    }

    /// Queue size.
    #[must_use]
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The driver's avail index; the ring entries before it are visible after this load.
    ///
    /// # Errors
    /// [`RingError::RingOutsideMemory`] (a misaligned ring).
    pub fn avail_idx(&self) -> Result<u16, RingError> {
        let v: u16 = self
            .avail
            .load(2, Ordering::Acquire)
            .map_err(|_| RingError::RingOutsideMemory)?;
        Ok(u16::from_le(v))
    }

    /// The chain head in avail slot `idx` (taken modulo the queue size).
    ///
    /// # Errors
    /// [`RingError::BadIndex`] for a head outside the table.
    pub fn avail_head(&self, idx: u16) -> Result<u16, RingError> {
        let at = 4 + 2 * usize::from(idx % self.size);
        let head: u16 = self
            .avail
            .load(at, Ordering::Relaxed)
            .map_err(|_| RingError::RingOutsideMemory)?;
        let head = u16::from_le(head);
        if head >= self.size {
            return Err(RingError::BadIndex(head));
        }
        Ok(head)
    }

    /// Without EVENT_IDX: whether the driver wants used-buffer notifications (it did not set
    /// `VIRTQ_AVAIL_F_NO_INTERRUPT`, as a driver that polls the used ring does). Call it after
    /// publishing the used index.
    ///
    /// # Errors
    /// [`RingError::RingOutsideMemory`] (a misaligned ring).
    pub fn wants_interrupts(&self) -> Result<bool, RingError> {
        // The index store must be visible before the flags are read, or a driver that
        // cleared the flag meanwhile would wait for a notification that never comes.
        fence(Ordering::SeqCst);
        let v: u16 = self
            .avail
            .load(0, Ordering::Relaxed)
            .map_err(|_| RingError::RingOutsideMemory)?;
        Ok(u16::from_le(v) & F_NO_INTERRUPT == 0)
    }

    /// The driver's `used_event` (EVENT_IDX).
    fn used_event(&self) -> Result<u16, RingError> {
        let at = 4 + 2 * usize::from(self.size);
        let v: u16 = self
            .avail
            .load(at, Ordering::Relaxed)
            .map_err(|_| RingError::RingOutsideMemory)?;
        Ok(u16::from_le(v))
    }

    /// The descriptors of the chain at `head`.
    #[must_use]
    pub fn chain(&self, head: u16) -> Chain<'_, 'm, M> {
        Chain {
            view: self,
            indirect: None,
            next: Some(head),
            table_len: self.size,
            left: self.size,
        }
    }

    /// Writes used slot `idx` (modulo the queue size); the driver sees it after
    /// [`RingView::publish_used`].
    ///
    /// # Errors
    /// [`RingError::RingOutsideMemory`] (a misaligned ring).
    pub fn put_used(&self, idx: u16, head: u16, len: u32) -> Result<(), RingError> {
        let at = 4 + USED_ELEM_SIZE * usize::from(idx % self.size);
        let bad = |_| RingError::RingOutsideMemory;
        self.used
            .store(u32::from(head).to_le(), at, Ordering::Relaxed)
            .map_err(bad)?;
        self.used
            .store(len.to_le(), at + 4, Ordering::Relaxed)
            .map_err(bad)
    }

    /// Publishes the used index `idx` (every slot before it written), and says whether the
    /// driver asked to be notified of the entries since `old`: without EVENT_IDX, unless it
    /// set `VIRTQ_AVAIL_F_NO_INTERRUPT` (a driver that polls the used ring).
    ///
    /// # Errors
    /// [`RingError::RingOutsideMemory`] (a misaligned ring).
    pub fn publish_used(&self, old: u16, idx: u16, event_idx: bool) -> Result<bool, RingError> {
        // Release: the used elements are visible before the index that covers them.
        self.used
            .store(idx.to_le(), 2, Ordering::Release)
            .map_err(|_| RingError::RingOutsideMemory)?;
        if !event_idx {
            return self.wants_interrupts();
        }
        // The index store must be visible before `used_event` is read, or a driver that
        // updated it meanwhile would wait for a notification that never comes.
        fence(Ordering::SeqCst);
        let event = self.used_event()?;
        // Notify when `used_event` lies in [old, idx): the driver waits for one of them.
        Ok(idx.wrapping_sub(event).wrapping_sub(1) < idx.wrapping_sub(old))
    }
}

/// The bounded walk over one chain, switching to an indirect table at most once.
#[derive(Debug)]
pub struct Chain<'v, 'm, M: GuestMemoryBackend> {
    view: &'v RingView<'m, M>,
    /// The indirect table being walked, if any.
    indirect: Option<VolatileSlice<'m, MS<'m, M>>>,
    next: Option<u16>,
    /// Entries in the table walked now.
    table_len: u16,
    /// Descriptors this table may still yield.
    left: u16,
}

impl<M: GuestMemoryBackend> Chain<'_, '_, M> {
    fn read(&self, idx: u16) -> Result<Descriptor, RingError> {
        if idx >= self.table_len {
            return Err(RingError::BadIndex(idx));
        }
        let table = self.indirect.as_ref().unwrap_or(&self.view.desc);
        table
            .get_ref::<Descriptor>(usize::from(idx) * DESC_SIZE)
            .map(|r| r.load())
            .map_err(|_| RingError::BadIndex(idx))
    }

    /// Switches to the indirect table `d` describes.
    fn enter_indirect(&mut self, d: &Descriptor) -> Result<(), RingError> {
        let flags = d.flags();
        if self.indirect.is_some() || flags & F_NEXT != 0 {
            return Err(RingError::BadIndirect);
        }
        let len = d.len();
        let entries = len / 16;
        if len % 16 != 0 || entries == 0 || entries > u32::from(u16::MAX) {
            return Err(RingError::BadIndirect);
        }
        let addr = d.addr().0;
        let table = self
            .view
            .mem
            .get_slice(GuestAddress(addr), len as usize)
            .map_err(|_| RingError::IndirectOutsideMemory(addr))?;
        self.indirect = Some(table);
        // `entries` fits u16: checked above.
        self.table_len = u16::try_from(entries).map_err(|_| RingError::BadIndirect)?;
        self.left = self.table_len;
        self.next = Some(0);
        Ok(())
    }
}

impl<M: GuestMemoryBackend> Iterator for Chain<'_, '_, M> {
    type Item = Result<Desc, RingError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let idx = self.next?;
            let step = (|| {
                if self.left == 0 {
                    return Err(RingError::TooLong);
                }
                self.left -= 1;
                let d = self.read(idx)?;
                let flags = d.flags();
                if flags & F_INDIRECT != 0 {
                    self.enter_indirect(&d)?;
                    return Ok(None);
                }
                self.next = (flags & F_NEXT != 0).then(|| d.next());
                Ok(Some(Desc {
                    addr: d.addr().0,
                    len: d.len(),
                    write: flags & F_WRITE != 0,
                }))
            })();
            match step {
                Ok(Some(d)) => return Some(Ok(d)),
                Ok(None) => {}
                Err(e) => {
                    self.next = None;
                    return Some(Err(e));
                }
            }
        }
    }
}
