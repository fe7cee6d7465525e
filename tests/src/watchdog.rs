//! Bounding test steps in time, for code that can spin forever (virtio-drivers'
//! `add_notify_wait_pop` busy-waits on the used ring with no timeout).

use std::sync::mpsc;
use std::time::Duration;

use crate::error::{Error, Result};

/// Runs `f` on a new thread and returns its result, or [`Error::Timeout`] if it takes longer
/// than `timeout`. On timeout the thread is left running (Rust cannot cancel it); the test is
/// expected to fail on the error, and the thread dies with the test process. A panic in `f` is
/// propagated.
pub fn run_with_timeout<T, F>(timeout: Duration, what: &'static str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(format!("watchdog: {what}"))
        .spawn(move || {
            // The receiver may be gone after a timeout; nothing to do then.
            let _ = tx.send(f());
        })?;
    match rx.recv_timeout(timeout) {
        Ok(v) => {
            let _ = handle.join();
            Ok(v)
        }
        Err(mpsc::RecvTimeoutError::Timeout) => Err(Error::Timeout(timeout, what)),
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => Err(Error::Protocol(format!(
                "{what}: worker ended without a result"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_and_timeout() {
        assert_eq!(
            run_with_timeout(Duration::from_secs(5), "add", || 2 + 2).unwrap(),
            4
        );
        let r = run_with_timeout(Duration::from_millis(20), "sleep", || {
            std::thread::sleep(Duration::from_millis(500));
        });
        assert!(matches!(r, Err(Error::Timeout(_, "sleep"))));
    }

    #[test]
    #[should_panic(expected = "boom")]
    fn panic_propagates() {
        let _ = run_with_timeout(Duration::from_secs(5), "panic", || panic!("boom"));
    }
}
