//! A clock-free rate limiter for log lines the device can trigger: a hostile device can make
//! the driver see anomalies at the rate it polls, so each kind of line is printed for its first
//! few occurrences and afterwards only when the count reaches a power of two.

/// Occurrences printed one by one before the limiter starts summarising.
pub(crate) const LOGGED_IN_FULL: u64 = 8;

/// Counts one kind of anomaly and says which occurrences to log: the first
/// [`LOGGED_IN_FULL`], then occurrence 16, 32, 64, ... (at most 64 more lines for `u64::MAX`
/// occurrences), each saying how many were suppressed since the previous line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateLimit {
    seen: u64,
    suppressed: u64,
    suppressed_since_logged: u64,
}

impl RateLimit {
    /// A limiter that has seen nothing.
    #[must_use]
    pub(crate) const fn new() -> Self {
        RateLimit {
            seen: 0,
            suppressed: 0,
            suppressed_since_logged: 0,
        }
    }

    /// Counts one occurrence. `Some(n)` means log it, noting `n` lines suppressed since the
    /// previous one; `None` means stay silent.
    pub(crate) fn hit(&mut self) -> Option<u64> {
        self.seen = self.seen.saturating_add(1);
        if self.seen <= LOGGED_IN_FULL || self.seen.is_power_of_two() {
            Some(core::mem::take(&mut self.suppressed_since_logged))
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            self.suppressed_since_logged = self.suppressed_since_logged.saturating_add(1);
            None
        }
    }

    /// Occurrences counted.
    #[must_use]
    pub(crate) fn seen(&self) -> u64 {
        self.seen
    }

    /// Occurrences not logged.
    #[must_use]
    pub(crate) fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

/// `warn!` through a [`RateLimit`]: `limited_warn!(limiter, "format", args...)`.
macro_rules! limited_warn {
    ($limit:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $limit.hit() {
            if suppressed == 0 {
                log::warn!($($arg)+);
            } else {
                log::warn!(
                    "{} ({suppressed} similar lines suppressed)",
                    format_args!($($arg)+)
                );
            }
        }
    };
}
pub(crate) use limited_warn;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_the_first_lines_then_powers_of_two() {
        let mut l = RateLimit::new();
        let logged: Vec<(u64, u64)> = (1..=1000u64)
            .filter_map(|i| l.hit().map(|s| (i, s)))
            .collect();
        assert_eq!(
            logged,
            [
                (1, 0),
                (2, 0),
                (3, 0),
                (4, 0),
                (5, 0),
                (6, 0),
                (7, 0),
                (8, 0),
                (16, 7),
                (32, 15),
                (64, 31),
                (128, 63),
                (256, 127),
                (512, 255)
            ]
        );
        assert_eq!(l.seen(), 1000);
        assert_eq!(l.suppressed(), 1000 - 14);
    }

    #[test]
    fn saturates() {
        let mut l = RateLimit {
            seen: u64::MAX - 1,
            suppressed: 0,
            suppressed_since_logged: 0,
        };
        assert_eq!(l.hit(), None);
        assert_eq!(l.hit(), None);
        assert_eq!(l.seen(), u64::MAX);
    }
}
