//! Requests to the host side of the test: the script watches the serial log for
//! `KERNEL-HOST id=N expect=E bg=B cmd=JSON` lines and sends each JSON line, in order, to the
//! daemon's control socket (`bg=1`: without waiting for the reply, which comes once the guest
//! has answered a page request). It checks the reply against `expect`: `ok` (done, no fault),
//! `fault` (the access faulted) or `data:HEX` (a `dma-read` returned these bytes), and prints
//! `HOST-CHECK: PASS|FAIL N`. The kernel then waits for the request's effect in its memory or
//! on its event queue.

use alloc::string::String;
use core::fmt::Write;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::println;

static NEXT_ID: AtomicU32 = AtomicU32::new(1);

/// What the host must see in the control socket's reply.
#[derive(Debug, Clone, Copy)]
pub enum Expect<'a> {
    /// The DMA completed without a fault.
    Ok,
    /// The DMA faulted.
    Fault,
    /// A `dma-read` returned these bytes.
    Data(&'a [u8]),
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A DMA through the daemon's translation for `endpoint` (and `pasid`): a read of `len`
/// bytes, or a write of `data`.
#[derive(Debug, Clone, Copy)]
pub struct Dma<'a> {
    /// Endpoint ID.
    pub endpoint: u32,
    /// PASID, if the access carries one.
    pub pasid: Option<u32>,
    /// I/O virtual address.
    pub iova: u64,
    /// What the access does.
    pub op: Op<'a>,
}

/// A DMA's direction.
#[derive(Debug, Clone, Copy)]
pub enum Op<'a> {
    /// Read this many bytes.
    Read(usize),
    /// Write these bytes.
    Write(&'a [u8]),
}

impl Dma<'_> {
    fn json(&self) -> String {
        let mut s = String::new();
        let cmd = match self.op {
            Op::Read(_) => "dma-read",
            Op::Write(_) => "dma-write",
        };
        let _ = write!(
            s,
            "{{\"cmd\":\"{cmd}\",\"endpoint\":{},\"iova\":\"{:#x}\"",
            self.endpoint, self.iova
        );
        if let Some(p) = self.pasid {
            let _ = write!(s, ",\"pasid\":{p}");
        }
        match self.op {
            Op::Read(len) => {
                let _ = write!(s, ",\"len\":{len}}}");
            }
            Op::Write(data) => {
                let _ = write!(s, ",\"data\":\"{}\"}}", hex(data));
            }
        }
        s
    }
}

/// Asks the host for `dma`; returns the request's ID.
pub fn request(dma: &Dma<'_>, expect: Expect<'_>, background: bool) -> u32 {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let expect = match expect {
        Expect::Ok => String::from("ok"),
        Expect::Fault => String::from("fault"),
        Expect::Data(d) => alloc::format!("data:{}", hex(d)),
    };
    println!(
        "KERNEL-HOST id={id} expect={expect} bg={} cmd={}",
        u8::from(background),
        dma.json()
    );
    id
}

/// Host requests made so far.
pub fn requests() -> u32 {
    NEXT_ID.load(Ordering::Relaxed) - 1
}
