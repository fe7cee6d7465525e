//! The dirty bitmap of one guest memory region: what every write through vm-memory calls.
//!
//! Without a migration no log is set and a write costs one relaxed load of a flag; a slice of
//! guest memory borrows its region's bitmap (vm-memory's `RefSlice`: the bitmap and an
//! offset), with no reference count. Once SET_LOG_BASE has set a log, a write takes a read
//! lock and sets the bits of its pages in the log.
//!
//! Soundness of replacing the log while queue threads write: the log is only ever reached
//! under the lock, so no write can hold a replaced log, and `set_log` drops the replaced one
//! (unmapping the frontend's log with its last region) only after it released the write lock.
//! The flag only lets a write skip the lock while no log exists; it is set after the log and
//! never cleared (the library has no way to take a log away), so a write that saw it set
//! always finds a log. A write racing with SET_LOG_BASE lands in the old log or the new one
//! (the first time: in none), as it would with a lock on every write: nothing orders the two.

use std::ops::Index;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use vhost_user_backend::bitmap::{BitmapReplace, MmapLogReg};
use vm_memory::bitmap::{Bitmap, RefSlice, WithBitmapSlice};
use vm_memory::mmap::NewBitmap;

use crate::region_log::RegionLog;

/// A region's replaceable dirty bitmap, over a log of `L`'s bytes (the frontend's mapping;
/// plain memory in tests). The vhost-user library asks for `Clone`: clones share the bitmap, so
/// that each sees the log a later SET_LOG_BASE sets.
#[derive(Debug)]
pub struct LogBitmap<L = MmapLogReg> {
    /// Whether `log` ever held a log.
    logging: Arc<AtomicBool>,
    log: Arc<RwLock<Option<RegionLog<L>>>>,
}

impl<L> LogBitmap<L> {
    /// Sets `log` in place of the one before, for this bitmap and its clones.
    pub fn set_log(&self, log: RegionLog<L>) {
        let replaced = self.log.write().replace(log);
        // After the log, so that a write that sees the flag finds one (the lock, not this
        // store, orders the log's contents).
        self.logging.store(true, Ordering::Release);
        // The write lock is released: no write still reads the replaced log.
        drop(replaced);
    }
}

impl<L: Index<usize, Output = AtomicU8>> LogBitmap<L> {
    /// The write's slow path, taken only once a log was set.
    #[cold]
    #[inline(never)]
    fn mark_logged(&self, offset: usize, len: usize) {
        if let Some(log) = self.log.read().as_ref() {
            log.mark(offset, len);
        }
    }
}

impl<L> Clone for LogBitmap<L> {
    fn clone(&self) -> Self {
        Self {
            logging: Arc::clone(&self.logging),
            log: Arc::clone(&self.log),
        }
    }
}

impl<L> Default for LogBitmap<L> {
    fn default() -> Self {
        Self {
            logging: Arc::new(AtomicBool::new(false)),
            log: Arc::new(RwLock::new(None)),
        }
    }
}

impl<'a, L: Index<usize, Output = AtomicU8> + 'static> WithBitmapSlice<'a> for LogBitmap<L> {
    type S = RefSlice<'a, Self>;
}

impl<L: Index<usize, Output = AtomicU8> + 'static> Bitmap for LogBitmap<L> {
    #[inline]
    fn mark_dirty(&self, offset: usize, len: usize) {
        // Relaxed: the flag guards no data (the lock does).
        if self.logging.load(Ordering::Relaxed) {
            self.mark_logged(offset, len);
        }
    }

    fn dirty_at(&self, offset: usize) -> bool {
        self.logging.load(Ordering::Relaxed)
            && self
                .log
                .read()
                .as_ref()
                .is_some_and(|log| log.is_marked(offset))
    }

    #[inline]
    fn slice_at(&self, offset: usize) -> RefSlice<'_, Self> {
        RefSlice::new(self, offset)
    }
}

impl<L: Index<usize, Output = AtomicU8> + 'static> NewBitmap for LogBitmap<L> {
    fn with_len(_len: usize) -> Self {
        Self::default()
    }
}

impl BitmapReplace for LogBitmap {
    type InnerBitmap = RegionLog;

