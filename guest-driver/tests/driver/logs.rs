//! Captures the warnings logged on the current test thread (tests run in parallel, so lines
//! from other threads are not counted).

use std::cell::RefCell;
use std::sync::Once;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Capture;

thread_local! {
    static LINES: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

impl Log for Capture {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= Level::Warn
    }

    fn log(&self, r: &Record<'_>) {
        if self.enabled(r.metadata()) {
            LINES.with(|l| {
                if let Some(lines) = l.borrow_mut().as_mut() {
                    lines.push(r.args().to_string());
                }
            });
        }
    }

    fn flush(&self) {}
}

static LOGGER: Capture = Capture;

/// The warnings (and errors) `f` logged on this thread.
pub fn warnings_of(f: impl FnOnce()) -> Vec<String> {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        log::set_logger(&LOGGER).expect("the only logger of this test binary");
        log::set_max_level(LevelFilter::Warn);
    });
    LINES.with(|l| *l.borrow_mut() = Some(Vec::new()));
    f();
    LINES.with(|l| l.borrow_mut().take().unwrap_or_default())
}
