//! The byte layouts of §2, one per table.

use zerocopy::little_endian::{U16, U32, U64};

use crate::wire::wire;

wire! {
    /// Every message's header (8 bytes).
    #[derive(Default)]
    pub struct WireHeader: 8 {
        /// [`super::MessageType`] code.
        pub msg_type: U16,
        /// Reserved, zero.
        pub reserved: U16,
        /// Payload bytes that follow.
        pub size: U32,
    }
}

wire! {
    /// `HELLO`'s fixed part (16 bytes); `nr_ranges` [`WireEndpointRange`]s follow.
    #[derive(Default)]
    pub struct WireHello: 16 {
        /// Protocol version.
        pub version: U32,
        /// Flags (none defined).
        pub flags: U32,
        /// Number of ranges that follow.
        pub nr_ranges: U32,
        /// Reserved, zero.
        pub reserved: U32,
    }
}

wire! {
    /// An inclusive range of endpoint IDs (8 bytes).
    #[derive(Default)]
    pub struct WireEndpointRange: 8 {
        /// First endpoint ID.
        pub first: U32,
        /// Last endpoint ID, inclusive.
        pub last: U32,
    }
}

wire! {
    /// `HELLO_REPLY` (24 bytes).
    #[derive(Default)]
    pub struct WireHelloReply: 24 {
        /// Protocol version.
        pub version: U32,
        /// [`super::HelloStatus`] code.
        pub status: U32,
        /// The device's page-size mask.
        pub page_size_mask: U64,
        /// [`super::HelloReplyFlags`].
        pub flags: U32,
        /// Reserved, zero.
        pub reserved: U32,
    }
}

wire! {
    /// `TRANSLATE` (40 bytes).
    #[derive(Default)]
    pub struct WireTranslate: 40 {
        /// Client's tag, echoed.
        pub tag: U64,
        /// First address of the access.
        pub iova: U64,
        /// Bytes of the access.
        pub len: U64,
        /// Endpoint ID.
        pub endpoint: U32,
        /// PASID (with `flags.PASID`).
        pub pasid: U32,
        /// [`super::TranslateFlags`].
        pub flags: U32,
        /// Reserved, zero.
        pub reserved: U32,
    }
}

wire! {
    /// `TRANSLATE_REPLY`'s fixed part (32 bytes); `nr_ranges` [`WireRange`]s follow.
    #[derive(Default)]
    pub struct WireTranslateReply: 32 {
        /// The request's tag.
        pub tag: U64,
        /// [`super::TranslateStatus`] code.
        pub status: U32,
        /// Number of ranges that follow.
        pub nr_ranges: U32,
        /// With `FAULT`: the fault reason.
        pub fault_reason: U32,
        /// With `FAULT`: the fault-record flags.
        pub fault_flags: U32,
        /// With `FAULT`: the faulting IOVA.
        pub fault_address: U64,
    }
}

wire! {
    /// A translated range (32 bytes).
    #[derive(Default)]
    pub struct WireRange: 32 {
        /// First IOVA.
        pub iova: U64,
        /// Last IOVA, inclusive.
        pub last: U64,
        /// Guest-physical address of `iova`.
        pub paddr: U64,
        /// Permissions, as a MAP's flags.
        pub perm: U32,
        /// Reserved, zero.
        pub reserved: U32,
    }
}

wire! {
    /// `INVALIDATE` (40 bytes).
    #[derive(Default)]
    pub struct WireInvalidate: 40 {
        /// Sequence number on the connection.
        pub seq: U64,
        /// First IOVA affected.
        pub first: U64,
        /// Last IOVA affected, inclusive.
        pub last: U64,
        /// Endpoint (unless `ALL_ENDPOINTS`).
        pub endpoint: U32,
        /// PASID (with `PASID`).
        pub pasid: U32,
        /// [`super::InvalidateFlags`].
        pub flags: U32,
        /// Reserved, zero.
        pub reserved: U32,
    }
}

wire! {
    /// `INVAL_ACK` (8 bytes).
    #[derive(Default)]
    pub struct WireInvalAck: 8 {
        /// Highest sequence number handled.
        pub seq: U64,
    }
}
