//! Whole messages of each direction: header check, payload decode, encode with header.

use zerocopy::IntoBytes;

use super::error::ProtocolError;
use super::header::{Header, MessageType};
use super::hello::{Hello, HelloReply};
use super::invalidate::{InvalAck, Invalidate};
use super::translate::{Translate, TranslateReply};
use super::HEADER_SIZE;

/// A message a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientMessage<'a> {
    /// `HELLO`.
    Hello(Hello<'a>),
    /// `TRANSLATE`.
    Translate(Translate),
    /// `INVAL_ACK`.
    InvalAck(InvalAck),
}

/// A message the daemon sends.
// Without alloc a reply's ranges live inline; the enum is built and dropped per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonMessage {
    /// `HELLO_REPLY`.
    HelloReply(HelloReply),
    /// `TRANSLATE_REPLY`.
    TranslateReply(TranslateReply),
    /// `INVALIDATE`.
    Invalidate(Invalidate),
}

/// Writes header and payload; `None` when `out` is too small.
fn frame(
    out: &mut [u8],
    msg_type: MessageType,
    payload_len: usize,
    write: impl FnOnce(&mut [u8]) -> Option<usize>,
) -> Option<usize> {
    let total = HEADER_SIZE.checked_add(payload_len)?;
    let out = out.get_mut(..total)?;
    let (head, body) = out.split_at_mut(HEADER_SIZE);
    head.copy_from_slice(
        &Header {
            msg_type,
            size: payload_len,
        }
        .encode(),
    );
    write(body)?;
    Some(total)
}

fn copy(bytes: &[u8]) -> impl FnOnce(&mut [u8]) -> Option<usize> + '_ {
    move |body| {
        body.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(bytes.len())
    }
}

impl<'a> ClientMessage<'a> {
    /// Decodes a header as the daemon receives it (client types only).
    ///
    /// # Errors
    /// See [`Header::parse`].
    pub fn check_header(bytes: &[u8; HEADER_SIZE]) -> Result<Header, ProtocolError> {
        Header::parse(bytes, MessageType::from_client)
    }

    /// Decodes the payload of a header [`ClientMessage::check_header`] accepted.
    ///
    /// # Errors
    /// A [`ProtocolError`]; `BadSize` also when `payload` is not `header.size` bytes.
    pub fn parse(header: Header, payload: &'a [u8]) -> Result<Self, ProtocolError> {
        if payload.len() != header.size || !header.msg_type.from_client() {
            return Err(ProtocolError::BadSize {
                msg_type: header.msg_type.code(),
                size: u32::try_from(payload.len()).unwrap_or(u32::MAX),
            });
        }
        Ok(match header.msg_type {
            MessageType::Hello => ClientMessage::Hello(Hello::parse(payload)?),
            MessageType::Translate => ClientMessage::Translate(Translate::parse(payload)?),
            _ => ClientMessage::InvalAck(InvalAck::parse(payload)?),
        })
    }

    /// The message's type.
    #[must_use]
    pub const fn msg_type(&self) -> MessageType {
        match self {
            ClientMessage::Hello(_) => MessageType::Hello,
            ClientMessage::Translate(_) => MessageType::Translate,
            ClientMessage::InvalAck(_) => MessageType::InvalAck,
        }
    }

    /// Bytes of the whole message, header included.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        HEADER_SIZE
            + match self {
                ClientMessage::Hello(h) => h.payload_len(),
                ClientMessage::Translate(_) => Translate::SIZE,
                ClientMessage::InvalAck(_) => InvalAck::SIZE,
            }
    }

    /// Writes the whole message into `out`; returns its length, or `None` when `out` is
    /// shorter than [`ClientMessage::encoded_len`].
    pub fn encode_into(&self, out: &mut [u8]) -> Option<usize> {
        let payload = self.encoded_len() - HEADER_SIZE;
        match self {
            ClientMessage::Hello(h) => {
                frame(out, MessageType::Hello, payload, |b| h.write_payload(b))
            }
            ClientMessage::Translate(t) => frame(
                out,
                MessageType::Translate,
                payload,
                copy(t.to_wire().as_bytes()),
            ),
            ClientMessage::InvalAck(a) => frame(
                out,
                MessageType::InvalAck,
                payload,
                copy(a.to_wire().as_bytes()),
            ),
        }
    }
}

impl DaemonMessage {
    /// Decodes a header as a client receives it (daemon types only).
    ///
    /// # Errors
    /// See [`Header::parse`].
    pub fn check_header(bytes: &[u8; HEADER_SIZE]) -> Result<Header, ProtocolError> {
        Header::parse(bytes, |t| !t.from_client())
    }

    /// Decodes the payload of a header [`DaemonMessage::check_header`] accepted.
    ///
    /// # Errors
    /// A [`ProtocolError`]; `BadSize` also when `payload` is not `header.size` bytes.
    pub fn parse(header: Header, payload: &[u8]) -> Result<Self, ProtocolError> {
        if payload.len() != header.size || header.msg_type.from_client() {
            return Err(ProtocolError::BadSize {
                msg_type: header.msg_type.code(),
                size: u32::try_from(payload.len()).unwrap_or(u32::MAX),
            });
        }
        Ok(match header.msg_type {
            MessageType::HelloReply => DaemonMessage::HelloReply(HelloReply::parse(payload)?),
            MessageType::TranslateReply => {
                DaemonMessage::TranslateReply(TranslateReply::parse(payload)?)
            }
            _ => DaemonMessage::Invalidate(Invalidate::parse(payload)?),
        })
    }

    /// The message's type.
    #[must_use]
    pub const fn msg_type(&self) -> MessageType {
        match self {
            DaemonMessage::HelloReply(_) => MessageType::HelloReply,
            DaemonMessage::TranslateReply(_) => MessageType::TranslateReply,
            DaemonMessage::Invalidate(_) => MessageType::Invalidate,
        }
    }

    /// Bytes of the whole message, header included.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        HEADER_SIZE
            + match self {
                DaemonMessage::HelloReply(_) => HelloReply::SIZE,
                DaemonMessage::TranslateReply(r) => r.payload_len(),
                DaemonMessage::Invalidate(_) => Invalidate::SIZE,
            }
    }

    /// Writes the whole message into `out`; returns its length, or `None` when `out` is
    /// shorter than [`DaemonMessage::encoded_len`].
    pub fn encode_into(&self, out: &mut [u8]) -> Option<usize> {
        let payload = self.encoded_len() - HEADER_SIZE;
        match self {
            DaemonMessage::HelloReply(r) => frame(
                out,
                MessageType::HelloReply,
                payload,
                copy(r.to_wire().as_bytes()),
            ),
            DaemonMessage::TranslateReply(r) => {
                frame(out, MessageType::TranslateReply, payload, |b| {
                    r.write_payload(b)
                })
            }
            DaemonMessage::Invalidate(i) => frame(
                out,
                MessageType::Invalidate,
                payload,
                copy(i.to_wire().as_bytes()),
            ),
        }
    }
}
