//! The typed result of a PROBE request.

use alloc::vec::Vec;

use virtio_iommu_spec::ext::PageRequestCaps;
use virtio_iommu_spec::probe::ResvMemSubtype;
use virtio_iommu_spec::{ProbeProperties, Property};

/// A region of the endpoint's input space that must not be mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservedRegion {
    /// What the region is; unknown subtypes read as `Reserved`, as the specification asks.
    pub kind: ResvMemSubtype,
    /// The subtype byte as the device wrote it.
    pub raw_subtype: u8,
    /// First address.
    pub start: u64,
    /// Last address, inclusive.
    pub last: u64,
}

/// The page-request capability of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequestInfo {
    /// Capabilities.
    pub caps: PageRequestCaps,
    /// Maximum number of outstanding page-request groups.
    pub max_groups: u32,
}

/// Everything a PROBE reply said about an endpoint. Unknown properties are skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Reserved regions (RESERVED and MSI), in the order the device listed them.
    pub reserved_regions: Vec<ReservedRegion>,
    /// Per-endpoint page-size mask (extension), overriding the global one.
    pub page_size_mask: Option<u64>,
    /// Per-endpoint input range `(start, end)` inclusive (extension).
    pub input_range: Option<(u64, u64)>,
    /// Output address size in bits (extension).
    pub output_bits: Option<u8>,
    /// Number of PASID bits the endpoint supports (extension).
    pub pasid_bits: Option<u8>,
    /// Supported page-table format codes (extension), raw.
    pub page_table_formats: Vec<u16>,
    /// Supported PASID-table format codes (extension), raw.
    pub pasid_table_formats: Vec<u16>,
    /// Page-request capability (extension).
    pub page_request: Option<PageRequestInfo>,
}

impl EndpointInfo {
    /// Decodes a properties area. Single-valued properties keep their first occurrence.
    #[must_use]
    pub fn parse(area: &[u8]) -> Self {
        let mut info = EndpointInfo::default();
        // Every property takes at least 4 bytes, so `area.len() / 4` bounds the list lengths.
        for p in ProbeProperties::new(area) {
            match p {
                Property::ResvMem {
                    subtype,
                    start,
                    end,
                } => info.reserved_regions.push(ReservedRegion {
                    kind: p.resv_kind().unwrap_or(ResvMemSubtype::Reserved),
                    raw_subtype: subtype,
                    start,
                    last: end,
                }),
                Property::PageSizeMask(m) => {
                    info.page_size_mask.get_or_insert(m);
                }
                Property::InputRange { start, end } => {
                    info.input_range.get_or_insert((start, end));
                }
                Property::OutputSize(b) => {
                    info.output_bits.get_or_insert(b);
                }
                Property::PasidSize(b) => {
                    info.pasid_bits.get_or_insert(b);
                }
                Property::PageTableFormat(f) => info.page_table_formats.push(f),
                Property::PasidTableFormat(f) => info.pasid_table_formats.push(f),
                Property::PageRequest { caps, max_groups } => {
                    info.page_request
                        .get_or_insert(PageRequestInfo { caps, max_groups });
                }
            }
        }
        info
    }

    /// The MSI doorbell window, if the device reported one.
    #[must_use]
    pub fn msi_region(&self) -> Option<&ReservedRegion> {
        self.reserved_regions
            .iter()
            .find(|r| r.kind == ResvMemSubtype::Msi)
    }
}
