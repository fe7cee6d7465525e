//! A `no_std` virtio-iommu guest driver on [`virtio_drivers`].
//!
//! A guest kernel, hypervisor firmware or unikernel brings the device up over any
//! `virtio-drivers` [`Transport`](virtio_drivers::transport::Transport) (MMIO, PCI, or a test
//! double) with its [`Hal`](virtio_drivers::Hal), then attaches endpoints to domains and maps
//! DMA buffers. Every byte on the queues comes from the [`virtio_iommu_spec`] crate.
//!
//! - [`VirtIOIommu`]: initialisation, typed [`IommuConfig`], blocking requests
//!   (`attach`, `detach`, `map`, `unmap`, `probe`, `set_bypass`, and the extension requests
//!   `attach_table`, `invalidate`, `page_response`), non-blocking
//!   [`submit`](VirtIOIommu::submit) / [`poll`](VirtIOIommu::poll), batched
//!   [`map_batch`](VirtIOIommu::map_batch), and events with
//!   [`poll_event`](VirtIOIommu::poll_event).
//! - [`Error`]: one variant per device status, plus what the driver detects itself
//!   (device anomalies, pre-flight checks, initialisation failures); [`DriverStats`] counts
//!   the anomalies.
//! - [`iova`]: an IOVA allocator and a mapping shadow for the kernel's DMA layer.
//! - [`sva`]: shared virtual addressing with the extensions: SMMUv3 context-descriptor
//!   tables with AArch64 stage-1 tables, or x86-64 first-stage tables, built in guest memory
//!   through the `Hal`; `bind_table` (PROBE checks + ATTACH_TABLE), the INVALIDATE helpers
//!   (`invalidate_range`, `invalidate_pasid`, `invalidate_domain`), and page requests
//!   (`respond`, `handle_page_requests`).
//!
//! Requests are laid out as the specification demands: the readable part is the request
//! without its tail, the writable part is the tail (for PROBE, `probe_size` bytes of
//! properties and then the tail); a used length other than the writable size is an error.
//! Requests the specification forbids (outside `input_range` or `domain_range`, unaligned,
//! needing a feature that was not negotiated) fail before anything is sent.
//!
//! # Queues, notifications and interrupts
//!
//! The request queue has [`REQUEST_QUEUE_SIZE`] descriptors; each request takes two (its
//! readable and its writable part), so [`MAX_REQUESTS_IN_FLIGHT`] requests fit at once and a
//! batch notifies the device once per that many requests. Completions may arrive in any
//! order. The event queue holds [`EVENT_QUEUE_SIZE`] buffers of [`EVENT_BUFFER_SIZE`] bytes.
//! Neither indirect descriptors nor `VIRTIO_F_EVENT_IDX` are negotiated.
//!
//! Blocking calls spin on the used ring, by default at most
//! [`DriverOptions::DEFAULT_MAX_SPINS`] polls, then return [`Error::Timeout`]; waiting
//! forever must be asked for with [`DriverOptions::unbounded`]. A timed-out request stays in
//! flight: its buffers and ring slots are held until the device returns it (that late reply
//! is recognised by its descriptor and discarded) or the driver is dropped. An
//! interrupt-driven kernel instead submits with [`VirtIOIommu::submit`], and in its handler
//! calls [`VirtIOIommu::ack_interrupt`], then [`VirtIOIommu::poll`] for its outstanding
//! tokens and [`VirtIOIommu::poll_event`] until it returns `None` (polling on past
//! [`Error::MalformedEvent`]). Dropping the driver resets the device.
//!
//! # A device that is not trusted
//!
//! Nothing the device writes (used rings, lengths, replies, config, events) can make the
//! driver panic, read or write out of bounds, or wait without bound unless the caller asked
//! for it. Each anomaly has its error: [`Error::Timeout`]; [`Error::BadUsedId`] for a used
//! entry naming no buffer in flight (it blocks that queue until the device rewrites it);
//! [`Error::NoReply`] and [`Error::UsedLengthMismatch`] for used lengths (a used index run
//! ahead shows as these, then as `BadUsedId`); [`Error::UnknownStatus`];
//! [`Error::ZeroPageSizeMask`], [`Error::BadInputRange`], [`Error::BadDomainRange`] and
//! [`Error::ConfigUnstable`] for the config; [`Error::ProbeTooLarge`];
//! [`Error::BypassNotKept`]; [`Error::MalformedProbe`] and [`Error::MalformedEvent`]. Log
//! lines the device can trigger are rate-limited (the first 8 of a kind, then one at each
//! power of two, with the number suppressed), and [`VirtIOIommu::stats`] counts them all.
//!
//! # Example
//!
//! ```no_run
//! use virtio_drivers::{transport::Transport, Hal};
//! use virtio_iommu_driver::iova::{IovaAllocator, MappingShadow};
//! use virtio_iommu_driver::{AttachFlags, Error, MapFlags, Mapping, VirtIOIommu};
//!
//! /// Brings the IOMMU up and gives endpoint 8 a DMA window onto one buffer.
//! fn setup<H: Hal, T: Transport>(transport: T, buffer_paddr: u64) -> Result<u64, Error> {
//!     let mut iommu = VirtIOIommu::<H, T>::new(transport)?;
//!     let cfg = *iommu.config();
//!
//!     // Endpoints reach no memory until attached; the reserved regions stay unmapped.
//!     let endpoint = 8;
//!     let info = iommu.probe(endpoint)?;
//!     let mut iovas = IovaAllocator::from_config(&cfg);
//!     iovas.reserve_probed(&info);
//!
//!     let domain = cfg.domain_start;
//!     iommu.attach(domain, endpoint, AttachFlags::empty())?;
//!
//!     // Map a 16 KiB buffer for the device to read and write.
//!     let size = 0x4000;
//!     let iova = iovas.alloc(size).ok_or(Error::NoMem)?;
//!     let mapping = Mapping {
//!         domain,
//!         iova,
//!         paddr: buffer_paddr,
//!         size,
//!         flags: MapFlags::READ | MapFlags::WRITE,
//!     };
//!     iommu.map(&mapping)?;
//!
//!     // Keep a shadow so the mappings can be replayed if the domain is re-created.
//!     let mut shadow = MappingShadow::new(domain);
//!     shadow.insert(mapping)?;
//!
//!     // In the interrupt handler: acknowledge, then drain faults.
//!     iommu.ack_interrupt();
//!     loop {
//!         match iommu.poll_event() {
//!             Ok(Some(event)) => log::warn!("IOMMU event: {event:?}"),
//!             Ok(None) => break,
//!             Err(Error::MalformedEvent { .. }) => {} // dropped and counted
//!             Err(e) => return Err(e),
//!         }
//!     }
//!     Ok(iova) // program the endpoint's DMA engine with this address
//! }
//! ```
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

