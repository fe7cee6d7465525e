//! One connection to the daemon: the `HELLO` exchange, then framed messages each way. The
//! reading half is behind a lock: the reader thread holds it to read and handle each message,
//! and a thread waiting for its reply may take it for a moment to consume replies at the head
//! (`Inner::poll_reply`), so every message is still handled once, in order.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use virtio_iommu_spec::translation::{
    ClientMessage, DaemonMessage, Hello, HelloReplyFlags, HelloStatus, MessageType, TranslateReply,
    WireEndpointRange, HEADER_SIZE, MAX_PAYLOAD, VERSION,
};

use crate::config::ClientConfig;
use crate::error::Error;
use crate::raw_socket::{peek_now, wait_input};

/// Largest whole message either way.
const MAX_MESSAGE: usize = HEADER_SIZE + MAX_PAYLOAD;

/// A connection after an accepted `HELLO`.
#[derive(Debug)]
pub struct Session {
    writer: Mutex<UnixStream>,
    /// The reading half; whoever holds it may consume messages.
    reader: Mutex<SessionReader>,
    /// The reading half's socket, to wait for input without holding the reading half.
    input: Arc<UnixStream>,
    /// The device's granule (lowest set bit of the page-size mask).
    pub granule: u64,
    /// `HELLO_REPLY`'s flags.
    pub flags: HelloReplyFlags,
    /// Which connection of the client this is (1 for the first).
    pub generation: u64,
}

/// The reading half of a [`Session`].
#[derive(Debug)]
pub struct SessionReader {
    stream: Arc<UnixStream>,
    buf: Box<[u8; MAX_MESSAGE]>,
}

impl Session {
    /// Connects and performs the `HELLO` exchange, each step bounded by the config's
    /// `connect_timeout`.
    ///
    /// # Errors
    /// The socket cannot be reached, the daemon refuses, or it answers out of protocol.
    pub fn open(config: &ClientConfig, generation: u64) -> Result<Session, Error> {
        let stream = UnixStream::connect(&config.socket).map_err(Error::Connect)?;
        stream
            .set_read_timeout(Some(config.connect_timeout))
            .map_err(Error::Io)?;
        stream
            .set_write_timeout(Some(config.connect_timeout))
            .map_err(Error::Io)?;
        let ranges: Vec<WireEndpointRange> = config
            .endpoints
            .iter()
            .map(|r| WireEndpointRange::new(r.first, r.last))
            .collect();
        let hello = ClientMessage::Hello(Hello {
            version: VERSION,
            flags: 0,
            ranges: &ranges,
        });
        let mut reader = SessionReader {
            stream: Arc::new(stream.try_clone().map_err(Error::Io)?),
            buf: Box::new([0; MAX_MESSAGE]),
        };
        let mut writer = stream;
        send_on(&mut writer, &hello)?;
        let reply = match reader.next()? {
            DaemonMessage::HelloReply(r) => r,
            _ => return Err(Error::BadReply("a message other than HELLO_REPLY first")),
        };
        if reply.version != VERSION {
            return Err(Error::Version(reply.version));
        }
        if reply.status != HelloStatus::Accepted {
            return Err(Error::Refused(reply.status));
        }
        // The reader blocks until the daemon speaks (INVALIDATEs come at any time); writes
        // stay bounded so a daemon that stopped reading cannot hang a device thread.
        reader.stream.set_read_timeout(None).map_err(Error::Io)?;
        writer
            .set_write_timeout(Some(config.reply_timeout.max(Duration::from_millis(1))))
            .map_err(Error::Io)?;
        let granule = if reply.page_size_mask == 0 {
            4096
        } else {
            1u64 << reply.page_size_mask.trailing_zeros()
        };
        let input = reader.stream.clone();
        Ok(Session {
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            input,
            granule,
            flags: reply.flags,
            generation,
        })
    }

