//! One connected client as both threads see it: what it serves, what waits to be written to
//! it, and which INVALIDATEs it has not acknowledged yet.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use virtio_iommu_spec::translation::{
    DaemonMessage, EndpointRange, Invalidate, HEADER_SIZE, MAX_REPLY_RANGES, MAX_UNSENT,
};

use super::scope::Scope;

/// The largest daemon message: TRANSLATE_REPLY with 8 ranges.
const MAX_MESSAGE: usize = HEADER_SIZE + 32 + 32 * MAX_REPLY_RANGES;

/// The client stopped reading: [`MAX_UNSENT`] messages wait for it (spec/TRANSLATION.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{MAX_UNSENT} messages unsent")]
pub struct Backlog;

/// A client connection's shared state.
#[derive(Debug)]
pub(super) struct Peer {
    writer: UnixStream,
    /// What HELLO named; empty until a HELLO is accepted (nothing is sent before).
    ranges: Vec<EndpointRange>,
    out: VecDeque<Vec<u8>>,
    /// Bytes of `out.front()` already written.
    written: usize,
    last_seq: u64,
    /// Sent, not acknowledged: sequence number and deadline, oldest first.
    unacked: VecDeque<(u64, Instant)>,
    cut: bool,
}

impl Peer {
    /// A new connection; `writer` is non-blocking.
    pub(super) fn new(writer: UnixStream) -> Self {
        Peer {
            writer,
            ranges: Vec::new(),
            out: VecDeque::new(),
            written: 0,
            last_seq: 0,
            unacked: VecDeque::new(),
            cut: false,
        }
    }

    /// The endpoints of the accepted HELLO.
    pub(super) fn ranges(&self) -> &[EndpointRange] {
        &self.ranges
    }

    /// Accepts the HELLO's ranges.
    pub(super) fn set_ranges(&mut self, ranges: Vec<EndpointRange>) {
        self.ranges = ranges;
    }

    /// Whether the client serves `endpoint`.
    pub(super) fn serves(&self, endpoint: u32) -> bool {
        self.ranges.iter().any(|r| r.contains(endpoint))
    }

    /// Writes a message, queueing what the socket does not take.
    pub(super) fn send(&mut self, msg: &DaemonMessage) -> Result<(), Backlog> {
        if self.cut {
            return Ok(());
        }
        if self.out.len() >= MAX_UNSENT {
            return Err(Backlog);
        }
        let mut buf = [0u8; MAX_MESSAGE];
        // Every daemon message fits MAX_MESSAGE.
        let len = msg.encode_into(&mut buf).unwrap_or(0);
        let bytes = &buf[..len];
        let mut done = 0;
        if self.out.is_empty() {
            // The common case: straight to the socket, nothing queued.
            while done < len {
                match self.writer.write(&bytes[done..]) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // A dead socket shows on the service thread's epoll.
                    Err(_) => break,
                }
            }
        }
        if done < len {
            self.out.push_back(bytes[done..].to_vec());
        }
        Ok(())
    }

    /// Sends an INVALIDATE; returns its sequence number.
    pub(super) fn send_invalidate(
        &mut self,
        scope: &Scope,
        deadline: Instant,
    ) -> Result<u64, Backlog> {
        let seq = self.last_seq + 1;
        self.send(&DaemonMessage::Invalidate(Invalidate {
            seq,
            first: scope.first,
            last: scope.last,
            endpoints: scope.endpoints,
            pasids: scope.pasids,
        }))?;
        self.last_seq = seq;
        self.unacked.push_back((seq, deadline));
        Ok(seq)
    }

    /// Writes queued bytes until the socket would block.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        while let Some(front) = self.out.front() {
            match self.writer.write(&front[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.written += n;
                    if self.written == front.len() {
                        self.out.pop_front();
                        self.written = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Whether bytes wait for the socket.
    pub(super) fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// INVAL_ACK: everything up to `seq` (at most the last sent) is acknowledged. Returns the
    /// sequence number now acknowledged.
    pub(super) fn ack(&mut self, seq: u64) -> u64 {
        let seq = seq.min(self.last_seq);
        while self.unacked.front().is_some_and(|(s, _)| *s <= seq) {
            self.unacked.pop_front();
        }
        seq
    }

    /// When the oldest unacknowledged INVALIDATE's time runs out.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.unacked.front().map(|(_, d)| *d)
    }

    /// Cuts the client off: nothing more is sent, the socket is shut down (the service thread
    /// then closes it).
    pub(super) fn cut(&mut self) {
        self.cut = true;
        self.out.clear();
        self.unacked.clear();
        let _ = self.writer.shutdown(Shutdown::Both);
    }

    /// Whether the client was cut off.
    pub(super) fn is_cut(&self) -> bool {
        self.cut
    }
}
