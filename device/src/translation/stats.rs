//! Counters of the translation service (the control socket's `stats`, key `translation`).

use serde::Serialize;

/// Counters since the daemon started, and the clients connected now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TranslationStats {
    /// Clients connected now.
    pub clients: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections closed at once because `--max-translation-clients` were connected.
    pub refused: u64,
    /// HELLOs answered with a non-zero status.
    pub hello_rejected: u64,
    /// Connections closed for a protocol error.
    pub protocol_errors: u64,
    /// TRANSLATE answered OK.
    pub translate_ok: u64,
    /// TRANSLATE answered FAULT.
    pub translate_fault: u64,
    /// TRANSLATE answered INVAL.
    pub translate_inval: u64,
    /// TRANSLATE answered UNSUPP.
    pub translate_unsupp: u64,
    /// TRANSLATEs that waited for a page response.
    pub translate_waited: u64,
    /// INVALIDATE messages sent.
    pub invalidates: u64,
    /// INVAL_ACK messages received.
    pub acks: u64,
    /// Clients cut off for not acknowledging in time.
    pub cut_off_timeout: u64,
    /// Clients cut off for not reading their messages (1024 unsent).
    pub cut_off_backlog: u64,
    /// Guest requests whose completion waited for acknowledgements.
    pub held: u64,
    /// Held guest requests completed.
    pub released: u64,
    /// Guest requests held now.
    pub holding: u64,
}
