//! `FrontendShim`: a confined device's vhost-user connection passes through here on its way
//! between the frontend and vhost-user-backend.
//!
//! A frontend that puts the device behind its vIOMMU (QEMU's `iommu_platform=on`) speaks two
//! things vhost-user-backend 0.24 cannot take: SET_VRING_ADDR with I/O virtual addresses, and
//! VHOST_USER_IOTLB_MSG (the vhost IOTLB: updates after QEMU's own translations, invalidations
//! from its IOMMU notifiers). This device translates through the virtio-iommu daemon instead,
//! whose invalidations reach it directly, so the shim
//! - acknowledges every IOTLB message without forwarding it;
//! - records a SET_VRING_ADDR's ring IOVAs in [`RingIovas`] (once ACCESS_PLATFORM is
//!   negotiated) and hands the library the start of guest memory instead, an address it
//!   accepts; the queue thread puts the IOVAs back before it touches the rings;
//! - forwards every other message, its file descriptors and every reply unchanged.
//!
//! Only the control path crosses the shim: kicks and calls are eventfds the library holds.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};

use log::{debug, warn};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::request::F_ACCESS_PLATFORM;
use crate::ring_iovas::{RingIovas, Rings};

/// VHOST_USER_SET_FEATURES.
const SET_FEATURES: u32 = 2;
/// VHOST_USER_SET_MEM_TABLE.
const SET_MEM_TABLE: u32 = 5;
/// VHOST_USER_SET_VRING_ADDR.
const SET_VRING_ADDR: u32 = 9;
/// VHOST_USER_IOTLB_MSG.
const IOTLB_MSG: u32 = 22;
/// Header flags: the protocol version, a reply, a reply wanted.
const VERSION: u32 = 0x1;
const REPLY: u32 = 0x4;
const NEED_REPLY: u32 = 0x8;
/// Largest body vhost-user allows (vhost's `MAX_MSG_SIZE`).
const MAX_BODY: u32 = 0x1000;
/// Most file descriptors one message carries (a memory table of 8 regions; vhost allows 32).
const MAX_FDS: usize = 32;

/// A vhost-user message header.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct Header {
    request: U32,
    flags: U32,
    size: U32,
}

/// SET_VRING_ADDR's body.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct VringAddr {
    index: U32,
    flags: U32,
    desc: U64,
    used: U64,
    avail: U64,
    log: U64,
}

/// The start of SET_MEM_TABLE's body: the region count, padding, then the first region.
#[derive(Debug, Clone, Copy, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
struct MemTableHead {
    regions: U32,
    padding: U32,
    guest_phys_addr: U64,
    memory_size: U64,
    user_addr: U64,
    mmap_offset: U64,
}

/// VHOST_USER_IOTLB_MSG's body (`struct vhost_iotlb_msg`).
#[derive(Debug, Clone, Copy, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
struct IotlbMsg {
    iova: U64,
    size: U64,
    uaddr: U64,
    perm: u8,
    kind: u8,
    padding: [u8; 6],
}

/// One message off the socket, with the descriptors that came with it.
struct Message {
    header: Header,
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// What the shim learnt of the connection so far.
#[derive(Debug, Default)]
struct Negotiated {
    /// The last SET_FEATURES accepted VIRTIO_F_ACCESS_PLATFORM: ring addresses are IOVAs.
    access_platform: bool,
    /// Frontend address of the first region of the last memory table.
    first_region: Option<u64>,
}

/// One connection's shim: the frontend's socket and the library's.
#[derive(Debug)]
pub struct FrontendShim {
    frontend: UnixStream,
    library: UnixStream,
    rings: Arc<RingIovas>,
    /// Serialises writes to the frontend: the shim's acks and the library's replies.
    to_frontend: Arc<Mutex<UnixStream>>,
}

impl FrontendShim {
    /// A shim between `frontend` and `library` that records ring IOVAs in `rings`.
    ///
    /// # Errors
    /// A socket cannot be duplicated.
    pub fn new(
        frontend: UnixStream,
        library: UnixStream,
        rings: Arc<RingIovas>,
    ) -> io::Result<Self> {
        rings.clear();
        let to_frontend = Arc::new(Mutex::new(frontend.try_clone()?));
        Ok(Self {
            frontend,
            library,
            rings,
            to_frontend,
        })
    }

