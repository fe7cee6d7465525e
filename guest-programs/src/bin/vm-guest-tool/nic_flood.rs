//! Packet rate between two NICs on one hub: raw Ethernet frames (AF_PACKET) sent as fast as
//! the sender's socket buffer lets them go, counted by a packet socket on the receiving NIC.
//! The kernel's count (PACKET_STATISTICS: queued plus dropped) is what the NIC delivered,
//! whether or not this single-threaded program had time to read them.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// IEEE 802 local experimental EtherType: nothing else in the guest speaks it.
const ETHERTYPE: u16 = 0x88b5;
/// Minimum Ethernet frame without FCS: the per-packet cost, not the copy, is measured.
const FRAME_LEN: usize = 60;
const MAGIC: &[u8; 8] = b"VIOMMUPK";
const SOL_PACKET: libc::c_int = 263;
const PACKET_STATISTICS: libc::c_int = 6;

#[repr(C)]
#[derive(Default)]
struct TpacketStats {
    packets: u32,
    drops: u32,
}

fn mac_of(ifname: &str) -> io::Result<[u8; 6]> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{ifname}/address"))?;
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut mac {
        let p = parts.next().ok_or_else(|| io::Error::other("short MAC"))?;
        *b = u8::from_str_radix(p, 16).map_err(io::Error::other)?;
    }
    Ok(mac)
}

fn ifindex(ifname: &str) -> io::Result<i32> {
    let c = CString::new(ifname).map_err(io::Error::other)?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(io::Error::last_os_error());
    }
    i32::try_from(i).map_err(io::Error::other)
}

fn link_addr(ifindex: i32, protocol: u16, mac: [u8; 6]) -> libc::sockaddr_ll {
    let mut addr = libc::sockaddr_ll {
        sll_family: u16::try_from(libc::AF_PACKET).unwrap_or(17),
        sll_protocol: protocol.to_be(),
        sll_ifindex: ifindex,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 6,
        sll_addr: [0; 8],
    };
    addr.sll_addr[..6].copy_from_slice(&mac);
    addr
}

// 20 bytes: the cast cannot truncate.
#[allow(clippy::cast_possible_truncation)]
const SLL_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;

/// A packet socket bound to `ifindex` for `protocol` (0: send only, receives nothing).
fn packet_socket(ifindex: i32, protocol: u16) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(protocol.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = link_addr(ifindex, protocol, [0; 6]);
    // SAFETY: `addr` is a valid sockaddr_ll of SLL_LEN bytes, alive during the call.
    let rc = unsafe { libc::bind(sock.as_raw_fd(), std::ptr::from_ref(&addr).cast(), SLL_LEN) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

/// Reads and resets the socket's counters: frames queued plus frames dropped.
fn take_stats(sock: &OwnedFd) -> io::Result<u32> {
    let mut st = TpacketStats::default();
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<TpacketStats>()).unwrap_or(8);
    // SAFETY: `st` is a writable tpacket_stats of `len` bytes, alive during the call.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            SOL_PACKET,
            PACKET_STATISTICS,
            std::ptr::from_mut(&mut st).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // The kernel already adds the drops into `packets`.
    let _ = st.drops;
    Ok(st.packets)
}

/// Frames from `from` to `to` for `secs`: (sent, received).
fn one_way(from: &str, to: &str, secs: u64) -> io::Result<(u64, u64)> {
    let (fi, ti) = (ifindex(from)?, ifindex(to)?);
    let (smac, dmac) = (mac_of(from)?, mac_of(to)?);
    let rx = packet_socket(ti, ETHERTYPE)?;
    let tx = packet_socket(fi, 0)?;
    let mut frame = [0u8; FRAME_LEN];
    frame[..6].copy_from_slice(&dmac);
    frame[6..12].copy_from_slice(&smac);
    frame[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    frame[14..22].copy_from_slice(MAGIC);
    let dest = link_addr(fi, ETHERTYPE, dmac);
    take_stats(&rx)?;
    let (mut sent, mut seq) = (0u64, 0u64);
    let start = Instant::now();
    let window = Duration::from_secs(secs);
    while start.elapsed() < window {
        frame[22..30].copy_from_slice(&seq.to_le_bytes());
        seq += 1;
        // SAFETY: `frame` and `dest` are valid for the given lengths during the call.
        let n = unsafe {
            libc::sendto(
                tx.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::from_ref(&dest).cast(),
                SLL_LEN,
            )
        };
        if n >= 0 {
            sent += 1;
        } else {
            let e = io::Error::last_os_error();
            // A full qdisc drops the frame (ENOBUFS): let the NIC drain.
            if e.raw_os_error() != Some(libc::ENOBUFS) {
                return Err(e);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    // Frames still in the rings arrive within a few milliseconds.
    std::thread::sleep(Duration::from_millis(300));
    let received = u64::from(take_stats(&rx)?);
    Ok((sent, received))
}

pub fn nic_flood(a: &str, b: &str, secs: u64) -> ExitCode {
    let mut total = 0u64;
    for (from, to) in [(a, b), (b, a)] {
        match one_way(from, to, secs) {
            Ok((sent, received)) => {
                println!(
                    "VM-SPEED: nic {from} -> {to}: {sent} frames sent, {received} received in {secs} s"
                );
                total += received;
            }
            Err(e) => {
                println!("FAIL: nic flood {from} -> {to}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let pps = total / (2 * secs.max(1));
    println!("VM-SPEED: nic {pps} packets/s");
    if total == 0 {
        println!("FAIL: no frame crossed the hub");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
