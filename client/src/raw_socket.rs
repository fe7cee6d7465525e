//! The socket calls std lacks: a peek that never waits, and a wait for input that reads
//! nothing. They let a translating thread take its reply while the reader thread sleeps, with
//! no byte leaving the socket until whoever holds the reading half consumes a whole message.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// Copies up to `buf.len()` bytes of what `stream` holds without consuming them and without
/// waiting: `Ok(0)` at the end of the stream, `WouldBlock` when nothing is there.
pub(crate) fn peek_now(stream: &UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the call's duration, and
        // the descriptor stays open while `stream` is borrowed.
        let n = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if let Ok(n) = usize::try_from(n) {
            return Ok(n);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Waits until `stream` has input, its end, or an error (`timeout_ms` -1: without a bound, 0:
/// not at all); whether it has.
pub(crate) fn wait_input(stream: &UnixStream, timeout_ms: i32) -> io::Result<bool> {
    let mut fd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid `pollfd`, and the descriptor stays open while `stream` is borrowed.
        let n = unsafe { libc::poll(&mut fd, 1, timeout_ms) };
        if n >= 0 {
            return Ok(n > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
