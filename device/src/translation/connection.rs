//! The reading half of a client connection (service thread only): bytes in, whole messages
//! out, the framing rules of spec/TRANSLATION.md §1 checked before anything is decoded.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;

use virtio_iommu_spec::translation::{
    ClientMessage, Header, ProtocolError, HEADER_SIZE, MAX_PAYLOAD,
};

/// Bytes read per `read` call at most; a few messages' worth.
const READ_CHUNK: usize = 4 * (HEADER_SIZE + MAX_PAYLOAD);

/// What reading found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadState {
    /// More may come.
    Open,
    /// The client closed its end.
    Closed,
}

/// A connection's input.
#[derive(Debug)]
pub(super) struct Connection {
    reader: UnixStream,
    buf: Vec<u8>,
    /// The unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Whether HELLO was accepted.
    pub(super) hello_done: bool,
    /// TRANSLATEs waiting for a page response.
    pub(super) waiting: usize,
}

impl Connection {
    /// `reader` is non-blocking.
    pub(super) fn new(reader: UnixStream) -> Self {
        Connection {
            reader,
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            hello_done: false,
            waiting: 0,
        }
    }

    /// The socket, for epoll.
    pub(super) fn stream(&self) -> &UnixStream {
        &self.reader
    }

    /// Reads what the socket has (one chunk at most, so a fast client cannot starve others).
    pub(super) fn fill(&mut self) -> io::Result<ReadState> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buf.len() {
            // Move the partial message to the front (the buffer is allocated once).
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        if self.end == self.buf.len() {
            return Ok(ReadState::Open); // Unconsumed input waits (the client is throttled).
        }
        let r = loop {
            match self.reader.read(&mut self.buf[self.end..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r,
            }
        };
        match r {
            Ok(0) => Ok(ReadState::Closed),
            Ok(n) => {
                self.end += n;
                Ok(ReadState::Open)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(ReadState::Open),
            Err(e) => Err(e),
        }
    }

    /// The next whole message, if one is buffered; `Err` for a protocol error.
    pub(super) fn next_message(&mut self) -> Result<Option<ClientMessage<'_>>, ProtocolError> {
        let rest = &self.buf[self.start..self.end];
        let Some(head) = rest.get(..HEADER_SIZE) else {
            return Ok(None);
        };
        // The slice has exactly HEADER_SIZE bytes.
        let head: &[u8; HEADER_SIZE] = head.try_into().map_err(|_| ProtocolError::BadValue)?;
        let h: Header = ClientMessage::check_header(head)?;
        let Some(payload) = rest.get(HEADER_SIZE..HEADER_SIZE + h.size) else {
            return Ok(None);
        };
        self.start += HEADER_SIZE + h.size;
        ClientMessage::parse(h, payload).map(Some)
    }

    /// Whether unconsumed bytes are buffered.
    pub(super) fn has_input(&self) -> bool {
        self.end > self.start
    }
}
