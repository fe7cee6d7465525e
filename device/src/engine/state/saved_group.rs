//! One outstanding page-request group as a saved state carries it.

use core::time::Duration;

/// An outstanding page-request group (PROTOCOL.md §12.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedGroup {
    /// Endpoint that raised it.
    pub endpoint: u32,
    /// Its group ID.
    pub group_id: u16,
    /// The PASID of its requests, if they had one.
    pub pasid: Option<u32>,
    /// How long the device still waits for the PAGE_RESP before completing it with FAILURE.
    pub remaining: Duration,
}
