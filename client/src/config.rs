//! How a client connects and how long it waits.

use std::path::PathBuf;
use std::time::Duration;

use virtio_iommu_spec::translation::EndpointRange;

/// A client's settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The daemon's `--translation-socket`.
    pub socket: PathBuf,
    /// The endpoint IDs this client performs DMA for (`HELLO`'s ranges, 1 to 64).
    pub endpoints: Vec<EndpointRange>,
    /// Bound on connecting and on the `HELLO` exchange.
    pub connect_timeout: Duration,
    /// Bound on one `TRANSLATE`'s reply. Above the daemon's `--page-request-timeout-ms` when
    /// PASID translations may wait for the guest.
    pub reply_timeout: Duration,
    /// After a failed connection attempt, translations fail at once for this long instead of
    /// trying again (a daemon that is down is not hammered by every access).
    pub retry_interval: Duration,
    /// Ranges one IOTLB (one endpoint and PASID) may collect before it is emptied. Each costs
    /// about 0.5 KiB (it is kept merged and alone, the latter with an `Iotlb` of its own).
    pub max_cached_ranges: usize,
    /// `TRANSLATE` round trips one access may take (each answers up to 8 ranges).
    pub max_round_trips: usize,
    /// How long a thread that sent a `TRANSLATE` polls the socket for the reply without
    /// sleeping, and how long the reader thread polls for more after each message, before
    /// they sleep (waking a sleeping thread costs more than a round trip on an idle vCPU).
    /// Zero: they sleep at once.
    pub busy_poll: Duration,
}

impl ClientConfig {
    /// Defaults for a client of `endpoints` on `socket`.
    #[must_use]
    pub fn new(socket: impl Into<PathBuf>, endpoints: Vec<EndpointRange>) -> Self {
        Self {
            socket: socket.into(),
            endpoints,
            connect_timeout: Duration::from_secs(2),
            reply_timeout: Duration::from_secs(5),
            retry_interval: Duration::from_millis(100),
            max_cached_ranges: 4096,
            max_round_trips: 64,
            busy_poll: Duration::from_micros(50),
        }
    }
}
