//! The numbers of the device-state stream (PROTOCOL.md §12): magic, version, section IDs and
//! record sizes.

/// First eight bytes of every stream.
pub const MAGIC: [u8; 8] = *b"VIOMMUDS";
/// The version this device writes and reads.
pub const VERSION: u32 = 1;
/// The longest stream a device accepts (1 GiB: about 38 million mappings).
pub const MAX_STATE_BYTES: usize = 1 << 30;

/// Magic, version, flags, length.
pub(super) const HEADER_LEN: usize = 24;
/// Section ID, reserved, payload length.
pub(super) const SECTION_HEADER_LEN: u64 = 16;
/// The CRC-32 at the end.
pub(super) const CHECKSUM_LEN: usize = 4;

/// Section IDs, in stream order, with their names for error messages.
pub(super) const SECTIONS: [(u32, &str); 6] = [
    (DEVICE, "DEVICE"),
    (COUNTERS, "COUNTERS"),
    (DOMAINS, "DOMAINS"),
    (TABLES, "TABLES"),
    (PAGE_REQUESTS, "PAGE_REQUESTS"),
    (EVENTS, "EVENTS"),
];
pub(super) const DEVICE: u32 = 1;
pub(super) const COUNTERS: u32 = 2;
pub(super) const DOMAINS: u32 = 3;
pub(super) const TABLES: u32 = 4;
pub(super) const PAGE_REQUESTS: u32 = 5;
pub(super) const EVENTS: u32 = 6;

/// The fixed part of DEVICE, before the endpoint ranges.
pub(super) const DEVICE_FIXED_LEN: u64 = 120;
/// The fixed part of an endpoint range: IDs, PASID bits, page requests, format and region
/// counts.
pub(super) const RANGE_FIXED_LEN: u64 = 16;
/// A table format code.
pub(super) const FORMAT_LEN: u64 = 2;
/// A reserved region: start, last, kind, 7 reserved bytes.
pub(super) const REGION_LEN: u64 = 24;
/// Counters: 10 per request type, unknown types, 4 event and 6 page-request counters.
pub(super) const COUNTER_COUNT: u32 = 8 * 10 + 1 + 4 + 6;
/// A domain's fixed part: ID, flags, endpoint count, reserved, mapping count.
pub(super) const DOMAIN_FIXED_LEN: u64 = 24;
/// An endpoint ID.
pub(super) const ENDPOINT_LEN: u64 = 4;
/// A mapping: virt_start, virt_last, phys_start, flags.
pub(super) const MAPPING_LEN: u64 = 28;
/// A bound table: the readable part of its ATTACH_TABLE.
pub(super) const TABLE_LEN: u64 = 76;
/// The fixed part of PAGE_REQUESTS: next ID, reserved, two counts, reserved.
pub(super) const PRQ_FIXED_LEN: u64 = 16;
/// An outstanding group: endpoint, group ID, flags, PASID, reserved, time left.
pub(super) const GROUP_LEN: u64 = 24;
/// An event: its 48-byte extended record.
pub(super) const EVENT_LEN: u64 = 48;

/// `SavedGroup` flags: the PASID is valid.
pub(super) const GROUP_PASID: u16 = 1;
/// Domain flags: a bypass domain.
pub(super) const DOMAIN_BYPASS: u32 = 1;
