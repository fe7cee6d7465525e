//! The harness error type.

use std::time::Duration;

/// Everything that can go wrong while driving a backend from the test harness.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Guest RAM or a raw ring failed (the test kit's errors).
    #[error(transparent)]
    Kit(#[from] virtio_iommu_testkit::Error),
    /// A vhost-user request failed (or the backend answered with an error / hung up).
    #[error("vhost-user: {0}")]
    Vhost(#[from] vhost::Error),
    /// An operating-system call failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Nothing happened within the allowed time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
    /// The backend (or the control socket) broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The caller used the harness in a way it does not support.
    #[error("invalid use of the harness: {0}")]
    Usage(String),
}

/// Result alias used across the harness.
pub type Result<T> = std::result::Result<T, Error>;
