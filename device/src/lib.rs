//! vhost-user virtio-iommu device.
//!
//! The data path reads top to bottom: [`daemon`] accepts a frontend, [`backend`] owns the
//! virtqueues, [`queue`] turns a descriptor chain into bytes, the `virtio-iommu-spec` crate
//! decodes them, [`engine`] applies the virtio-iommu rules (pure, no I/O), and a [`host`]
//! backend mirrors the result into a real or emulated IOMMU. [`control`] is the operator's
//! window into a running daemon; [`translation`] serves translations to device backends;
//! [`state_transfer`] moves the device state to another daemon.

pub mod args;
pub mod backend;
pub mod control;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod guest_ram;
pub mod host;
pub mod journal;
pub mod log_bitmap;
pub mod queue;
pub mod ratelimit;
pub mod region_log;
pub mod ring;
pub mod state_transfer;
pub mod translation;

pub use guest_ram::GuestRam;
