//! Rate-limited logging for lines a guest can trigger: a hostile driver must not be able to
//! fill the host's disk through our log. Each call site gets its own budget of
//! [`BURST`] lines per [`WINDOW`]; lines past it are counted and the count is reported with the
//! next line that gets through.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Lines one call site may log per window.
pub const BURST: u32 = 10;
/// Length of a window.
pub const WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

/// The budget of one call site (a `static` made by [`limited!`]).
#[derive(Debug)]
pub struct LogLimit(Mutex<Option<Window>>);

impl LogLimit {
    /// A fresh budget.
    #[must_use]
    pub const fn new() -> Self {
        Self(Mutex::new(None))
    }

    /// Whether a line may be logged now; `Some(n)` carries the lines suppressed since the last
    /// one that got through.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut guard = self.0.lock();
        let w = guard.get_or_insert(Window {
            start: now,
            logged: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(w.start) >= WINDOW {
            w.start = now;
            w.logged = 0;
        }
        if w.logged < BURST {
            w.logged += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed = w.suppressed.saturating_add(1);
            None
        }
    }
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new()
    }
}

/// `limited!(warn, "...", args)`: logs at the given level through this call site's
/// [`LogLimit`].
#[macro_export]
macro_rules! limited {
    ($level:ident, $($arg:tt)+) => {{
        static LIMIT: $crate::ratelimit::LogLimit = $crate::ratelimit::LogLimit::new();
        if $crate::__log::log_enabled!($crate::__log::Level::$level) {
            match LIMIT.admit() {
                Some(0) => $crate::__log::log!($crate::__log::Level::$level, $($arg)+),
                Some(n) => $crate::__log::log!(
                    $crate::__log::Level::$level,
                    "{} ({n} similar lines suppressed)",
                    format_args!($($arg)+)
                ),
                None => {}
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_suppressed_then_counted() {
        let limit = LogLimit::new();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(limit.admit_at(t0), Some(0));
        }
        for _ in 0..5 {
            assert_eq!(limit.admit_at(t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(limit.admit_at(t0 + WINDOW), Some(5));
        assert_eq!(limit.admit_at(t0 + WINDOW), Some(0));
    }
}
