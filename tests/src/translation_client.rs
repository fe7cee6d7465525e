//! A translation-socket client speaking the raw protocol of spec/TRANSLATION.md: what a device
//! backend sends, byte for byte, with no cache of its own, so tests see exactly what the
//! daemon answers and pushes.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use virtio_iommu_spec::translation::{
    ClientMessage, DaemonMessage, Hello, HelloReply, InvalAck, Invalidate, Translate,
    TranslateFlags, TranslateReply, WireEndpointRange, HEADER_SIZE, MAX_PAYLOAD, VERSION,
};

use crate::error::{Error, Result};

/// A connected client.
#[derive(Debug)]
pub struct TranslationClient {
    stream: UnixStream,
    /// INVALIDATEs received while waiting for something else, oldest first.
    pub invalidates: VecDeque<Invalidate>,
    /// Replies received while waiting for another tag.
    replies: VecDeque<TranslateReply>,
    /// Acknowledge every INVALIDATE as soon as it is read.
    pub auto_ack: bool,
    next_tag: u64,
}

impl TranslationClient {
    /// Connects, retrying until `timeout` while the daemon starts.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(e.into()),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        stream.set_read_timeout(Some(timeout))?;
        Ok(TranslationClient {
            stream,
            invalidates: VecDeque::new(),
            replies: VecDeque::new(),
            auto_ack: false,
            next_tag: 1,
        })
    }

    /// Sets how long a read waits.
    pub fn set_timeout(&self, timeout: Duration) -> Result<()> {
        Ok(self.stream.set_read_timeout(Some(timeout))?)
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        Ok(self.stream.write_all(bytes)?)
    }

    /// Encodes and writes a message.
    pub fn send(&mut self, m: &ClientMessage<'_>) -> Result<()> {
        let mut out = vec![0u8; m.encoded_len()];
        m.encode_into(&mut out)
            .ok_or_else(|| Error::Usage("message does not encode".into()))?;
        self.send_raw(&out)
    }

    /// Reads one daemon message.
    pub fn recv(&mut self) -> Result<DaemonMessage> {
        let mut head = [0u8; HEADER_SIZE];
        self.read_exact(&mut head)?;
        let h = DaemonMessage::check_header(&head)
            .map_err(|e| Error::Protocol(format!("daemon header: {e}")))?;
        let mut payload = vec![0u8; h.size.min(MAX_PAYLOAD)];
        self.read_exact(&mut payload)?;
        DaemonMessage::parse(h, &payload).map_err(|e| Error::Protocol(format!("daemon: {e}")))
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        match self.stream.read_exact(buf) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(Error::Timeout(Duration::ZERO, "a daemon message"))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// HELLO for `ranges` (inclusive endpoint ID pairs); returns the reply.
    pub fn hello(&mut self, ranges: &[(u32, u32)]) -> Result<HelloReply> {
        let wire: Vec<_> = ranges
            .iter()
            .map(|(a, b)| WireEndpointRange::new(*a, *b))
            .collect();
        self.send(&ClientMessage::Hello(Hello {
            version: VERSION,
            flags: 0,
            ranges: &wire,
        }))?;
        match self.recv()? {
            DaemonMessage::HelloReply(r) => Ok(r),
            other => Err(Error::Protocol(format!(
                "expected HELLO_REPLY, got {other:?}"
            ))),
        }
    }

    /// Sends a TRANSLATE with a fresh tag; returns the tag.
    pub fn send_translate(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        iova: u64,
        len: u64,
        mut flags: TranslateFlags,
    ) -> Result<u64> {
        let tag = self.next_tag;
        self.next_tag += 1;
        flags.set(TranslateFlags::PASID, pasid.is_some());
        self.send(&ClientMessage::Translate(Translate {
            tag,
            iova,
            len,
            endpoint,
            pasid: pasid.unwrap_or(0),
            flags,
        }))?;
        Ok(tag)
    }

    /// Reads until the reply to `tag`, keeping INVALIDATEs (acknowledged at once with
    /// [`Self::auto_ack`]) and other replies.
    pub fn reply(&mut self, tag: u64) -> Result<TranslateReply> {
        if let Some(i) = self.replies.iter().position(|r| r.tag == tag) {
            return Ok(self.replies.remove(i).unwrap_or_else(|| unreachable!()));
        }
        loop {
            match self.recv()? {
                DaemonMessage::TranslateReply(r) if r.tag == tag => return Ok(r),
                DaemonMessage::TranslateReply(r) => self.replies.push_back(r),
                DaemonMessage::Invalidate(i) => self.got_invalidate(i)?,
                other @ DaemonMessage::HelloReply(_) => {
                    return Err(Error::Protocol(format!("unexpected {other:?}")))
                }
            }
        }
    }

    fn got_invalidate(&mut self, i: Invalidate) -> Result<()> {
        if self.auto_ack {
            self.ack(i.seq)?;
        }
        self.invalidates.push_back(i);
        Ok(())
    }

    /// TRANSLATE and its reply.
    pub fn translate(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        iova: u64,
        len: u64,
        flags: TranslateFlags,
    ) -> Result<TranslateReply> {
        let tag = self.send_translate(endpoint, pasid, iova, len, flags)?;
        self.reply(tag)
    }

    /// The next INVALIDATE (one already received, or the next message, which must be one).
    pub fn next_invalidate(&mut self) -> Result<Invalidate> {
        if let Some(i) = self.invalidates.pop_front() {
            return Ok(i);
        }
        match self.recv()? {
            DaemonMessage::Invalidate(i) => {
                if self.auto_ack {
                    self.ack(i.seq)?;
                }
                Ok(i)
            }
            other => Err(Error::Protocol(format!(
                "expected INVALIDATE, got {other:?}"
            ))),
        }
    }

    /// INVAL_ACK of everything up to `seq`.
    pub fn ack(&mut self, seq: u64) -> Result<()> {
        self.send(&ClientMessage::InvalAck(InvalAck { seq }))
    }

    /// Waits up to `timeout` for the daemon to close the connection; `Ok(true)` if it did,
    /// `Ok(false)` if the connection is still open. Messages read meanwhile are kept.
    pub fn closed_within(&mut self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.set_timeout(Duration::from_secs(10))?;
                return Ok(false);
            }
            self.set_timeout(left)?;
            match self.recv() {
                Ok(DaemonMessage::Invalidate(i)) => self.got_invalidate(i)?,
                Ok(DaemonMessage::TranslateReply(r)) => self.replies.push_back(r),
                Ok(DaemonMessage::HelloReply(_)) => {}
                Err(Error::Timeout(..)) => {}
                Err(Error::Io(e))
                    if matches!(
                        e.kind(),
                        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
                    ) =>
                {
                    return Ok(true)
                }
                Err(e) => return Err(e),
            }
        }
    }
}
