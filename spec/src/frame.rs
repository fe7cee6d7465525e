//! Request framing shared by every request layout: the 4-byte head that opens each readable
//! part and the 4-byte tail that closes each writable part. Both [`crate::request`] and
//! [`crate::ext`] build their layouts on these, so this module depends on neither.

use crate::status::Status;
use crate::wire::wire;

wire! {
    /// `struct virtio_iommu_req_head`.
    #[derive(Default)]
    pub struct ReqHead: 4 {
        /// Request type.
        pub req_type: u8,
        /// Reserved: the driver zeroes it, the device ignores it.
        pub reserved: [u8; 3],
    }
}

wire! {
    /// `struct virtio_iommu_req_tail`: the last 4 bytes of every writable part.
    #[derive(Default)]
    pub struct ReqTail: 4 {
        /// [`Status`] byte.
        pub status: u8,
        /// Reserved: the device zeroes it, the driver ignores it.
        pub reserved: [u8; 3],
    }
}

impl ReqTail {
    /// A tail carrying `status`.
    #[must_use]
    pub fn new(status: Status) -> Self {
        ReqTail {
            status: status as u8,
            reserved: [0; 3],
        }
    }
}

/// Size of the request tail.
pub const TAIL_SIZE: usize = core::mem::size_of::<ReqTail>();
