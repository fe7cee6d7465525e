//! The client's errors.

use std::io;

use virtio_iommu_spec::event::{FaultFlags, FaultReason};
use virtio_iommu_spec::translation::{HelloStatus, ProtocolError};

/// Why a connection or a translation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket cannot be reached (the daemon is not running or not listening yet).
    #[error("cannot connect to the translation socket: {0}")]
    Connect(#[source] io::Error),
    /// Reading or writing the socket failed.
    #[error("translation socket I/O: {0}")]
    Io(#[source] io::Error),
    /// The daemon sent something the protocol does not allow; the connection is closed.
    #[error("protocol error from the daemon: {0}")]
    Protocol(ProtocolError),
    /// The daemon sent a well-formed message that breaks the protocol's rules (a reply to a
    /// request never made, ranges that do not contain the address asked for).
    #[error("the daemon broke the protocol: {0}")]
    BadReply(&'static str),
    /// The daemon refused the `HELLO`.
    #[error("the daemon refused HELLO: {0:?}")]
    Refused(HelloStatus),
    /// The daemon speaks another protocol version.
    #[error("the daemon speaks protocol version {0}, not 1")]
    Version(u32),
    /// No answer within the configured bound.
    #[error("no answer from the daemon within {0:?}")]
    Timeout(std::time::Duration),
    /// The connection ended while the request was waiting (everything cached was dropped).
    #[error("the connection to the daemon was lost")]
    Disconnected,
    /// The access is not permitted; the daemon reported the fault to the guest (unless the
    /// request was a probe).
    #[error("{reason:?} fault at {address:#x} ({flags:?})")]
    Fault {
        /// Why.
        reason: FaultReason,
        /// The access, as fault-record flags.
        flags: FaultFlags,
        /// The faulting IOVA.
        address: u64,
    },
    /// The daemon called the request malformed.
    #[error("the daemon answered INVAL")]
    Invalid,
    /// The daemon does not translate this endpoint or this kind of access.
    #[error("the daemon does not translate this access (UNSUPP)")]
    Unsupported,
    /// The range is empty or leaves the 64-bit address space.
    #[error("access of {len} bytes at {iova:#x} is not a valid range")]
    BadRange {
        /// First address.
        iova: u64,
        /// Length.
        len: u64,
    },
    /// The access needs more round trips than the configured bound (a very fragmented range).
    #[error("the access needs more than {0} translations")]
    TooFragmented(usize),
}
