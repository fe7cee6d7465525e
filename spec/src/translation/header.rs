//! The message header and the message types of §2.

use zerocopy::{FromBytes, IntoBytes};

use super::error::ProtocolError;
use super::layout::WireHeader;
use super::{HEADER_SIZE, MAX_PAYLOAD};

/// Message types (§2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum MessageType {
    /// Client → daemon, first message.
    Hello = 0x01,
    /// Client → daemon.
    Translate = 0x02,
    /// Client → daemon.
    InvalAck = 0x03,
    /// Daemon → client.
    HelloReply = 0x81,
    /// Daemon → client.
    TranslateReply = 0x82,
    /// Daemon → client.
    Invalidate = 0x83,
}

impl MessageType {
    /// All message types, in numeric order.
    pub const ALL: [MessageType; 6] = [
        MessageType::Hello,
        MessageType::Translate,
        MessageType::InvalAck,
        MessageType::HelloReply,
        MessageType::TranslateReply,
        MessageType::Invalidate,
    ];

    /// The type's code.
    #[must_use]
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// The type for `code`, if defined.
    #[must_use]
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.code() == code)
    }

    /// Whether clients send this type (else the daemon does).
    #[must_use]
    pub const fn from_client(self) -> bool {
        (self as u16) < 0x80
    }

    /// The name used in `spec/TRANSLATION.md`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            MessageType::Hello => "HELLO",
            MessageType::Translate => "TRANSLATE",
            MessageType::InvalAck => "INVAL_ACK",
            MessageType::HelloReply => "HELLO_REPLY",
            MessageType::TranslateReply => "TRANSLATE_REPLY",
            MessageType::Invalidate => "INVALIDATE",
        }
    }

    /// `(fixed, unit, max_units)`: a valid payload is `fixed + unit * n` bytes with
    /// `n <= max_units`; fixed-size types have `unit == 0`. The count itself is in the fixed
    /// part and checked against the size when the payload is decoded.
    const fn size_rule(self) -> (usize, usize, usize) {
        match self {
            // HELLO's range count is checked by HELLO_REPLY's status, not framing: any count
            // that fits in a payload frames correctly.
            MessageType::Hello => (16, 8, (MAX_PAYLOAD - 16) / 8),
            MessageType::Translate | MessageType::Invalidate => (40, 0, 0),
            MessageType::InvalAck => (8, 0, 0),
            MessageType::HelloReply => (24, 0, 0),
            MessageType::TranslateReply => (32, 32, super::MAX_REPLY_RANGES),
        }
    }

    /// Whether `size` is a valid payload size for this type (before its count is read).
    #[must_use]
    pub const fn size_fits(self, size: usize) -> bool {
        let (fixed, unit, max) = self.size_rule();
        if size < fixed || size > MAX_PAYLOAD {
            return false;
        }
        if unit == 0 {
            return size == fixed;
        }
        (size - fixed) % unit == 0 && (size - fixed) / unit <= max
    }
}

impl core::fmt::Display for MessageType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// A decoded header: a known type and a size that fits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The message type.
    pub msg_type: MessageType,
    /// Payload bytes that follow (at most [`MAX_PAYLOAD`]).
    pub size: usize,
}

impl Header {
    /// Decodes a header, accepting only the types `accept` allows (the receiver's direction).
    ///
    /// # Errors
    /// `UnknownType` for a type the receiver does not accept, `BadSize` for a size that does
    /// not fit the type.
    pub fn parse(
        bytes: &[u8; HEADER_SIZE],
        accept: impl Fn(MessageType) -> bool,
    ) -> Result<Header, ProtocolError> {
        let w = WireHeader::read_from_bytes(bytes).map_err(|_| ProtocolError::BadValue)?;
        let code = w.msg_type.get();
        let msg_type = MessageType::from_code(code)
            .filter(|t| accept(*t))
            .ok_or(ProtocolError::UnknownType(code))?;
        let raw = w.size.get();
        let bad = ProtocolError::BadSize {
            msg_type: code,
            size: raw,
        };
        let size = usize::try_from(raw).map_err(|_| bad)?;
        if !msg_type.size_fits(size) {
            return Err(bad);
        }
        Ok(Header { msg_type, size })
    }

    /// Encodes a header.
    #[must_use]
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        let w = WireHeader {
            msg_type: self.msg_type.code().into(),
            reserved: 0.into(),
            // A size over u32 cannot fit any type: encode it as one that fails to parse.
            size: u32::try_from(self.size).unwrap_or(u32::MAX).into(),
        };
        out.copy_from_slice(w.as_bytes());
        out
    }
}
