//! The translation service's configuration (`--translation-socket` and its bounds).

use std::path::PathBuf;
use std::time::Duration;

/// `--translation-poll-us`'s default: a few round trips, far below a scheduler tick.
pub const DEFAULT_POLL_US: u64 = 50;
/// The largest `--translation-poll-us`: past a scheduler tick, spinning only burns the core.
pub const MAX_POLL_US: u64 = 1000;

/// What `args.rs` validated for the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslationConfig {
    /// The socket clients connect to.
    pub path: PathBuf,
    /// Clients served at once; one more is accepted and closed (spec/TRANSLATION.md §1).
    pub max_clients: usize,
    /// How long a client may take to acknowledge an INVALIDATE before it is cut off (§5).
    pub ack_timeout: Duration,
    /// How long the service thread keeps polling its sockets without sleeping after it
    /// handled something (a message, a wake-up: an INVALIDATE sent); zero: it sleeps at once.
    pub busy_poll: Duration,
}