    /// Passes messages both ways until either side closes or breaks the protocol; then closes
    /// both, so the other side sees the end too.
    pub fn run(self) {
        let replies = match (self.library.try_clone(), self.frontend.try_clone()) {
            (Ok(from), Ok(other)) => {
                let to = self.to_frontend.clone();
                std::thread::Builder::new()
                    .name("blk-shim-replies".into())
                    .spawn(move || {
                        copy_replies(&from, &to);
                        let _ = other.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    })
                    .map_err(|e| warn!("cannot start the reply thread: {e}"))
                    .ok()
            }
            _ => None,
        };
        if replies.is_some() {
            self.forward_requests();
        }
        let _ = self.frontend.shutdown(std::net::Shutdown::Both);
        let _ = self.library.shutdown(std::net::Shutdown::Both);
        if let Some(t) = replies {
            let _ = t.join();
        }
    }

    fn forward_requests(&self) {
        let mut seen = Negotiated::default();
        loop {
            let mut msg = match read_message(&self.frontend) {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(e) => {
                    warn!("frontend: {e}; closing the connection");
                    return;
                }
            };
            let forward = self.inspect(&mut seen, &mut msg);
            let sent = if forward {
                write_message(&self.library, &msg)
            } else {
                self.acknowledge(&msg.header)
            };
            if let Err(e) = sent {
                debug!("shim: {e}; closing the connection");
                return;
            }
        }
    }

    /// Learns from or rewrites `msg`; whether it goes on to the library.
    fn inspect(&self, seen: &mut Negotiated, msg: &mut Message) -> bool {
        match msg.header.request.get() {
            SET_FEATURES => {
                if let Ok((f, _)) = U64::read_from_prefix(&msg.body) {
                    seen.access_platform = f.get() & F_ACCESS_PLATFORM != 0;
                }
            }
            SET_MEM_TABLE => {
                seen.first_region = MemTableHead::read_from_prefix(&msg.body)
                    .ok()
                    .filter(|(m, _)| m.regions.get() > 0)
                    .map(|(m, _)| m.user_addr.get());
            }
            SET_VRING_ADDR if seen.access_platform => {
                if let (Ok(a), Some(start)) = (
                    VringAddr::mut_from_bytes(&mut msg.body[..]),
                    seen.first_region,
                ) {
                    let rings = Rings {
                        desc: a.desc.get(),
                        avail: a.avail.get(),
                        used: a.used.get(),
                    };
                    debug!("queue {}: rings at IOVAs {rings:x?}", a.index.get());
                    self.rings.set(a.index.get() as usize, rings);
                    a.desc.set(start);
                    a.avail.set(start);
                    a.used.set(start);
                }
            }
            IOTLB_MSG => {
                match IotlbMsg::read_from_bytes(&msg.body) {
                    Ok(m) => debug!(
                        "IOTLB message type {} iova {:#x} size {:#x} perm {}: acknowledged (translations come from the IOMMU daemon)",
                        m.kind,
                        m.iova.get(),
                        m.size.get(),
                        m.perm
                    ),
                    Err(_) => debug!("IOTLB message of {} bytes: acknowledged", msg.body.len()),
                }
                return false;
            }
            _ => {}
        }
        true
    }

    /// Answers a message the library never sees: success, if a reply is wanted.
    fn acknowledge(&self, request: &Header) -> io::Result<()> {
        if request.flags.get() & NEED_REPLY == 0 {
            return Ok(());
        }
        let reply = Message {
            header: Header {
                request: request.request,
                flags: U32::new(VERSION | REPLY),
                size: U32::new(8),
            },
            body: 0u64.to_le_bytes().to_vec(),
            fds: Vec::new(),
        };
        let out = self
            .to_frontend
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        write_message(&out, &reply)
    }
}

/// Copies the library's messages to the frontend until either side closes.
fn copy_replies(from: &UnixStream, to: &Mutex<UnixStream>) {
    loop {
        let msg = match read_message(from) {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                debug!("library: {e}");
                return;
            }
        };
        let out = to.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = write_message(&out, &msg) {
            debug!("frontend: {e}");
            return;
        }
    }
}

