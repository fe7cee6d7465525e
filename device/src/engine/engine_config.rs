//! Static configuration of the device model: ranges, endpoints, limits, extension offers.

use core::ops::RangeInclusive;
use core::time::Duration;

use virtio_iommu_spec::ext::TableFormat;
use virtio_iommu_spec::probe::ResvMemSubtype;

use crate::host::ReservedRegion;

/// Default of [`Limits::max_page_request_groups`].
pub const DEFAULT_PAGE_REQUEST_GROUPS: u32 = 32;

/// Default of [`Limits::max_mappings_total`]: with the worst-case cost of a mapping
/// ([`super::footprint::MAPPING_BYTES`]) about 64 MiB of device state.
pub const DEFAULT_MAX_MAPPINGS_TOTAL: usize = 1 << 20;

/// Resource limits. Exceeding one makes the request fail with S_NOMEM and change nothing.
/// Together they bound the device's memory whatever the guest does ([`super::Footprint`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Mappings per domain (cloud-hypervisor: 2^20).
    pub max_mappings_per_domain: usize,
    /// Mappings of all domains together: what bounds the memory of the mappings, since a guest
    /// may create up to `max_domains` domains.
    pub max_mappings_total: usize,
    /// Guest tables bound with ATTACH_TABLE, all endpoints together (an Arm CD table per
    /// endpoint, a VT-d table per endpoint and PASID). A bind that replaces a table adds none.
    pub max_tables: usize,
    /// Live domains (cloud-hypervisor: 2^16).
    pub max_domains: usize,
    /// Endpoints attached at the same time.
    pub max_attached_endpoints: usize,
    /// Events waiting for an event-queue buffer; the oldest is dropped beyond this.
    pub max_pending_events: usize,
    /// Outstanding page-request groups per endpoint (advertised by PROBE as
    /// `PROBE_T_PAGE_REQUEST.max_groups`, capped at 65535); a DMA that would need one more
    /// fails at once with an unrecoverable fault.
    pub max_page_request_groups: u32,
    /// Outstanding page-request groups of all endpoints together (bounds the device's memory
    /// whatever the endpoint count).
    pub max_page_request_groups_total: usize,
    /// How long the device waits for a PAGE_RESP before it completes the group with FAILURE
    /// itself.
    pub page_request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_mappings_per_domain: 1 << 20,
            max_mappings_total: DEFAULT_MAX_MAPPINGS_TOTAL,
            max_tables: 1 << 16,
            max_domains: 1 << 16,
            max_attached_endpoints: 1 << 16,
            max_pending_events: 256,
            max_page_request_groups: DEFAULT_PAGE_REQUEST_GROUPS,
            max_page_request_groups_total: 4096,
            page_request_timeout: Duration::from_millis(1000),
        }
    }
}

/// A range of endpoint IDs that share properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// The endpoint IDs.
    pub ids: RangeInclusive<u32>,
    /// Reserved regions reported by PROBE, sorted by address, disjoint, at most one MSI.
    pub reserved: Vec<ReservedRegion>,
    /// PASID bits the endpoints support (0: no PASID). At most 20.
    pub pasid_bits: u8,
    /// Whether the endpoints can issue page requests.
    pub page_requests: bool,
    /// Guest table formats the endpoints accept (ATTACH_TABLE).
    pub table_formats: Vec<TableFormat>,
}

impl Default for EndpointConfig {
    /// Every endpoint ID, with the x86 MSI window on x86 hosts, no PASID.
    fn default() -> Self {
        EndpointConfig {
            ids: 0..=u32::MAX,
            reserved: if cfg!(any(target_arch = "x86", target_arch = "x86_64")) {
                vec![ReservedRegion::x86_msi()]
            } else {
                Vec::new()
            },
            pasid_bits: 0,
            page_requests: false,
            table_formats: Vec::new(),
        }
    }
}

/// Configuration of a [`super::Engine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Supported page sizes; the lowest set bit is the granule.
    pub page_size_mask: u64,
    /// Valid input addresses, inclusive.
    pub input_range: (u64, u64),
    /// Valid domain IDs, inclusive.
    pub domain_range: (u32, u32),
    /// Size of the PROBE properties area.
    pub probe_size: u32,
    /// Value of `bypass` at power-on and after a system reset.
    pub boot_bypass: bool,
    /// The endpoints behind this IOMMU; ranges must not overlap.
    pub endpoints: Vec<EndpointConfig>,
    /// Resource limits.
    pub limits: Limits,
    /// Offer `F_MMIO`.
    pub offer_mmio: bool,
    /// Offer the ATTACH_TABLE extension.
    pub offer_attach_table: bool,
    /// Offer the PAGE_REQUEST extension.
    pub offer_page_request: bool,
}