    /// The reading half, once no other thread holds it.
    pub fn reader(&self) -> MutexGuard<'_, SessionReader> {
        self.reader.lock()
    }

    /// The reading half if no other thread holds it now.
    pub fn try_reader(&self) -> Option<MutexGuard<'_, SessionReader>> {
        self.reader.try_lock()
    }

    /// Waits until input (or the end of the stream) is there, at most `timeout_ms` (-1: no
    /// bound; 0: only looks); whether it is.
    ///
    /// # Errors
    /// The wait itself failed.
    pub fn wait_input(&self, timeout_ms: i32) -> Result<bool, Error> {
        wait_input(&self.input, timeout_ms).map_err(Error::Io)
    }

    /// Sends one message.
    ///
    /// # Errors
    /// The write failed or timed out.
    pub fn send(&self, msg: &ClientMessage<'_>) -> Result<(), Error> {
        send_on(&mut self.writer.lock(), msg)
    }

    /// Closes both directions: the reader thread sees the end of the stream.
    pub fn close(&self) {
        let _ = self.writer.lock().shutdown(std::net::Shutdown::Both);
    }
}

fn send_on(stream: &mut UnixStream, msg: &ClientMessage<'_>) -> Result<(), Error> {
    let mut buf = [0u8; MAX_MESSAGE];
    let n = msg
        .encode_into(&mut buf)
        .ok_or(Error::BadReply("a message larger than the protocol allows"))?;
    stream.write_all(&buf[..n]).map_err(Error::Io)
}

impl SessionReader {
    /// The next message from the daemon.
    ///
    /// # Errors
    /// End of stream or a read error (`Io`), or a protocol error.
    pub fn next(&mut self) -> Result<DaemonMessage, Error> {
        let (head, body) = self.buf.split_at_mut(HEADER_SIZE);
        read_full(&self.stream, head)?;
        let head: &[u8; HEADER_SIZE] =
            (&*head).try_into().map_err(|_| Error::BadReply("header"))?;
        let header = DaemonMessage::check_header(head).map_err(Error::Protocol)?;
        // check_header bounded the size by MAX_PAYLOAD.
        let payload = body
            .get_mut(..header.size)
            .ok_or(Error::BadReply("oversized payload"))?;
        read_full(&self.stream, payload)?;
        DaemonMessage::parse(header, payload).map_err(Error::Protocol)
    }

    /// Whether [`SessionReader::next`] has something to read without waiting for the daemon
    /// (a message, its start, the end of the stream or an error).
    #[must_use]
    pub fn has_input(&self) -> bool {
        let mut one = [0u8; 1];
        !matches!(peek_now(&self.stream, &mut one), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// The `TRANSLATE_REPLY` at the head of the input, with its length, if one is there whole;
    /// nothing is consumed ([`SessionReader::consume`] does). `None` for anything else:
    /// nothing yet, part of a message, another message, the end, an error (left for
    /// [`SessionReader::next`], which reports them).
    pub fn peek_reply(&mut self) -> Option<(TranslateReply, usize)> {
        let head = self.buf.get_mut(..HEADER_SIZE)?;
        if peek_now(&self.stream, head).ok()? < HEADER_SIZE {
            return None;
        }
        let head: &[u8; HEADER_SIZE] = (&*head).try_into().ok()?;
        let header = DaemonMessage::check_header(head).ok()?;
        if header.msg_type != MessageType::TranslateReply {
            return None;
        }
        // check_header bounded the size by MAX_PAYLOAD.
        let whole = self.buf.get_mut(..HEADER_SIZE + header.size)?;
        if peek_now(&self.stream, whole).ok()? < whole.len() {
            return None;
        }
        match DaemonMessage::parse(header, &whole[HEADER_SIZE..]) {
            Ok(DaemonMessage::TranslateReply(r)) => Some((r, whole.len())),
            _ => None,
        }
    }

    /// Consumes the `len` bytes [`SessionReader::peek_reply`] saw.
    ///
    /// # Errors
    /// The read failed (the connection is then unusable).
    pub fn consume(&mut self, len: usize) -> Result<(), Error> {
        let bytes = self
            .buf
            .get_mut(..len)
            .ok_or(Error::BadReply("oversized payload"))?;
        read_full(&self.stream, bytes)
    }
}

fn read_full(mut stream: &UnixStream, buf: &mut [u8]) -> Result<(), Error> {
    stream.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => Error::Disconnected,
        _ => Error::Io(e),
    })
}
