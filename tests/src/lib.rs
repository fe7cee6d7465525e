//! End-to-end test harness: a Rust mini-VMM that drives a vhost-user virtio device the way
//! QEMU does, so tests can run a guest driver against the real daemon in-process. Guest RAM, the
//! `Hal` and the raw queue come from `virtio-iommu-testkit`.
//!
//! - [`frontend`]: the vhost-user frontend, with QEMU's start/stop/reset/pause sequences.
//! - [`transport`]: virtio-drivers' `Transport` over the frontend, so virtio-drivers based
//!   drivers (and `VirtQueue`) run unchanged on the test kit's `GuestHal`.
//! - [`daemon`]: the daemon as a child process, and its control-socket client.
//! - [`dirty_log`]: the dirty-page log a frontend hands the backend for a migration.
//! - [`blk`]: the `vhost-user-blk-confined` backend as a child process, on a disk file.
//! - [`translation_client`]: a client of the daemon's translation socket speaking the raw
//!   protocol (spec/TRANSLATION.md), for tests and benchmarks.
//! - [`watchdog`]: time limits for steps that could hang.
#![warn(missing_docs)]

pub mod blk;
pub mod daemon;
pub mod dirty_log;
pub mod error;
pub mod frontend;
pub mod translation_client;
pub mod transport;
pub mod watchdog;

pub use blk::BlkDaemon;
pub use daemon::{ControlClient, Daemon};
pub use dirty_log::DirtyLog;
pub use error::{Error, Result};
pub use frontend::Frontend;
pub use translation_client::TranslationClient;
pub use transport::VhostUserTransport;
