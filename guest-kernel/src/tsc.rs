//! The time-stamp counter, calibrated against the PIT: cycle counts for the timing checks and
//! their conversion to nanoseconds.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::cpu::rdtsc;
use crate::interrupts::{self, TICK_HZ};

/// TSC cycles per millisecond, set by [`calibrate`].
static CYCLES_PER_MS: AtomicU64 = AtomicU64::new(0);
/// Ticks measured.
const CALIBRATION_TICKS: u32 = 5;

/// Measures the TSC rate over five timer ticks (50 ms); returns cycles per millisecond.
pub fn calibrate() -> u64 {
    // Start on a tick edge.
    let t = interrupts::ticks();
    interrupts::wait_ticks(2, || interrupts::ticks() != t);
    let (t0, c0) = (interrupts::ticks(), rdtsc());
    interrupts::wait_ticks(CALIBRATION_TICKS + 1, || {
        interrupts::ticks().wrapping_sub(t0) >= CALIBRATION_TICKS
    });
    let cycles = rdtsc().wrapping_sub(c0);
    let ms = u64::from(CALIBRATION_TICKS) * 1000 / u64::from(TICK_HZ);
    let rate = (cycles / ms).max(1);
    CYCLES_PER_MS.store(rate, Ordering::Relaxed);
    rate
}

/// Nanoseconds of `cycles` (0 before calibration).
pub fn to_ns(cycles: u64) -> u64 {
    match CYCLES_PER_MS.load(Ordering::Relaxed) {
        0 => 0,
        rate => {
            u64::try_from(u128::from(cycles) * 1_000_000 / u128::from(rate)).unwrap_or(u64::MAX)
        }
    }
}