extern crate alloc;

mod config;
mod device;
mod error;
mod events;
pub mod iova;
mod mapping;
mod preflight;
mod probe;
mod ratelimit;
mod requestq;
mod stats;
pub mod sva;

pub use config::IommuConfig;
pub use device::{DriverOptions, VirtIOIommu, EXTENSION_FEATURES, SUPPORTED_FEATURES};
pub use error::Error;
pub use events::{EVENT_BUFFER_SIZE, EVENT_QUEUE_SIZE};
pub use mapping::Mapping;
pub use preflight::MAX_PROBE_SIZE;
pub use probe::{EndpointInfo, PageRequestInfo, ReservedRegion};
pub use requestq::{Reply, Token, MAX_REQUESTS_IN_FLIGHT, REQUEST_QUEUE_SIZE};
pub use stats::DriverStats;

// The protocol types that appear in this crate's API.
pub use virtio_drivers::transport::InterruptStatus;
pub use virtio_iommu_spec::ext::{InvalCaches, InvalScope, PageRespCode};
pub use virtio_iommu_spec::probe::ResvMemSubtype;
pub use virtio_iommu_spec::request::{
    AttachFlags, Invalidate, MapFlags, PageResp, Request, TableDesc,
};
pub use virtio_iommu_spec::{Event, FaultEvent, FaultReason, Features, PageRequest};
