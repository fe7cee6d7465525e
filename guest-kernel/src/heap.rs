//! The kernel heap: power-of-two size classes over a fixed region, each class with an intrusive
//! free list, new blocks carved from the region's bump pointer. Blocks are aligned to their
//! size (up to a page), so every `Layout` whose alignment is at most its rounded size fits.
//! Freed blocks are reused by their class only: good enough for a test kernel whose
//! allocations are the driver's request buffers and bookkeeping.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, null_mut};
use core::sync::atomic::{AtomicBool, Ordering};

/// Smallest block: room for the free-list link, and 16-byte alignment for SSE data.
const MIN_SHIFT: u32 = 4;
/// Number of classes: 16 B up to 2^(4 + 39) B, more than any region.
const CLASSES: usize = 40;
/// Blocks are aligned to their size up to this.
const MAX_NATURAL_ALIGN: usize = 4096;

struct State {
    next: usize,
    end: usize,
    free: [usize; CLASSES],
    in_use: usize,
}

/// The global allocator (one CPU; interrupt handlers never allocate).
pub struct Heap {
    lock: AtomicBool,
    state: core::cell::UnsafeCell<State>,
}

impl core::fmt::Debug for Heap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Heap")
            .field("in_use", &self.in_use())
            .finish_non_exhaustive()
    }
}

// SAFETY: every access to `state` happens under `lock`.
unsafe impl Sync for Heap {}

impl Heap {
    /// An empty heap; [`init`](Self::init) gives it memory.
    pub const fn new() -> Self {
        Heap {
            lock: AtomicBool::new(false),
            state: core::cell::UnsafeCell::new(State {
                next: 0,
                end: 0,
                free: [0; CLASSES],
                in_use: 0,
            }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        while self
            .lock
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        // SAFETY: the lock is held, so this is the only reference.
        let r = f(unsafe { &mut *self.state.get() });
        self.lock.store(false, Ordering::Release);
        r
    }

    /// Hands `[start, end)` to the heap.
    ///
    /// # Safety
    /// The range must be mapped, writable RAM used for nothing else, and this must be called
    /// once, before the first allocation.
    pub unsafe fn init(&self, start: usize, end: usize) {
        self.with(|s| {
            s.next = start;
            s.end = end;
        });
    }

    /// Bytes handed out and not yet freed (rounded to their classes).
    pub fn in_use(&self) -> usize {
        self.with(|s| s.in_use)
    }
}

impl Default for Heap {
    fn default() -> Self {
        Self::new()
    }
}

/// The class of `layout`: log2 of its block size, or `None` if too large.
fn class_of(layout: Layout) -> Option<(usize, usize)> {
    let size = layout
        .size()
        .max(layout.align())
        .max(1 << MIN_SHIFT)
        .checked_next_power_of_two()?;
    let class = usize::try_from(size.trailing_zeros() - MIN_SHIFT).ok()?;
    (class < CLASSES).then_some((class, size))
}

// SAFETY: blocks come from the region given to `init`, each handed out once until freed;
// a block of class c is 2^(c + 4) bytes aligned to min(its size, 4096) or more, which covers
// the layout's size and alignment (the alignment is at most the size for classes ≤ 4096, and
// larger alignments get blocks aligned to their size).
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some((class, size)) = class_of(layout) else {
            return null_mut();
        };
        self.with(|s| {
            let head = s.free[class];
            if head != 0 {
                // SAFETY: `head` is a freed block of this class; its first word is the link.
                s.free[class] = unsafe { ptr::read(head as *const usize) };
                s.in_use += size;
                return head as *mut u8;
            }
            let align = if layout.align() > MAX_NATURAL_ALIGN {
                size
            } else {
                size.min(MAX_NATURAL_ALIGN)
            };
            let Some(start) = s.next.checked_next_multiple_of(align) else {
                return null_mut();
            };
            match start.checked_add(size) {
                Some(end) if end <= s.end => {
                    s.next = end;
                    s.in_use += size;
                    start as *mut u8
                }
                _ => null_mut(),
            }
        })
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some((class, size)) = class_of(layout) else {
            return;
        };
        self.with(|s| {
            // SAFETY: `block` was allocated with this layout, so it is a block of `class`
            // that nobody uses any more; its first word becomes the link.
            unsafe { ptr::write(block.cast::<usize>(), s.free[class]) };
            s.free[class] = block as usize;
            s.in_use -= size;
        });
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return null_mut();
        };
        if class_of(layout).map(|c| c.0) == class_of(new_layout).map(|c| c.0) {
            return block;
        }
        // SAFETY: the GlobalAlloc contract, forwarded.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks hold at least min(old, new) bytes and are distinct.
            unsafe {
                ptr::copy_nonoverlapping(block, new, layout.size().min(new_size));
                self.dealloc(block, layout);
            }
        }
        new
    }
}
