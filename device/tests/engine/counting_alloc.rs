//! The test binary's global allocator: the system allocator, counting the heap bytes each
//! thread holds, so a test can measure what the engine keeps per mapping, domain or table
//! while other tests run on their own threads.
//!
//! Bytes are counted as glibc's malloc spends them (a chunk: the request plus an 8-byte
//! header, rounded up to 16, at least 32), which is what the daemon's RSS pays.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    /// Heap bytes allocated minus freed by this thread.
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

/// What glibc's malloc uses for a request of `size` bytes.
fn chunk(size: usize) -> i64 {
    let c = (size + 8).div_ceil(16) * 16;
    i64::try_from(c.max(32)).unwrap_or(i64::MAX)
}

fn count(delta: i64) {
    // A thread's slot outlives every allocation the thread makes; `try_with` covers the
    // thread's teardown anyway.
    let _ = LIVE.try_with(|l| l.set(l.get() + delta));
}

/// Heap bytes the calling thread holds now (relative: compare two readings).
#[must_use]
pub fn live_bytes() -> i64 {
    LIVE.try_with(Cell::get).unwrap_or(0)
}

/// [`System`], counting per thread.
#[derive(Debug)]
pub struct Counting;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract holds as it does for `System`; the counting touches no memory the
// allocator hands out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract (non-zero size), forwarded as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(chunk(layout.size()));
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(chunk(layout.size()));
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (so from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        count(-chunk(layout.size()));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with `layout`; the caller checked `new_size`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(chunk(new_size) - chunk(layout.size()));
        }
        p
    }
}
