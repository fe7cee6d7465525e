//! What the driver counted of the device's misbehaviour.

/// Counters of device anomalies and of the log lines the driver held back; see
/// [`VirtIOIommu::stats`](crate::VirtIOIommu::stats). All saturate at `u64::MAX`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Blocking calls that returned [`Error::Timeout`](crate::Error::Timeout).
    pub timeouts: u64,
    /// Requests given up after a timeout (or an aborted batch) that the device still holds:
    /// their buffers stay allocated and their ring slots taken until it returns them.
    pub abandoned_in_flight: u64,
    /// Completions of abandoned requests that arrived later (recognised and discarded).
    pub late_completions: u64,
    /// Used-ring entries that named no buffer in flight ([`Error::BadUsedId`](crate::Error::BadUsedId)),
    /// counted each time the driver found one.
    pub bad_used_ids: u64,
    /// Event records that did not parse ([`Error::MalformedEvent`](crate::Error::MalformedEvent)).
    pub malformed_events: u64,
    /// PROBE replies refused ([`Error::MalformedProbe`](crate::Error::MalformedProbe)).
    pub malformed_probes: u64,
    /// Device-triggered warnings not logged by the rate limiter.
    pub suppressed_warnings: u64,
}
