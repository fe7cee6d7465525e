//! Why a message could not be read: every case is a protocol error that closes the connection.

/// A protocol error (§1 of `spec/TRANSLATION.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// The message type is not one the receiver accepts.
    UnknownType(u16),
    /// `size` is not what the message type (and its fixed part) implies, or exceeds 4096.
    BadSize {
        /// The message type.
        msg_type: u16,
        /// The header's `size`.
        size: u32,
    },
    /// A field holds a value the protocol does not define (a status, a flag combination, a
    /// range count that contradicts the status).
    BadValue,
}

impl core::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ProtocolError::UnknownType(t) => write!(f, "unknown message type {t:#x}"),
            ProtocolError::BadSize { msg_type, size } => {
                write!(f, "size {size} does not fit message type {msg_type:#x}")
            }
            ProtocolError::BadValue => f.write_str("field value outside its defined set"),
        }
    }
}
