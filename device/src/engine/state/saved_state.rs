//! A device state as the stream carries it (PROTOCOL.md §12), decoded but not yet checked
//! against a device.

use virtio_iommu_spec::request::AttachTable;
use virtio_iommu_spec::{Event, Features};

use super::saved_group::SavedGroup;
use super::state_error::StateError;
use super::{decode, encode};
use crate::engine::dump::DomainDump;
use crate::engine::engine_config::EngineConfig;
use crate::engine::event_queue::EventCounters;
use crate::engine::prq::PageRequestCounters;
use crate::engine::stats::RequestStats;

/// Everything the guest can observe of a device, plus its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedState {
    /// The source's configuration: ranges, page sizes, limits, the offers and the endpoints
    /// (sorted by ID). A destination must be configured the same.
    pub config: EngineConfig,
    /// The features the source offered (its configuration's offers).
    pub offered: Features,
    /// The features the driver negotiated.
    pub negotiated: Features,
    /// The `bypass` config byte.
    pub bypass: bool,
    /// Request counters.
    pub requests: RequestStats,
    /// Event counters.
    pub event_counters: EventCounters,
    /// Page-request counters (`outstanding` is the group count, not stored).
    pub page_request_counters: PageRequestCounters,
    /// Domains by ID, each with its endpoints (ascending) and mappings (by address).
    pub domains: Vec<DomainDump>,
    /// Bound guest tables, as the ATTACH_TABLEs that bound them: by endpoint, the CD table
    /// before the PASID tables, those by PASID.
    pub tables: Vec<AttachTable>,
    /// The group ID the device hands out next.
    pub next_group_id: u16,
    /// Endpoints whose page requests are stopped (they got a FAILURE), ascending.
    pub stopped_endpoints: Vec<u32>,
    /// Outstanding page-request groups by (endpoint, group ID).
    pub groups: Vec<SavedGroup>,
    /// Events waiting for a buffer, oldest first.
    pub events: Vec<Event>,
}

impl SavedState {
    /// The stream of this state: header, sections, checksum.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        encode::encode(self)
    }

    /// Decodes a stream: magic, version, length and checksum first, then every section with
    /// each read bounded by what is left (nothing is allocated for records that are not
    /// there). Says nothing about whether the state fits a device ([`crate::engine::Engine::check_state`]).
    ///
    /// # Errors
    /// A [`StateError`] naming the first problem.
    pub fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        decode::decode(bytes)
    }
}
