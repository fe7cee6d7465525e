//! The virtio-iommu wire protocol, shared by the device (`vhost-device-iommu`) and the guest
//! driver (`virtio-iommu-driver`).
//!
//! Every byte that crosses the virtqueues or the config space is described here once:
//!
//! - [`config`]: the 40-byte device configuration space.
//! - [`features`]: device feature bits.
//! - [`frame`]: the request head and tail every request layout shares.
//! - [`request`]: the request layouts, typed decode/encode.
//! - [`probe`]: PROBE properties, a writer for the device and an iterator for the driver.
//! - [`event`]: fault and page-request events on the event queue.
//! - [`ext`]: every number and layout of the PASID / nested-translation extensions, kept in
//!   one module so that they can be renumbered if upstream allocates different values.
//! - [`formats`]: the bits of the guest tables ATTACH_TABLE binds (SMMUv3 CDs, AArch64 and
//!   x86-64 page-table entries).
//! - [`viot`]: the ACPI VIOT table that tells a guest which endpoints sit behind the IOMMU.
//! - [`translation`]: the translation service's socket protocol (`spec/TRANSLATION.md`)
//!   between the daemon and the device backends that DMA for endpoints.
//!
//! All multi-byte fields are little-endian. The wire structures use `zerocopy`'s little-endian
//! integer types, so they have alignment 1 and can be read from any byte offset on any host.
//! `spec/PROTOCOL.md` is the normative description; each of its tables names the type here.
#![no_std]
#![warn(missing_docs)]

pub mod config;
pub mod event;
pub mod ext;
pub mod features;
pub mod formats;
pub mod frame;
pub mod probe;
pub mod request;
pub mod status;
pub mod translation;
pub mod viot;
mod wire;

pub use config::Config;
pub use event::{Event, FaultEvent, FaultReason, PageRequest};
pub use features::Features;
pub use probe::{ProbeProperties, ProbeWriter, Property};
pub use request::{DecodeError, Request, RequestType};
pub use status::Status;

/// The virtio device ID of the IOMMU device.
pub const VIRTIO_ID_IOMMU: u32 = 23;
/// Index of the request virtqueue.
pub const REQUEST_QUEUE: u16 = 0;
/// Index of the event virtqueue.
pub const EVENT_QUEUE: u16 = 1;
