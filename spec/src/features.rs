//! Device feature bits (device-specific range; transport bits live in the virtio transport).

use bitflags::bitflags;

use crate::ext;

bitflags! {
    /// virtio-iommu device features.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Features: u64 {
        /// `input_range` is valid; requests outside it are illegal.
        const INPUT_RANGE = 1 << 0;
        /// `domain_range` is valid.
        const DOMAIN_RANGE = 1 << 1;
        /// MAP and UNMAP requests are available.
        const MAP_UNMAP = 1 << 2;
        /// Legacy: unattached endpoints bypass. Superseded by `BYPASS_CONFIG`; never offered here.
        const BYPASS = 1 << 3;
        /// PROBE is available and `probe_size` is valid.
        const PROBE = 1 << 4;
        /// MAP may carry `MapFlags::MMIO`.
        const MMIO = 1 << 5;
        /// The `bypass` config byte and `AttachFlags::BYPASS` are available.
        const BYPASS_CONFIG = 1 << 6;
        /// Extension: ATTACH_TABLE and INVALIDATE (guest-owned PASID / stage-1 tables).
        const ATTACH_TABLE = 1 << ext::F_ATTACH_TABLE;
        /// Extension: page requests, extended (48-byte) events and PAGE_RESP.
        const PAGE_REQUEST = 1 << ext::F_PAGE_REQUEST;
    }
}

/// VIRTIO_F_VERSION_1, the transport feature every virtio-iommu driver requires.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_F_RING_INDIRECT_DESC.
pub const VIRTIO_F_RING_INDIRECT_DESC: u64 = 1 << 28;
/// VIRTIO_F_RING_EVENT_IDX.
pub const VIRTIO_F_RING_EVENT_IDX: u64 = 1 << 29;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_numbers() {
        assert_eq!(Features::INPUT_RANGE.bits(), 1);
        assert_eq!(Features::DOMAIN_RANGE.bits(), 2);
        assert_eq!(Features::MAP_UNMAP.bits(), 4);
        assert_eq!(Features::BYPASS.bits(), 8);
        assert_eq!(Features::PROBE.bits(), 0x10);
        assert_eq!(Features::MMIO.bits(), 0x20);
        assert_eq!(Features::BYPASS_CONFIG.bits(), 0x40);
        assert_eq!(Features::ATTACH_TABLE.bits(), 0x100);
        assert_eq!(Features::PAGE_REQUEST.bits(), 0x400);
        // Bits 7 and 9 stay unused (claimed by conflicting drafts).
        assert!(!Features::all().contains(Features::from_bits_retain(1 << 7)));
        assert!(!Features::all().contains(Features::from_bits_retain(1 << 9)));
    }
}
