//! virtio-blk's request header, types, statuses, feature bits and config space (virtio 1.2
//! §5.2), as far as this device implements them.

use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// virtio device ID of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;

/// `VIRTIO_BLK_T_IN`: read sectors into the device-writable buffers.
pub const T_IN: u32 = 0;
/// `VIRTIO_BLK_T_OUT`: write the device-readable buffers to sectors.
pub const T_OUT: u32 = 1;
/// `VIRTIO_BLK_T_FLUSH`.
pub const T_FLUSH: u32 = 4;
/// `VIRTIO_BLK_T_GET_ID`: the device's ID string, up to 20 bytes.
pub const T_GET_ID: u32 = 8;

/// `VIRTIO_BLK_S_OK`.
pub const S_OK: u8 = 0;
/// `VIRTIO_BLK_S_IOERR`: the request failed (bad range, bad buffers, a faulting DMA).
pub const S_IOERR: u8 = 1;
/// `VIRTIO_BLK_S_UNSUPP`: unknown request type.
pub const S_UNSUPP: u8 = 2;

/// `VIRTIO_BLK_F_RO`.
pub const F_RO: u64 = 1 << 5;
/// `VIRTIO_BLK_F_FLUSH`.
pub const F_FLUSH: u64 = 1 << 9;
/// `VIRTIO_F_RING_INDIRECT_DESC`.
pub const F_RING_INDIRECT_DESC: u64 = 1 << 28;
/// `VIRTIO_F_RING_EVENT_IDX`.
pub const F_RING_EVENT_IDX: u64 = 1 << 29;
/// `VIRTIO_F_VERSION_1`.
pub const F_VERSION_1: u64 = 1 << 32;
/// `VIRTIO_F_ACCESS_PLATFORM`: the device's memory accesses go through the platform's IOMMU.
pub const F_ACCESS_PLATFORM: u64 = 1 << 33;

/// The ID string `GET_ID` answers.
pub const DEVICE_ID: &[u8] = b"vublk-confined";

/// The 16-byte request header (`struct virtio_blk_req`'s head).
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RequestHeader {
    /// `T_IN`, `T_OUT`, ...
    pub type_: U32,
    /// `ioprio` in newer specs; ignored.
    pub reserved: U32,
    /// First sector of the transfer.
    pub sector: U64,
}

/// The config space this device fills: `capacity` only (the fields after it stay zero; their
/// features are not offered).
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BlkConfig {
    /// Size in 512-byte sectors.
    pub capacity: U64,
    /// `size_max`, `seg_max`, `geometry`, `blk_size` (features not offered): zero.
    pub unused: [U32; 4],
}

/// Bytes of [`RequestHeader`].
pub const HEADER_LEN: usize = size_of::<RequestHeader>();

/// A request type's name for the per-request debug line.
#[must_use]
pub fn type_name(t: u32) -> &'static str {
    match t {
        T_IN => "IN",
        T_OUT => "OUT",
        T_FLUSH => "FLUSH",
        T_GET_ID => "GET_ID",
        _ => "unknown",
    }
}

/// A status's name for the per-request debug line.
#[must_use]
pub fn status_name(s: u8) -> &'static str {
    match s {
        S_OK => "OK",
        S_IOERR => "IOERR",
        S_UNSUPP => "UNSUPP",
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_config_have_the_spec_layout() {
        let h = RequestHeader {
            type_: T_OUT.into(),
            reserved: 0.into(),
            sector: 0x0102_0304_0506_0708.into(),
        };
        assert_eq!(
            h.as_bytes(),
            [1, 0, 0, 0, 0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1]
        );
        assert_eq!(size_of::<BlkConfig>(), 24);
    }
}
