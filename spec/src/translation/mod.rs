//! The translation service's wire protocol (`spec/TRANSLATION.md`): a device backend (the
//! client) asks the daemon for translations over a UNIX stream socket and acknowledges the
//! daemon's invalidations.
//!
//! Every message is a [`Header`] followed by its payload. A receiver reads the header, checks it
//! with [`ClientMessage::check_header`] (daemon side) or [`DaemonMessage::check_header`] (client
//! side), reads `size` payload bytes and decodes them with the matching `parse`. Any
//! [`ProtocolError`] closes the connection (§1). Encoding writes into a caller's buffer of at
//! least `encoded_len()` bytes; nothing here allocates.

mod error;
mod header;
mod hello;
mod invalidate;
mod layout;
mod message;
mod translate;

pub use error::ProtocolError;
pub use header::{Header, MessageType};
pub use hello::{EndpointRange, Hello, HelloReply, HelloReplyFlags, HelloStatus};
pub use invalidate::{Endpoints, InvalAck, Invalidate, InvalidateFlags, Pasids};
pub use layout::{
    WireEndpointRange, WireHeader, WireHello, WireHelloReply, WireInvalAck, WireInvalidate,
    WireRange, WireTranslate, WireTranslateReply,
};
pub use message::{ClientMessage, DaemonMessage};
pub use translate::{
    Translate, TranslateFault, TranslateFlags, TranslateReply, TranslateStatus, TranslatedRange,
    TranslatedRanges,
};

/// The protocol version of this document.
pub const VERSION: u32 = 1;
/// Size of the message header.
pub const HEADER_SIZE: usize = 8;
/// Largest payload a message may carry (§1).
pub const MAX_PAYLOAD: usize = 4096;
/// Most endpoint ranges a `HELLO` may carry (§2.1).
pub const MAX_HELLO_RANGES: usize = 64;
/// Most ranges a `TRANSLATE_REPLY` carries (§2.4).
pub const MAX_REPLY_RANGES: usize = 8;
/// Most `TRANSLATE`s a client may have outstanding (§2.3).
pub const MAX_OUTSTANDING: usize = 64;
/// Unsent daemon messages at which a client is cut off (§5).
pub const MAX_UNSENT: usize = 1024;
/// Default limit of connected clients (§1).
pub const DEFAULT_MAX_CLIENTS: usize = 16;
/// Default bound on an `INVALIDATE`'s acknowledgement, in milliseconds (§5).
pub const DEFAULT_ACK_TIMEOUT_MS: u64 = 1000;
