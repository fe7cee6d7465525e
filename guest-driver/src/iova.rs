//! Helpers for a guest kernel's DMA layer: where to put IOVAs, and what is mapped.
//!
//! - [`IovaAllocator`]: granule-aligned ranges from the input range minus reserved regions.
//! - [`MappingShadow`]: the live mappings of a domain, to translate locally and to replay
//!   with [`map_batch`](crate::VirtIOIommu::map_batch) after the domain was re-created.

mod allocator;
mod shadow;

pub use allocator::IovaAllocator;
pub use shadow::MappingShadow;
