//! Bounded busy-polling (as the kernel's `busy_poll` and KVM's halt polling): after work, the
//! service thread looks for more without sleeping for a short while, because waking a sleeping
//! thread on an idle vCPU costs several round trips.

use std::time::{Duration, Instant};

/// Polls between clock reads: each poll is a syscall, so reading the clock every few of them
/// costs little and overshoots the bound by a few polls at most.
const CHECK_EVERY: u32 = 4;

/// One spell of spinning, at most its bound long.
#[derive(Debug)]
pub(crate) struct BusyPoll {
    until: Instant,
    left: u32,
}

impl BusyPoll {
    /// A spell of `bound`; `None` when `bound` is zero (polling off).
    pub(crate) fn new(bound: Duration) -> Option<Self> {
        if bound.is_zero() {
            return None;
        }
        Some(BusyPoll {
            until: Instant::now().checked_add(bound)?,
            left: CHECK_EVERY,
        })
    }

    /// Pauses briefly, and every few calls yields the CPU to any thread ready to run (on a
    /// busy core, a spinning thread would delay the very thread it waits for); `false` once
    /// the bound has passed.
    pub(crate) fn again(&mut self) -> bool {
        self.left -= 1;
        if self.left > 0 {
            std::hint::spin_loop();
            return true;
        }
        self.left = CHECK_EVERY;
        std::thread::yield_now();
        Instant::now() < self.until
    }
}
