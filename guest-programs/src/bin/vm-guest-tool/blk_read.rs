//! Sequential read throughput of a block device, bypassing the page cache (O_DIRECT).

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::huge_buffer::HugeBuffer;

/// Bytes per read: one virtio-blk request of 256 pages.
const CHUNK: usize = 1 << 20;
/// O_DIRECT wants the buffer aligned to the logical block size; a page covers every disk.
const ALIGN: usize = 4096;
/// A slow device stops the read early (the rate is still exact): the test's time stays bounded.
const CAP: Duration = Duration::from_secs(20);

pub fn blk_read(dev: &str, mib: u64) -> ExitCode {
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
    {
        Ok(f) => f,
        Err(e) => {
            println!("FAIL: open {dev} O_DIRECT: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Both devices under comparison boot separately: a huge page gives them the same buffer
    // layout (one mapping per read), ordinary pages a different scatter each boot.
    let mut huge = HugeBuffer::new();
    let mut raw = Vec::new();
    let buf = match huge.as_mut() {
        Ok(h) => {
            println!("VM-SPEED: blk-read buffer: one 2 MiB huge page");
            h.slice(CHUNK)
        }
        Err(e) => {
            println!("VM-SPEED: blk-read buffer: 4 KiB pages (no huge page: {e})");
            raw.resize(CHUNK + ALIGN, 0u8);
            let skip = raw.as_ptr().align_offset(ALIGN);
            &mut raw[skip..skip + CHUNK]
        }
    };
    let total = mib * (1 << 20);
    let start = Instant::now();
    let mut off = 0u64;
    while off < total && start.elapsed() < CAP {
        match f.read_at(buf, off) {
            Ok(0) => break,
            Ok(n) => off += n as u64,
            Err(e) => {
                println!("FAIL: read {dev} at {off}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    // Bytes read are at most a few GiB: exact in an f64.
    #[allow(clippy::cast_precision_loss)]
    let mbps = off as f64 / secs / 1e6;
    println!("VM-SPEED: blk-read {off} bytes in {secs:.3} s: {mbps:.2} MB/s");
    if off == total || start.elapsed() >= CAP {
        ExitCode::SUCCESS
    } else {
        println!("FAIL: {dev} ended after {off} of {total} bytes");
        ExitCode::FAILURE
    }
}
