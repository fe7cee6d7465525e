//! End-to-end test harness: a Rust mini-VMM that drives a vhost-user virtio device the way
//! QEMU does, so tests can run a guest driver against the real daemon in-process.
//!
//! - [`memory`]: guest RAM (a shared memfd) and its GPA page allocator.
//! - [`frontend`]: the vhost-user frontend, with QEMU's start/stop/reset/pause sequences.
//! - [`rawq`]: a hand-driven split virtqueue for exact descriptor-level tests.
//! - [`transport`] and [`hal`]: virtio-drivers' `Transport` and `Hal` over the above, so
//!   virtio-drivers based drivers (and `VirtQueue`) run unchanged.
//! - [`daemon`]: the daemon as a child process, and its control-socket client.
//! - [`watchdog`]: time limits for steps that could hang.
#![warn(missing_docs)]

pub mod daemon;
pub mod error;
pub mod frontend;
pub mod hal;
pub mod memory;
pub mod rawq;
pub mod transport;
pub mod watchdog;

pub use daemon::{ControlClient, Daemon};
pub use error::{Error, Result};
pub use frontend::{Frontend, RingConfig};
pub use hal::GuestHal;
pub use memory::GuestMemory;
pub use rawq::{Chain, Completion, RawQueue, Segment};
pub use transport::VhostUserTransport;