impl Default for EngineConfig {
    /// QEMU's defaults: 4 KiB granule, full 64-bit input and 32-bit domain ranges,
    /// 512-byte probe area, boot bypass on.
    fn default() -> Self {
        EngineConfig {
            page_size_mask: 0xffff_ffff_ffff_f000,
            input_range: (0, u64::MAX),
            domain_range: (0, u32::MAX),
            probe_size: 512,
            boot_bypass: true,
            endpoints: vec![EndpointConfig::default()],
            limits: Limits::default(),
            offer_mmio: false,
            offer_attach_table: false,
            offer_page_request: false,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `page_size_mask` is 0.
    #[error("page_size_mask must not be 0")]
    NoPageSize,
    /// `input_range` start > end.
    #[error("input_range start is above its last address")]
    InputRange,
    /// `domain_range` start > end.
    #[error("domain_range start is above its last ID")]
    DomainRange,
    /// An endpoint range is empty.
    #[error("endpoint range {} is empty", ids(.0))]
    EmptyEndpointRange(RangeInclusive<u32>),
    /// Two endpoint ranges share an ID.
    #[error("endpoint ranges {} and {} overlap", ids(.0), ids(.1))]
    OverlappingEndpoints(RangeInclusive<u32>, RangeInclusive<u32>),
    /// Reserved regions of an endpoint range are empty, unsorted or overlapping.
    #[error(
        "reserved regions of endpoints {} must be non-empty, sorted and disjoint",
        ids(.0)
    )]
    BadReservedRegions(RangeInclusive<u32>),
    /// More than one MSI region for an endpoint range.
    #[error("endpoints {} have more than one MSI region", ids(.0))]
    SeveralMsiRegions(RangeInclusive<u32>),
    /// `pasid_bits` above 20.
    #[error("pasid_bits {0} is above 20")]
    PasidBits(u8),
    /// The PROBE properties of an endpoint range need more than `probe_size` bytes.
    #[error("probe properties need {need} bytes but probe_size is {probe_size}")]
    ProbeSizeTooSmall {
        /// Bytes needed.
        need: usize,
        /// `probe_size`.
        probe_size: u32,
    },
    /// `limits.max_pending_events` is 0.
    #[error("limits.max_pending_events must be at least 1")]
    NoEventRoom,
}

/// An endpoint range as the command line writes it.
fn ids(r: &RangeInclusive<u32>) -> String {
    format!("{:#x}-{:#x}", r.start(), r.end())
}

/// Checks the parts of a configuration that do not depend on PROBE encoding.
pub(super) fn validate(cfg: &EngineConfig) -> Result<(), ConfigError> {
    if cfg.page_size_mask == 0 {
        return Err(ConfigError::NoPageSize);
    }
    if cfg.input_range.0 > cfg.input_range.1 {
        return Err(ConfigError::InputRange);
    }
    if cfg.domain_range.0 > cfg.domain_range.1 {
        return Err(ConfigError::DomainRange);
    }
    if cfg.limits.max_pending_events == 0 {
        return Err(ConfigError::NoEventRoom);
    }
    for ep in &cfg.endpoints {
        if ep.ids.is_empty() {
            return Err(ConfigError::EmptyEndpointRange(ep.ids.clone()));
        }
        if ep.pasid_bits > 20 {
            return Err(ConfigError::PasidBits(ep.pasid_bits));
        }
        let sorted = ep.reserved.iter().all(|r| r.start <= r.last)
            && ep.reserved.windows(2).all(|w| w[0].last < w[1].start);
        if !sorted {
            return Err(ConfigError::BadReservedRegions(ep.ids.clone()));
        }
        let msi = ep
            .reserved
            .iter()
            .filter(|r| r.kind == ResvMemSubtype::Msi)
            .count();
        if msi > 1 {
            return Err(ConfigError::SeveralMsiRegions(ep.ids.clone()));
        }
    }
    Ok(())
}

/// The endpoint ranges, sorted, for O(log n) lookup of an endpoint ID.
#[derive(Debug, Clone)]
pub(super) struct EndpointTable {
    eps: Vec<EndpointConfig>,
}

