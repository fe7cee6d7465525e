//! `EmulatedHost`, the default backend: the IOMMU is emulated in software, so a simulated
//! device can do real DMA into guest memory through the guest's mappings.
//!
//! Translation order follows QEMU's `virtio_iommu_translate`: identity for bypass, then the
//! endpoint's reserved regions (MSI window: 1:1; RESERVED: MAPPING fault), then the IOTLB and
//! the address space. A translated address outside guest RAM faults with reason UNKNOWN: the
//! IOMMU translated it fine, there is just nothing behind it (a bus error, not an IOMMU fault).
//!
//! Guest tables bound with ATTACH_TABLE (vSVA) are walked in software ([`nested`]): stage 1
//! from the guest's SMMUv3 CD table + AArch64 tables ([`smmuv3_cd`], [`aarch64`]) or x86-64
//! first-stage table ([`x86`]), stage 2 the identity over guest RAM.

pub mod aarch64;
mod dma;
mod host_impl;
mod iotlb;
pub mod nested;
pub mod s1tlb;
pub mod smmuv3_cd;
mod space;
#[cfg(test)]
mod test_support;
mod translate;
pub mod walk;
pub mod x86;

use std::collections::{HashMap, VecDeque};
use std::ops::RangeInclusive;

use virtio_iommu_spec::Event;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

pub use iotlb::{IotlbStats, IOTLB_ENTRIES};
pub use space::{AddressSpace, HostMapping};

pub use nested::{NestedTable, DEFAULT_MAX_TABLES};
pub use s1tlb::S1Stats;

use super::{AttachTarget, ReservedRegion, SpaceId, TableId};
use iotlb::Iotlb;
use nested::Nested;

/// Default cap on address spaces (one per mapped domain).
pub const DEFAULT_MAX_SPACES: usize = 1 << 16;

/// The software IOMMU.
#[derive(Debug)]
pub struct EmulatedHost {
    spaces: HashMap<SpaceId, AddressSpace>,
    next_space: u32,
    max_spaces: usize,
    attachments: HashMap<(u32, Option<u32>), AttachTarget>,
    unattached_bypass: bool,
    /// Sorted, disjoint endpoint ranges with their regions.
    reserved: Vec<(RangeInclusive<u32>, Vec<ReservedRegion>)>,
    iotlb: Iotlb,
    nested: Nested,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    events: VecDeque<Event>,
}

impl Default for EmulatedHost {
    fn default() -> Self {
        Self::new()
    }
}

impl EmulatedHost {
    /// A host with no guest memory yet, allowing [`DEFAULT_MAX_SPACES`] address spaces.
    #[must_use]
    pub fn new() -> Self {
        Self::with_max_spaces(DEFAULT_MAX_SPACES)
    }

    /// A host with no guest memory yet, allowing up to `max_spaces` address spaces.
    #[must_use]
    pub fn with_max_spaces(max_spaces: usize) -> Self {
        EmulatedHost {
            spaces: HashMap::new(),
            next_space: 1,
            max_spaces,
            attachments: HashMap::new(),
            unattached_bypass: false,
            reserved: Vec::new(),
            iotlb: Iotlb::default(),
            nested: Nested::default(),
            mem: None,
            events: VecDeque::new(),
        }
    }

    /// IOTLB counters.
    #[must_use]
    pub fn iotlb_stats(&self) -> IotlbStats {
        self.iotlb.stats()
    }

    /// Counters of the stage-1 caches (guest tables).
    #[must_use]
    pub fn s1_stats(&self) -> S1Stats {
        self.nested.stats()
    }

    /// The nested (guest-owned) table behind a handle.
    #[must_use]
    pub fn table(&self, id: TableId) -> Option<&NestedTable> {
        self.nested.get(id)
    }

    /// Number of live nested tables.
    #[must_use]
    pub fn table_count(&self) -> usize {
        self.nested.len()
    }

    /// The address space behind a handle.
    #[must_use]
    pub fn space(&self, id: SpaceId) -> Option<&AddressSpace> {
        self.spaces.get(&id)
    }

    /// Number of live address spaces.
    #[must_use]
    pub fn space_count(&self) -> usize {
        self.spaces.len()
    }

    /// The explicit attachment of `(endpoint, pasid)`, if any.
    #[must_use]
    pub fn attachment(&self, endpoint: u32, pasid: Option<u32>) -> Option<AttachTarget> {
        self.attachments.get(&(endpoint, pasid)).copied()
    }

    /// Queues an event as if the hardware had raised it (tests, fault injection).
    pub fn inject_event(&mut self, event: Event) {
        self.events.push_back(event);
    }

    /// Drops one user of a replaced or removed attachment's space or table.
    fn release(&mut self, target: AttachTarget) {
        match target {
            AttachTarget::Space(id) => {
                if let Some(s) = self.spaces.get_mut(&id) {
                    s.users = s.users.saturating_sub(1);
                }
            }
            AttachTarget::Table(id) => self.nested.release(id),
            AttachTarget::Bypass | AttachTarget::Blocked => {}
        }
    }
}