/// The next whole message on `s`; `None` at the end of the stream.
fn read_message(s: &UnixStream) -> io::Result<Option<Message>> {
    let mut raw = [0u8; size_of::<Header>()];
    let mut fds: [RawFd; MAX_FDS] = [-1; MAX_FDS];
    let (n, nfds) = loop {
        let mut iov = [libc::iovec {
            iov_base: raw.as_mut_ptr().cast(),
            iov_len: raw.len(),
        }];
        // SAFETY: the one iovec points at `raw`, which is valid for writes of its length and
        // not otherwise borrowed during the call.
        match unsafe { s.recv_with_fds(&mut iov, &mut fds) } {
            Ok(r) => break r,
            Err(e) if e.errno() == libc::EINTR => {}
            Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
        }
    };
    let fds = fds[..nfds]
        .iter()
        // SAFETY: recvmsg just installed these descriptors in this process; nothing else owns
        // them, so each is wrapped exactly once and closed when dropped.
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect::<Vec<_>>();
    if n == 0 {
        return Ok(None);
    }
    let mut r = s;
    r.read_exact(&mut raw[n..])?;
    let header = Header::read_from_bytes(&raw[..]).map_err(|_| io::ErrorKind::InvalidData)?;
    let size = header.size.get();
    if size > MAX_BODY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message {} has a {size}-byte body", header.request.get()),
        ));
    }
    let mut body = vec![0u8; size as usize];
    r.read_exact(&mut body)?;
    Ok(Some(Message { header, body, fds }))
}

