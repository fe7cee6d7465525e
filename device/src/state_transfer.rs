//! The vhost-user device-state transfer (PROTOCOL.md §12.9): SET_DEVICE_STATE_FD starts a
//! thread that writes the saved stream to the frontend's pipe, or reads the frontend's stream
//! from it; CHECK_DEVICE_STATE waits for that thread and, for a load, hands the stream to the
//! engine. The message handlers never block on the pipe (the frontend moves the bytes between
//! the two messages).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Instant;

use log::{info, warn};

use crate::backend::{lock, SharedEngine};
use crate::engine::state::MAX_STATE_BYTES;
use crate::engine::Engine;

/// A transfer whose bytes are still moving.
#[derive(Debug)]
enum Pending {
    /// Writing this many bytes.
    Save(JoinHandle<io::Result<()>>, usize),
    /// Reading the stream.
    Load(JoinHandle<io::Result<Vec<u8>>>),
}

/// A transfer that CHECK_DEVICE_STATE found complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The stream went to the frontend whole: the guest may now run elsewhere.
    Saved,
    /// The stream replaced the engine's state.
    Loaded,
}

/// At most one transfer at a time, between SET_DEVICE_STATE_FD and CHECK_DEVICE_STATE.
#[derive(Debug, Default)]
pub struct StateTransfer {
    pending: Mutex<Option<Pending>>,
}

/// The pipe in blocking mode: the transfer thread waits for the frontend, whatever mode the
/// frontend created its pipe in.
fn blocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is an open descriptor owned by `file` for the duration of both calls;
    // F_GETFL / F_SETFL read and set its status flags and touch no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_NONBLOCK != 0 {
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn summary(e: &Engine) -> String {
    let s = e.stats();
    format!(
        "{} domains, {} mappings, {} tables, {} page-request groups, {} events",
        s.domains,
        s.mappings,
        s.tables,
        s.page_requests.outstanding,
        e.pending_events()
    )
}

/// The transfer thread's result (a panic in it is an error like any other).
fn joined<T>(r: std::thread::Result<io::Result<T>>) -> io::Result<T> {
    r.unwrap_or_else(|_| Err(io::Error::other("the transfer thread panicked")))
}

fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<JoinHandle<io::Result<T>>> {
    std::thread::Builder::new().name(name.into()).spawn(f)
}

impl StateTransfer {
    fn replace(&self, p: Pending) {
        let old = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(p);
        if old.is_some() {
            warn!("device state: a new transfer replaces one that was never checked");
        }
    }

    /// SAVE: the engine's stream now, written to `file` by a thread.
    ///
    /// # Errors
    /// The thread cannot be started.
    pub fn start_save(&self, engine: &SharedEngine, mut file: File) -> io::Result<()> {
        let (bytes, what) = {
            let e = lock(engine);
            (e.save_state(Instant::now()), summary(&e))
        };
        let len = bytes.len();
        info!("device state: saving {len} bytes ({what})");
        let h = spawn("state-save", move || {
            blocking(&file)?;
            file.write_all(&bytes)?;
            file.flush()
        })?;
        self.replace(Pending::Save(h, len));
        Ok(())
    }

    /// LOAD: a thread reads `file` to its end (at most [`MAX_STATE_BYTES`]).
    ///
    /// # Errors
    /// The thread cannot be started.
    pub fn start_load(&self, file: File) -> io::Result<()> {
        let h = spawn("state-load", move || {
            blocking(&file)?;
            let mut buf = Vec::new();
            let limit = u64::try_from(MAX_STATE_BYTES).unwrap_or(u64::MAX) + 1;
            file.take(limit).read_to_end(&mut buf)?;
            Ok(buf)
        })?;
        self.replace(Pending::Load(h));
        Ok(())
    }

    /// CHECK_DEVICE_STATE: waits for the transfer's thread; for a load, loads the stream into
    /// the engine (refused streams change nothing and are logged with the difference).
    /// Returns which transfer completed.
    ///
    /// # Errors
    /// No transfer was started, the pipe failed, or the stream was refused.
    pub fn finish(&self, engine: &SharedEngine) -> io::Result<Finished> {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match pending {
            None => {
                warn!("CHECK_DEVICE_STATE without a transfer");
                Err(io::Error::other("no device-state transfer"))
            }
            Some(Pending::Save(h, len)) => match joined(h.join()) {
                Ok(()) => {
                    info!("device state: {len} bytes saved");
                    Ok(Finished::Saved)
                }
                Err(e) => {
                    warn!("device state: saving failed: {e}");
                    Err(e)
                }
            },
            Some(Pending::Load(h)) => {
                let bytes = joined(h.join()).inspect_err(|e| {
                    warn!("device state: reading the stream failed: {e}");
                })?;
                let mut e = lock(engine);
                match e.load_state(&bytes, Instant::now()) {
                    Ok(()) => {
                        info!(
                            "device state: loaded {} bytes ({})",
                            bytes.len(),
                            summary(&e)
                        );
                        Ok(Finished::Loaded)
                    }
                    Err(err) => {
                        warn!("device state refused: {err}");
                        Err(io::Error::other(err.to_string()))
                    }
                }
            }
        }
    }
}
