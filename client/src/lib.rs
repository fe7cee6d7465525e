//! A device backend's side of the virtio-iommu daemon's translation service
//! (`spec/TRANSLATION.md`): `vm_memory::Iommu` over the translation socket, so a rust-vmm
//! backend wraps its guest memory in `vm_memory::IommuMemory` and every access it makes at an
//! IOVA is translated (and confined) by the guest's IOMMU.
//!
//! - [`ratelimit`]: [`limited!`], rate-limited log lines for events a guest can trigger.
#![warn(missing_docs)]

pub mod ratelimit;

#[doc(hidden)]
pub use log as __log;
