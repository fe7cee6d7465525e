//! What every bench shares: the callgrind markers of `--instructions` mode (`scripts/bench.sh`
//! collects instructions only inside [`measured`] and dumps its counters after each
//! [`part_end`]), the criterion settings and a median.

use std::hint::black_box;
use std::time::Duration;

use criterion::Criterion;

/// Everything a counted part runs: callgrind collects only inside this function.
#[inline(never)]
pub fn measured<R>(f: impl FnOnce() -> R) -> R {
    black_box(f())
}

/// Marks the end of a part of `units` requests: callgrind dumps its counters after this
/// function, and `scripts/bench.sh` divides the part's count by `units` (`-` parts are
/// warm-ups it drops).
#[inline(never)]
pub fn part_end(name: &str, units: u64) {
    println!("part {name} {units}");
}

/// The criterion settings of every bench: short runs, since the machine is shared and the
/// instruction counts are the repeatable figure.
#[must_use]
pub fn criterion_config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
}

/// The median of some timings (the upper one of an even count); zero for none.
#[must_use]
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}
