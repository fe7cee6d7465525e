//! The typed result of a PROBE request.

use alloc::vec::Vec;

use virtio_iommu_spec::ext::{self, PageRequestCaps};
use virtio_iommu_spec::probe::{ResvMemSubtype, PROBE_T_MASK, PROBE_T_NONE, PROBE_T_RESV_MEM};
use virtio_iommu_spec::{ProbeProperties, Property};

use crate::error::Error;

/// The property types [`EndpointInfo`] decodes; others are skipped, as the specification asks.
const KNOWN_TYPES: [u16; 8] = [
    PROBE_T_RESV_MEM,
    ext::PROBE_T_PAGE_SIZE_MASK,
    ext::PROBE_T_INPUT_RANGE,
    ext::PROBE_T_OUTPUT_SIZE,
    ext::PROBE_T_PASID_SIZE,
    ext::PROBE_T_PAGE_TABLE_FMT,
    ext::PROBE_T_PASID_TABLE_FMT,
    ext::PROBE_T_PAGE_REQUEST,
];

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

    /// Decodes a properties area the way [`parse`](Self::parse) does, but refuses one that
    /// breaks the format instead of keeping what precedes the damage: a property running past
    /// the area, a known property too short for its type, a reserved region or input range
    /// whose last address is below its start, or a zero page-size mask. Unknown types and
    /// properties with reserved type bits are skipped, as the specification asks.
    ///
    /// # Errors
    /// [`Error::MalformedProbe`] with the offending property's offset.
    pub fn parse_checked(area: &[u8]) -> Result<Self, Error> {
        let mut offset = 0usize;
        // Each step moves past a 4-byte header, so the loop ends within `area.len() / 4` steps.
        while let Some(head) = area.get(offset..offset.saturating_add(4)) {
            let bad = Error::MalformedProbe {
                offset: u32::try_from(offset).unwrap_or(u32::MAX),
            };
            let raw = u16::from_le_bytes([head[0], head[1]]);
            if raw & PROBE_T_MASK == PROBE_T_NONE {
                break;
            }
            let len = usize::from(u16::from_le_bytes([head[2], head[3]]));
            let end = offset.saturating_add(4).saturating_add(len);
            let prop = area.get(offset..end).ok_or(bad)?;
            if KNOWN_TYPES.contains(&raw) && !well_formed(ProbeProperties::new(prop).next()) {
                return Err(bad);
            }
            offset = end;
        }
        Ok(Self::parse(area))
    }

    /// The MSI doorbell window, if the device reported one.
    #[must_use]
    pub fn msi_region(&self) -> Option<&ReservedRegion> {
        self.reserved_regions
            .iter()
            .find(|r| r.kind == ResvMemSubtype::Msi)
    }
}

/// Whether a decoded known property has values a device may report.
fn well_formed(p: Option<Property>) -> bool {
    match p {
        None | Some(Property::PageSizeMask(0)) => false,
        Some(Property::ResvMem { start, end, .. } | Property::InputRange { start, end }) => {
            start <= end
        }
        Some(_) => true,
    }
}
