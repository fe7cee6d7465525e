//! What every test layer of the workspace shares (a dev-only crate):
//!
//! - [`memory`]: guest RAM (a shared memfd) with a guest-physical page allocator.
//! - [`hal`]: virtio-drivers' `Hal` over that RAM, so the guest driver runs on it unchanged.
//! - [`ring`]: the split-virtqueue layout and the reads and writes both sides of a ring do,
//!   over any [`ring::RingMemory`].
//! - [`rawq`]: a hand-driven split virtqueue (the driver side) for exact descriptor-level tests.
//! - [`requests`]: builders for every request the tests send.
//! - [`bench`]: the callgrind markers, criterion settings and median every bench uses.
#![warn(missing_docs)]

pub mod bench;
pub mod error;
pub mod hal;
pub mod memory;
pub mod rawq;
pub mod requests;
pub mod ring;

pub use error::{Error, Result};
pub use hal::GuestHal;
pub use memory::GuestMemory;
pub use rawq::{Chain, Completion, Notify, RawQueue, Segment};
pub use ring::{Desc, RingConfig, RingMemory};