impl EndpointTable {
    /// Sorts the ranges and checks that they are disjoint (ranges are non-empty already).
    pub(super) fn new(mut eps: Vec<EndpointConfig>) -> Result<Self, ConfigError> {
        eps.sort_by_key(|e| *e.ids.start());
        for w in eps.windows(2) {
            if w[1].ids.start() <= w[0].ids.end() {
                return Err(ConfigError::OverlappingEndpoints(
                    w[0].ids.clone(),
                    w[1].ids.clone(),
                ));
            }
        }
        Ok(EndpointTable { eps })
    }

    /// The index and configuration of the range holding `endpoint`.
    pub(super) fn find(&self, endpoint: u32) -> Option<(usize, &EndpointConfig)> {
        let i = self.eps.partition_point(|e| *e.ids.end() < endpoint);
        self.eps
            .get(i)
            .filter(|e| e.ids.contains(&endpoint))
            .map(|e| (i, e))
    }

    /// The configuration at `index` (from [`EndpointTable::find`]).
    pub(super) fn get(&self, index: usize) -> Option<&EndpointConfig> {
        self.eps.get(index)
    }

    /// All ranges.
    pub(super) fn iter(&self) -> impl Iterator<Item = &EndpointConfig> {
        self.eps.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ids: RangeInclusive<u32>) -> EndpointConfig {
        EndpointConfig {
            ids,
            reserved: Vec::new(),
            ..EndpointConfig::default()
        }
    }

    #[test]
    fn validation() {
        assert_eq!(validate(&EngineConfig::default()), Ok(()));
        let bad = |f: &dyn Fn(&mut EngineConfig)| {
            let mut c = EngineConfig::default();
            f(&mut c);
            validate(&c).unwrap_err()
        };
        assert_eq!(bad(&|c| c.page_size_mask = 0), ConfigError::NoPageSize);
        assert_eq!(bad(&|c| c.input_range = (2, 1)), ConfigError::InputRange);
        assert_eq!(bad(&|c| c.domain_range = (2, 1)), ConfigError::DomainRange);
        assert_eq!(
            bad(&|c| c.limits.max_pending_events = 0),
            ConfigError::NoEventRoom
        );
        #[allow(clippy::reversed_empty_ranges)] // the point of the test
        let empty = 5..=4;
        assert_eq!(
            bad(&|c| c.endpoints = vec![ep(empty.clone())]),
            ConfigError::EmptyEndpointRange(empty.clone())
        );
        assert_eq!(
            bad(&|c| c.endpoints[0].pasid_bits = 21),
            ConfigError::PasidBits(21)
        );
        let r = |start, last, kind| ReservedRegion { start, last, kind };
        assert_eq!(
            bad(&|c| c.endpoints[0].reserved = vec![
                r(0x2000, 0x2fff, ResvMemSubtype::Reserved),
                r(0x1000, 0x1fff, ResvMemSubtype::Reserved)
            ]),
            ConfigError::BadReservedRegions(0..=u32::MAX)
        );
        assert_eq!(
            bad(&|c| c.endpoints[0].reserved = vec![
                r(0x1000, 0x2000, ResvMemSubtype::Reserved),
                r(0x2000, 0x2fff, ResvMemSubtype::Reserved)
            ]),
            ConfigError::BadReservedRegions(0..=u32::MAX)
        );
        assert_eq!(
            bad(&|c| c.endpoints[0].reserved = vec![r(0x2000, 0x1fff, ResvMemSubtype::Reserved)]),
            ConfigError::BadReservedRegions(0..=u32::MAX)
        );
        assert_eq!(
            bad(&|c| c.endpoints[0].reserved = vec![
                r(0x1000, 0x1fff, ResvMemSubtype::Msi),
                r(0x2000, 0x2fff, ResvMemSubtype::Msi)
            ]),
            ConfigError::SeveralMsiRegions(0..=u32::MAX)
        );
    }

    #[test]
    fn endpoint_lookup() {
        let t = EndpointTable::new(vec![ep(10..=19), ep(0..=3), ep(u32::MAX..=u32::MAX)]).unwrap();
        assert_eq!(t.find(0).map(|(i, _)| i), Some(0));
        assert_eq!(t.find(3).map(|(i, _)| i), Some(0));
        assert_eq!(t.find(4), None);
        assert_eq!(t.find(9), None);
        assert_eq!(t.find(15).map(|(i, _)| i), Some(1));
        assert_eq!(t.find(20), None);
        assert_eq!(t.find(u32::MAX).map(|(i, _)| i), Some(2));
        assert_eq!(
            EndpointTable::new(vec![ep(0..=10), ep(10..=12)]).unwrap_err(),
            ConfigError::OverlappingEndpoints(0..=10, 10..=12)
        );
    }
}
