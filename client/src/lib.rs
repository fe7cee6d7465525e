//! A device backend's side of the virtio-iommu daemon's translation service
//! (`spec/TRANSLATION.md`): `vm_memory::Iommu` over the translation socket, so a rust-vmm
//! backend wraps its guest memory in `vm_memory::IommuMemory` and every access it makes at an
//! IOVA is translated, and confined, by the guest's IOMMU.
//!
//! ```no_run
//! use virtio_iommu_client::{Client, ClientConfig, EndpointRange};
//! use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, IommuMemory};
//!
//! let client = Client::connect(ClientConfig::new(
//!     "/run/viommu-translate.sock",
//!     vec![EndpointRange { first: 8, last: 8 }],
//! ))?;
//! let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
//! let dma = IommuMemory::new(ram, client.translator(8, None), true, ());
//! let mut buf = [0u8; 16];
//! dma.read_slice(&mut buf, GuestAddress(0x10_0000)).ok(); // an IOVA the guest mapped
//! # Ok::<(), virtio_iommu_client::Error>(())
//! ```
//!
//! - [`Client`]: the connection (reconnected after the daemon restarts), its reader thread
//!   that fills the IOTLBs and handles `INVALIDATE` (drop, then `INVAL_ACK`);
//! - [`Translator`]: the `Iommu` of one endpoint and PASID;
//! - [`ConfinedMemory`]: guest memory at a translator's IOVAs, `IommuMemory` with a cheaper hit
//!   (an access inside one cached range skips vm-memory's `Iotlb` lookups);
//! - [`PinnedMemory`]: a `ConfinedMemory` with a queue's rings translated once per drain;
//! - [`EndpointTlb`]: one IOTLB, whose read lock an access holds while it uses a translation,
//!   and whose [`TlbPin`]s keep translations valid across many accesses (a queue's rings for
//!   one drain; [`ConfinedMemory::pinned`]);
//! - [`ClientConfig`]: the socket, endpoints and every bound; [`Error`];
//! - [`ratelimit`]: [`limited!`], rate-limited log lines for events a guest can trigger.
#![warn(missing_docs)]

mod acker;
mod busy_poll;
mod client;
mod config;
mod confined_memory;
mod endpoint_tlb;
mod error;
mod pending;
mod pinned_memory;
pub mod ratelimit;
mod raw_socket;
mod session;
mod translator;

pub use acker::MAX_WAITING_ACKS;
pub use client::{Client, ClientStats};
pub use config::ClientConfig;
pub use confined_memory::ConfinedMemory;
pub use endpoint_tlb::{EndpointTlb, TlbGuard, TlbKey, TlbPin};
pub use error::Error;
pub use pinned_memory::{PinnedMemory, RING_AREAS};
pub use translator::Translator;
pub use virtio_iommu_spec::translation::EndpointRange;

#[doc(hidden)]
pub use log as __log;
