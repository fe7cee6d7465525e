//! A fake daemon on a real UNIX socket: answers `HELLO` and `TRANSLATE` from a mapping table
//! the test sets, sends `INVALIDATE` on demand and records acks, and can misbehave.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use virtio_iommu_spec::event::{FaultFlags, FaultReason};
use virtio_iommu_spec::request::MapFlags;
use virtio_iommu_spec::translation::{
    ClientMessage, DaemonMessage, Endpoints, HelloReply, HelloReplyFlags, HelloStatus, Invalidate,
    Pasids, TranslateFault, TranslateFlags, TranslateReply, TranslatedRange, TranslatedRanges,
    HEADER_SIZE, MAX_PAYLOAD,
};

/// One mapping of the fake's table.
#[derive(Debug, Clone, Copy)]
pub struct Map {
    pub endpoint: u32,
    pub iova: u64,
    pub last: u64,
    pub paddr: u64,
    pub perm: MapFlags,
}

#[derive(Debug, Default)]
pub struct State {
    pub maps: Vec<Map>,
    /// TRANSLATEs received: (endpoint, iova, len, flags).
    pub translates: Vec<(u32, u64, u64, TranslateFlags)>,
    pub hellos: usize,
    pub acked: u64,
    next_seq: u64,
    /// Do not answer TRANSLATEs.
    pub mute: bool,
    /// Cut every OK answer to ranges of at most this many bytes.
    pub split: Option<u64>,
    /// The HELLO_REPLY status to give.
    pub refuse: Option<HelloStatus>,
    /// Answer the next TRANSLATE with these raw bytes instead.
    pub raw_reply: Option<Vec<u8>>,
    conn: Option<UnixStream>,
}

#[derive(Debug)]
pub struct Fake {
    pub path: PathBuf,
    pub state: Arc<(Mutex<State>, Condvar)>,
    _dir: tempfile::TempDir,
}

impl Fake {
    pub fn start() -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("translate.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let state: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let s = s.clone();
                std::thread::spawn(move || serve(&s, conn));
            }
        });
        Fake {
            path,
            state,
            _dir: dir,
        }
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.0.lock())
    }

    pub fn map(&self, endpoint: u32, iova: u64, last: u64, paddr: u64, perm: MapFlags) {
        self.with(|s| {
            s.maps.push(Map {
                endpoint,
                iova,
                last,
                paddr,
                perm,
            });
        });
    }

    pub fn translates(&self) -> usize {
        self.with(|s| s.translates.len())
    }

    /// Sends an INVALIDATE of `first..=last` for `endpoint` (all endpoints with `None`);
    /// returns its sequence number.
    pub fn invalidate(&self, endpoint: Option<u32>, first: u64, last: u64) -> u64 {
        let (msg, mut conn) = self.with(|s| {
            s.next_seq += 1;
            let inv = Invalidate {
                seq: s.next_seq,
                first,
                last,
                endpoints: endpoint.map_or(Endpoints::All, Endpoints::One),
                pasids: if endpoint.is_some() {
                    Pasids::NoPasid
                } else {
                    Pasids::All
                },
            };
            (
                DaemonMessage::Invalidate(inv),
                s.conn.as_ref().unwrap().try_clone().unwrap(),
            )
        });
        send(&mut conn, &msg);
        let DaemonMessage::Invalidate(inv) = msg else {
            unreachable!()
        };
        inv.seq
    }

    /// Whether `seq` is acknowledged within `timeout`.
    pub fn wait_ack(&self, seq: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (m, c) = &*self.state;
        let mut s = m.lock();
        while s.acked < seq {
            if c.wait_until(&mut s, deadline).timed_out() {
                return s.acked >= seq;
            }
        }
        true
    }

    /// Closes the current connection, as a daemon restart does.
    pub fn drop_connection(&self) {
        if let Some(c) = self.with(|s| s.conn.take()) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Writes `bytes` to the current connection.
    pub fn send_raw(&self, bytes: &[u8]) {
        let mut c = self.with(|s| s.conn.as_ref().unwrap().try_clone().unwrap());
        c.write_all(bytes).unwrap();
    }
}

fn send(conn: &mut UnixStream, msg: &DaemonMessage) {
    let mut buf = vec![0u8; msg.encoded_len()];
    let n = msg.encode_into(&mut buf).unwrap();
    let _ = conn.write_all(&buf[..n]);
}

fn serve(state: &Arc<(Mutex<State>, Condvar)>, mut conn: UnixStream) {
    state.0.lock().conn = Some(conn.try_clone().unwrap());
    let mut buf = vec![0u8; HEADER_SIZE + MAX_PAYLOAD];
    loop {
        if conn.read_exact(&mut buf[..HEADER_SIZE]).is_err() {
            return;
        }
        let head: [u8; HEADER_SIZE] = buf[..HEADER_SIZE].try_into().unwrap();
        let Ok(h) = ClientMessage::check_header(&head) else {
            return;
        };
        if conn.read_exact(&mut buf[..h.size]).is_err() {
            return;
        }
        let Ok(msg) = ClientMessage::parse(h, &buf[..h.size]) else {
            return;
        };
        let reply = {
            let (m, c) = &**state;
            let mut s = m.lock();
            match msg {
                ClientMessage::Hello(_) => {
                    s.hellos += 1;
                    Some(DaemonMessage::HelloReply(HelloReply {
                        version: 1,
                        status: s.refuse.unwrap_or(HelloStatus::Accepted),
                        page_size_mask: !0xfff,
                        flags: HelloReplyFlags::empty(),
                    }))
                }
                ClientMessage::InvalAck(a) => {
                    s.acked = s.acked.max(a.seq);
                    c.notify_all();
                    None
                }
                ClientMessage::Translate(t) => {
                    s.translates.push((t.endpoint, t.iova, t.len, t.flags));
                    if let Some(raw) = s.raw_reply.take() {
                        let _ = conn.write_all(&raw);
                        None
                    } else if s.mute {
                        None
                    } else {
                        Some(DaemonMessage::TranslateReply(answer(&s, &t)))
                    }
                }
            }
        };
        if let Some(r) = reply {
            send(&mut conn, &r);
        }
    }
}

fn answer(s: &State, t: &virtio_iommu_spec::translation::Translate) -> TranslateReply {
    let want = if t.flags.contains(TranslateFlags::WRITE) {
        MapFlags::WRITE
    } else {
        MapFlags::READ
    };
    let fault = |flags| {
        TranslateReply::fault(
            t.tag,
            TranslateFault {
                reason: FaultReason::Mapping,
                flags,
                address: t.iova,
            },
        )
    };
    let mut ranges = TranslatedRanges::new();
    let mut at = t.iova;
    let end = t.iova + (t.len - 1);
    while !ranges.is_full() {
        let Some(m) = s
            .maps
            .iter()
            .find(|m| m.endpoint == t.endpoint && m.iova <= at && at <= m.last)
        else {
            break;
        };
        if !m.perm.contains(want) {
            break;
        }
        let (iova, last) = match s.split {
            Some(n) => (at, (at + n - 1).min(m.last)),
            None => (m.iova, m.last),
        };
        ranges.push(TranslatedRange {
            iova,
            last,
            paddr: m.paddr + (iova - m.iova),
            perm: m.perm,
        });
        if last >= end {
            break;
        }
        at = last + 1;
    }
    if ranges.as_slice().is_empty() {
        return fault(t.access() | FaultFlags::ADDRESS);
    }
    TranslateReply::ok(t.tag, ranges)
}
