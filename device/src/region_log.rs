//! One guest memory region's part of the migration's dirty-page log.
//!
//! The frontend's log (SET_LOG_BASE) covers all guest-physical memory, one bit per 4 KiB page:
//! page `p` is bit `p % 8` of byte `p / 8`. A region's bitmap is told offsets relative to the
//! region, so the region's guest-physical start turns them into pages of the log.

use std::io;
use std::ops::Index;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use vhost_user_backend::bitmap::{AtomicBitmapMmap, MemRegionBitmap, MmapLogReg};
use vm_memory::{Address, GuestMemoryRegion};

/// The log's page (vhost-user's `VHOST_LOG_PAGE`).
const LOG_PAGE: usize = 0x1000;

/// Where one region's pages sit in a log of `L`'s bytes: the frontend's mapping in the daemon,
/// plain memory in tests (the library builds its mapping only for SET_LOG_BASE).
#[derive(Debug)]
pub struct RegionLog<L = MmapLogReg> {
    log: Arc<L>,
    /// The region's first guest-physical byte.
    start: usize,
    /// The region's length in bytes, not zero; `start + len - 1` does not overflow.
    len: usize,
}

impl<L: Index<usize, Output = AtomicU8>> RegionLog<L> {
    /// The region of `len` bytes from guest-physical `start` in `log`, which must cover the
    /// region's last page (else marking it panics).
    pub fn new_in(log: Arc<L>, start: usize, len: usize) -> Option<Self> {
        (len != 0 && start.checked_add(len - 1).is_some()).then_some(Self { log, start, len })
    }

    /// Sets the bit of every page that the `len` bytes at region offset `offset` touch; bytes
    /// outside the region are no page of it and are ignored.
    pub fn mark(&self, offset: usize, len: usize) {
        if len == 0 || offset >= self.len {
            return;
        }
        let last = offset.saturating_add(len - 1).min(self.len - 1);
        // Neither sum overflows: both offsets are inside the region (`new_in`).
        let first_page = (self.start + offset) / LOG_PAGE;
        let last_page = (self.start + last) / LOG_PAGE;
        // One atomic OR per byte of the log, not per page.
        for byte in first_page / 8..=last_page / 8 {
            // The bits of this byte's pages that the write touches.
            let low = first_page.max(byte * 8) % 8;
            let high = last_page.min(byte * 8 + 7) % 8;
            let bits = (0xff_u8 << low) & (0xff_u8 >> (7 - high));
            // Release: a frontend that reads the bit with acquire and then copies the page sees
            // what was written before it was set.
            self.log[byte].fetch_or(bits, Ordering::Release);
        }
    }

    /// Whether the bit of the page holding region offset `offset` is set (false outside the
    /// region).
    pub fn is_marked(&self, offset: usize) -> bool {
        if offset >= self.len {
            return false;
        }
        let page = (self.start + offset) / LOG_PAGE;
        self.log[page / 8].load(Ordering::Relaxed) & (1 << (page % 8)) != 0
    }
}

impl MemRegionBitmap for RegionLog {
    fn new<R: GuestMemoryRegion>(region: &R, log: Arc<MmapLogReg>) -> io::Result<Self> {
        // The mapping's length is private to the library: its own region log is built only
        // for its check that the log covers the region's last page.
        <AtomicBitmapMmap as MemRegionBitmap>::new(region, Arc::clone(&log))?;
        let invalid = |_| io::Error::from(io::ErrorKind::InvalidData);
        let start = usize::try_from(region.start_addr().raw_value()).map_err(invalid)?;
        let len = usize::try_from(region.len()).map_err(invalid)?;
        Self::new_in(log, start, len).ok_or(io::Error::from(io::ErrorKind::InvalidData))
    }
}
