//! A small vhost-user virtio-blk device (RAM- or file-backed) written so that every ring,
//! descriptor and buffer access goes through one memory-access choice ([`DeviceMemory`]): the
//! guest-physical mapping vhost-user hands it, or the `virtio-iommu-client` crate's
//! `ConfinedMemory`, which confines the device to what the guest mapped for it.
//!
//! - [`disk`]: the disk, in sectors;
//! - [`request`]: virtio-blk's header, types, statuses, features and config space;
//! - [`chain`]: one descriptor chain served as one request, through the given memory;
//! - [`memory`]: [`DeviceMemory`], the plain-or-translated choice, and [`Unconfined`];
//! - [`confinement`]: [`Confinement`], the memory type a confined device's accesses go through;
//! - [`backend`]: the vhost-user backend;
//! - [`frontend_shim`]: between a confined device's frontend and the library: acknowledges
//!   vhost IOTLB messages, keeps ring IOVAs in [`ring_iovas`] for the queue thread;
//! - [`daemon`]: one connection's serve loop; [`args`]: the command line.
#![warn(missing_docs)]

pub mod args;
pub mod backend;
pub mod chain;
pub mod confinement;
pub mod daemon;
pub mod disk;
pub mod error;
pub mod frontend_shim;
pub mod memory;
pub mod request;
pub mod ring_iovas;

pub use args::Args;
pub use backend::BlkBackend;
pub use confinement::Confinement;
pub use disk::{Disk, SharedDisk};
pub use error::Error;
pub use memory::{DeviceMemory, Unconfined};