/// Writes `msg` to `s`, its descriptors with its first bytes.
fn write_message(s: &UnixStream, msg: &Message) -> io::Result<()> {
    let raw: Vec<RawFd> = msg.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let head = msg.header.as_bytes();
    let sent = loop {
        match s.send_with_fds(&[head, &msg.body[..]], &raw) {
            Ok(n) => break n,
            Err(e) if e.errno() == libc::EINTR => {}
            Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
        }
    };
    // A stream socket may take part of it; the descriptors went with the first byte.
    let mut w = s;
    if sent < head.len() {
        w.write_all(&head[sent..])?;
        w.write_all(&msg.body)?;
    } else {
        w.write_all(&msg.body[sent - head.len()..])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    fn send(s: &UnixStream, request: u32, flags: u32, body: &[u8], fds: &[RawFd]) {
        let header = Header {
            request: U32::new(request),
            flags: U32::new(VERSION | flags),
            size: U32::new(u32::try_from(body.len()).unwrap()),
        };
        s.send_with_fds(&[header.as_bytes(), body], fds).unwrap();
    }

    fn recv(s: &UnixStream) -> Message {
        read_message(s).unwrap().expect("a message")
    }

    /// (frontend end, library end, table, shim thread)
    fn shim() -> (
        UnixStream,
        UnixStream,
        Arc<RingIovas>,
        std::thread::JoinHandle<()>,
    ) {
        let (frontend, theirs) = UnixStream::pair().unwrap();
        let (library, ours) = UnixStream::pair().unwrap();
        let rings = Arc::new(RingIovas::default());
        let s = FrontendShim::new(theirs, ours, rings.clone()).unwrap();
        (
            frontend,
            library,
            rings,
            std::thread::spawn(move || s.run()),
        )
    }

    fn vring_addr(index: u32, desc: u64, avail: u64, used: u64) -> VringAddr {
        VringAddr {
            index: U32::new(index),
            flags: U32::new(0),
            desc: U64::new(desc),
            used: U64::new(used),
            avail: U64::new(avail),
            log: U64::new(0x1234_5000),
        }
    }

    fn mem_table(user_addr: u64) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        for v in [0u64, 1 << 30, user_addr, 0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    #[test]
    fn iotlb_messages_are_acknowledged_and_never_reach_the_library() {
        let (frontend, library, _, t) = shim();
        let iotlb = [0u8; 32];
        send(&frontend, IOTLB_MSG, NEED_REPLY, &iotlb, &[]);
        let ack = recv(&frontend);
        assert_eq!(ack.header.request.get(), IOTLB_MSG);
        assert_eq!(ack.header.flags.get(), VERSION | REPLY);
        assert_eq!(ack.body, 0u64.to_le_bytes());
        // Without NEED_REPLY: no answer; the next message is what the library gets first.
        send(&frontend, IOTLB_MSG, 0, &iotlb, &[]);
        send(&frontend, 1, 0, &[], &[]); // GET_FEATURES
        let got = recv(&library);
        assert_eq!(got.header.request.get(), 1);
        // The library's reply reaches the frontend.
        send(&library, 1, REPLY, &7u64.to_le_bytes(), &[]);
        let reply = recv(&frontend);
        assert_eq!(
            (reply.header.request.get(), reply.body),
            (1, 7u64.to_le_bytes().to_vec())
        );
        drop(frontend);
        t.join().unwrap();
        // The library sees the end of the connection.
        assert!(read_message(&library).unwrap().is_none());
    }

    #[test]
    fn ring_iovas_are_recorded_and_replaced_once_access_platform_is_negotiated() {
        let (frontend, library, rings, t) = shim();
        let va = 0x7f00_0000_0000;
        let memfd = std::fs::File::open("/dev/null").unwrap();
        send(
            &frontend,
            SET_MEM_TABLE,
            0,
            &mem_table(va),
            &[memfd.as_fd().as_raw_fd()],
        );
        let table = recv(&library);
        assert_eq!(table.body, mem_table(va));
        assert_eq!(table.fds.len(), 1, "the region's fd is forwarded");

        // Before ACCESS_PLATFORM, ring addresses are the frontend's and pass unchanged.
        let plain = vring_addr(0, va + 0x1000, va + 0x2000, va + 0x3000);
        send(&frontend, SET_VRING_ADDR, 0, plain.as_bytes(), &[]);
        assert_eq!(recv(&library).body, plain.as_bytes());
        assert_eq!(rings.get(0), None);

        send(
            &frontend,
            SET_FEATURES,
            0,
            &(F_ACCESS_PLATFORM | 1 << 32).to_le_bytes(),
            &[],
        );
        assert_eq!(recv(&library).header.request.get(), SET_FEATURES);
        let iovas = vring_addr(0, 0xffff_e000, 0xffff_d000, 0xffff_c000);
        send(&frontend, SET_VRING_ADDR, 0, iovas.as_bytes(), &[]);
        let got = VringAddr::read_from_bytes(&recv(&library).body).unwrap();
        assert_eq!([got.desc.get(), got.avail.get(), got.used.get()], [va; 3]);
        assert_eq!((got.index.get(), got.log.get()), (0, 0x1234_5000));
        assert_eq!(
            rings.get(0),
            Some(Rings {
                desc: 0xffff_e000,
                avail: 0xffff_d000,
                used: 0xffff_c000
            })
        );
        // A frontend that drops ACCESS_PLATFORM again sends frontend addresses.
        send(&frontend, SET_FEATURES, 0, &(1u64 << 32).to_le_bytes(), &[]);
        recv(&library);
        send(&frontend, SET_VRING_ADDR, 0, plain.as_bytes(), &[]);
        assert_eq!(recv(&library).body, plain.as_bytes());
        drop(library);
        t.join().unwrap();
        assert!(read_message(&frontend).unwrap().is_none());
    }

    #[test]
    fn an_oversized_message_closes_both_sides() {
        let (frontend, library, _, t) = shim();
        let header = Header {
            request: U32::new(SET_MEM_TABLE),
            flags: U32::new(VERSION),
            size: U32::new(MAX_BODY + 1),
        };
        (&frontend).write_all(header.as_bytes()).unwrap();
        t.join().unwrap();
        assert!(read_message(&library).unwrap().is_none());
        assert!(read_message(&frontend).unwrap().is_none());
    }
}