    fn replace(&self, log: RegionLog) {
        self.set_log(log);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::sync::Arc;

    use vm_memory::bitmap::Bitmap;
    use vm_memory::{
        Bytes, GuestAddress, GuestMemoryRegion, GuestRegionMmap, MemoryRegionAddress, MmapRegion,
    };

    use super::LogBitmap;
    use crate::region_log::RegionLog;

    type TestBitmap = LogBitmap<Vec<AtomicU8>>;
    type Region = GuestRegionMmap<TestBitmap>;

    const PAGE: usize = 0x1000;
    /// Page 5 onward: the region's pages start in the middle of the log's first byte.
    const START: usize = 5 * PAGE;
    /// 16 pages, 5 to 20.
    const LEN: usize = 16 * PAGE;

    fn region() -> Region {
        GuestRegionMmap::from_range(GuestAddress(START as u64), LEN, None).unwrap()
    }

    /// The region's own bitmap (`GuestMemoryRegion::bitmap` gives a slice of it).
    fn bitmap(region: &Region) -> &TestBitmap {
        MmapRegion::bitmap(region)
    }

    fn at(offset: usize) -> MemoryRegionAddress {
        MemoryRegionAddress(offset as u64)
    }

    /// Sets a new log of 32 pages, none marked, on `bitmap`.
    fn set_log(bitmap: &TestBitmap) -> Arc<Vec<AtomicU8>> {
        let log = Arc::new((0..4).map(|_| AtomicU8::new(0)).collect());
        bitmap.set_log(RegionLog::new_in(Arc::clone(&log), START, LEN).unwrap());
        log
    }

    /// The log's marked pages, in order.
    fn pages(log: &[AtomicU8]) -> Vec<usize> {
        (0..log.len() * 8)
            .filter(|p| log[p / 8].load(Ordering::Relaxed) & (1 << (p % 8)) != 0)
            .collect()
    }

    #[test]
    fn without_a_log_nothing_is_marked() {
        let region = region();
        region.write_slice(&[1; 8], at(0x1ffc)).unwrap();
        region
            .get_slice(at(0), LEN)
            .unwrap()
            .bitmap()
            .mark_dirty(0, LEN);
        bitmap(&region).mark_dirty(0, LEN);
        assert!((0..LEN).all(|o| !bitmap(&region).dirty_at(o)));
        // A log set afterwards holds none of the earlier writes.
        let log = set_log(bitmap(&region));
        assert_eq!(pages(&log), [0_usize; 0]);
    }

    #[test]
    fn a_write_marks_exactly_its_pages() {
        let region = region();
        let log = set_log(bitmap(&region));
        // Region offset 0x3010: guest-physical page 8.
        region.write_obj(7_u32, at(0x3010)).unwrap();
        assert_eq!(pages(&log), [8]);
        let dirty = |o| bitmap(&region).dirty_at(o);
        assert!(dirty(0x3000) && dirty(0x3fff) && !dirty(0x2fff) && !dirty(0x4000));
        // Four bytes across the end of page 6: pages 6 and 7.
        region.write_slice(&[1; 4], at(0x1ffe)).unwrap();
        assert_eq!(pages(&log), [6, 7, 8]);
    }

    #[test]
    fn a_write_over_many_pages_marks_each_across_log_bytes() {
        let region = region();
        let log = set_log(bitmap(&region));
        // From the last byte of page 6 to the first of page 17: bytes 0 to 2 of the log.
        region
            .write_slice(&vec![1; 10 * PAGE + 2], at(2 * PAGE - 1))
            .unwrap();
        assert_eq!(pages(&log), (6..=17).collect::<Vec<_>>());
    }

    #[test]
    fn a_slice_marks_at_its_offset_in_the_region() {
        let region = region();
        let log = set_log(bitmap(&region));
        let slice = region.get_slice(at(4 * PAGE), 4 * PAGE).unwrap();
        // Offset 0x1800 of the slice, 0x5800 of the region: page 10; then four bytes of a
        // subslice at 0x2ffe of the slice: pages 11 and 12.
        slice.write_obj(1_u8, 0x1800).unwrap();
        slice.subslice(0x2ffe, 4).unwrap().copy_from(&[1_u8; 4]);
        assert_eq!(pages(&log), [10, 11, 12]);
        assert!(slice.bitmap().dirty_at(0x1000) && !slice.bitmap().dirty_at(0));
    }

    #[test]
    fn marks_outside_the_region_are_ignored() {
        let region = region();
        let log = set_log(bitmap(&region));
        let bitmap = bitmap(&region);
        bitmap.mark_dirty(LEN, PAGE);
        bitmap.mark_dirty(usize::MAX, 2);
        bitmap.mark_dirty(0, 0);
        assert_eq!(pages(&log), [0_usize; 0]);
        // From the last byte on: only the last page.
        bitmap.mark_dirty(LEN - 1, usize::MAX);
        assert_eq!(pages(&log), [20]);
        assert!(!bitmap.dirty_at(LEN));
    }

    #[test]
    fn a_new_log_replaces_the_old_one_for_every_clone() {
        let region = region();
        let clone = bitmap(&region).clone();
        let first = set_log(bitmap(&region));
        clone.mark_dirty(0, 1);
        let second = set_log(&clone);
        region.write_obj(1_u8, at(PAGE)).unwrap();
        assert_eq!(pages(&first), [5]);
        assert_eq!(pages(&second), [6]);
        assert!(bitmap(&region).dirty_at(PAGE) && !bitmap(&region).dirty_at(0));
    }

    #[test]
    fn logs_replaced_under_running_writers_hold_only_their_page() {
        let region = region();
        let logs: Vec<_> = std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        region.write_obj(1_u8, at(3 * PAGE)).unwrap();
                    }
                });
            }
            (0..200).map(|_| set_log(bitmap(&region))).collect()
        });
        region.write_obj(1_u8, at(3 * PAGE)).unwrap();
        for log in &logs {
            let marked = pages(log);
            assert!(marked.is_empty() || marked == [8], "{marked:?}");
        }
        assert_eq!(pages(logs.last().unwrap()), [8]);
    }
}
