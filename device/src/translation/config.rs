//! The translation service's configuration (`--translation-socket` and its bounds).

use std::path::PathBuf;
use std::time::Duration;

/// What `args.rs` validated for the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslationConfig {
    /// The socket clients connect to.
    pub path: PathBuf,
    /// Clients served at once; one more is accepted and closed (spec/TRANSLATION.md §1).
    pub max_clients: usize,
    /// How long a client may take to acknowledge an INVALIDATE before it is cut off (§5).
    pub ack_timeout: Duration,
}
