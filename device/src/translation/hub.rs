//! What the queue thread and the service thread share: the [`Registry`] behind its lock, and
//! the wake-ups each gives the other.

use std::time::Instant;

use parking_lot::Mutex;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::config::TranslationConfig;
use super::hold_id::HoldId;
use super::registry::Registry;
use super::stats::TranslationStats;
use crate::control::WakeSlot;
use crate::engine::Invalidation;

/// The translation service as the rest of the daemon sees it.
#[derive(Debug)]
pub struct Hub {
    pub(super) registry: Mutex<Registry>,
    /// Written when the service thread must look again (new deadlines, output to flush).
    pub(super) service_wake: EventFd,
    /// The current vhost-user connection's queue thread (held replies released).
    queue_wake: WakeSlot,
    pub(super) config: TranslationConfig,
}

impl Hub {
    /// A hub without clients.
    ///
    /// # Errors
    /// The eventfd cannot be created.
    pub fn new(config: TranslationConfig, queue_wake: WakeSlot) -> std::io::Result<Self> {
        Ok(Hub {
            registry: Mutex::new(Registry::new(config.ack_timeout)),
            service_wake: EventFd::new(EFD_NONBLOCK)?,
            queue_wake,
            config,
        })
    }

    /// Sends the INVALIDATEs of `records` to every client serving an affected endpoint. Call
    /// it with the engine lock held, right after the change (see `registry.rs`). Returns the
    /// hold the guest request's completion must wait for, `None` if no client was sent
    /// anything.
    pub fn invalidate(&self, records: Vec<Invalidation>) -> Option<HoldId> {
        self.send(&records, true)
    }

    /// As [`Hub::invalidate`] for a change nothing completes after (a config write, a reset,
    /// a frontend disconnect): the INVALIDATEs go out, nothing is held (§4.2).
    pub fn notify(&self, records: Vec<Invalidation>) {
        let _ = self.send(&records, false);
    }

    fn send(&self, records: &[Invalidation], hold: bool) -> Option<HoldId> {
        if records.is_empty() {
            return None;
        }
        let (hold, released) = self
            .registry
            .lock()
            .invalidate(records, Instant::now(), hold);
        if released {
            self.wake_queue();
        }
        // New deadlines, maybe output the socket did not take.
        let _ = self.service_wake.write(1);
        hold
    }

    /// Makes the service thread resume its waiting TRANSLATEs now (a PAGE_RESP answered a
    /// page request), instead of at its next `WAIT_POLL`.
    pub fn wake_service(&self) {
        let _ = self.service_wake.write(1);
    }

    /// Holds completed (acknowledged, or their clients cut off) since the last call.
    #[must_use]
    pub fn take_completed(&self) -> Vec<HoldId> {
        self.registry.lock().take_completed()
    }

    /// How long a client may take to acknowledge before it is cut off.
    #[must_use]
    pub fn ack_timeout(&self) -> std::time::Duration {
        self.config.ack_timeout
    }

    /// How long a thread expecting a translation message soon polls before it sleeps.
    #[must_use]
    pub fn busy_poll(&self) -> std::time::Duration {
        self.config.busy_poll
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> TranslationStats {
        self.registry.lock().stats()
    }

    /// Makes the queue thread release completed holds.
    pub(super) fn wake_queue(&self) {
        if let Some(w) = self
            .queue_wake
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            let _ = w.write(1);
        }
    }
}
