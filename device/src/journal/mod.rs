//! The state file (`--state-file`, PROTOCOL.md §13): what lets a daemon that was killed come
//! back with every domain, mapping and table the guest built, and answer the requests it had
//! taken from the ring.
//!
//! The file is a snapshot (the device-state stream of §12) followed by records appended as
//! the device changes: every answered request but PROBE, config writes, feature negotiation,
//! guest resets and ring starts. The records of a batch of requests are written with one
//! `write(2)` before their used entries are published, so a request the guest saw answered is
//! always in the file; the page cache keeps it when the process dies (no `fsync`: this
//! survives the daemon, not the host). When the records outgrow the snapshot, a new file
//! with a fresh snapshot replaces the old one by `rename(2)`.
//!
//! Recovery loads the snapshot and replays the records through the request handlers (the
//! engine is deterministic, and the host is rebuilt on the way). The answers of the last
//! requests form the [`ReplayWindow`]: the frontend restarts the request ring at the used
//! index it finds in guest memory, so chains answered but not yet published come again and
//! get their first answer instead of a second execution.
//!
//! Not kept: the event backlog and outstanding page requests (a fault event waiting for a
//! buffer at the crash is lost; a translation client's parked page request is failed by its
//! reconnect), and the request counters of PROBEs.

mod journal_error;
mod record;
mod replay_window;
mod ring_marks;

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use log::{info, warn};
use virtio_iommu_spec::request::{RequestType, TAIL_SIZE};
use virtio_iommu_spec::{Features, Request};

pub use self::journal_error::JournalError;
pub use self::record::Answer;
use self::record::{ReadEnd, Record};
pub use self::replay_window::ReplayWindow;
pub use self::ring_marks::RingMarks;
use crate::engine::state::MAX_STATE_BYTES;
use crate::engine::Engine;

/// First eight bytes of a state file.
pub const MAGIC: [u8; 8] = *b"VIOMMUJL";
/// The version this daemon writes and reads.
pub const VERSION: u32 = 1;
/// Magic, version, reserved, snapshot length.
const HEADER_LEN: usize = 24;
/// Records are compacted into a new snapshot once they are larger than this and than the
/// snapshot itself (so compaction costs O(1) per record).
pub const COMPACT_AFTER: u64 = 4 << 20;
/// The largest file a daemon reads: a snapshot of the largest state and records up to twice
/// its size.
const MAX_FILE_BYTES: u64 = 3 * (MAX_STATE_BYTES as u64) + COMPACT_AFTER;

/// The journal of one daemon, shared by its connections.
pub type SharedJournal = Arc<parking_lot::Mutex<Journal>>;

/// An open state file.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Records not yet written.
    pending: Vec<u8>,
    snapshot_len: u64,
    /// Record bytes written since the snapshot.
    records_len: u64,
    marks: RingMarks,
    /// The last answers, by position.
    window: ReplayWindow,
    /// The positions `[from, to)` the frontend may bring again: those a resume restarted
    /// the ring before (empty until one does).
    replay: (u16, u16),
    /// A write failed: the file no longer holds the state; the next compaction rewrites it.
    stale: bool,
}

/// Whether a request's answer is journaled: everything but PROBE (which changes nothing and
/// whose reply is not just a status).
fn journaled(readable: &[u8]) -> bool {
    matches!(Request::peek_type(readable), Ok(t) if t != RequestType::Probe)
}

impl Journal {
    /// Opens `path`. An existing file is recovered into `engine` (snapshot, then every record
    /// replayed); then the file is rewritten from the recovered state, so it starts with a
    /// fresh snapshot. Without a file, one is created from `engine`'s state.
    ///
    /// # Errors
    /// A [`JournalError`]; `engine` may then hold part of the file's state and must not serve.
    pub fn open(path: &Path, engine: &mut Engine) -> Result<Journal, JournalError> {
        let io = |err| JournalError::Io {
            path: path.to_owned(),
            err,
        };
        let mut marks = RingMarks::default();
        let mut window = ReplayWindow::default();
        match File::open(path) {
            Ok(f) => {
                let len = f.metadata().map_err(io)?.len();
                if len > MAX_FILE_BYTES {
                    return Err(JournalError::TooLarge {
                        path: path.to_owned(),
                        len,
                        max: MAX_FILE_BYTES,
                    });
                }
                let bytes = std::fs::read(path).map_err(io)?;
                recover(path, &bytes, engine, &mut marks, &mut window)?;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                info!("state file {}: none yet, starting empty", path.display());
            }
            Err(e) => return Err(io(e)),
        }
        // Until the first ring start says where the frontend resumes, every recovered answer
        // may come again.
        let replay = match (window.iter().next(), window.iter().last()) {
            (Some(oldest), Some(newest)) => (oldest.pos, newest.pos.wrapping_add(1)),
            _ => (0, 0),
        };
        let file = File::open(path)
            .or_else(|_| File::create(path))
            .map_err(io)?;
        let mut j = Journal {
            path: path.to_owned(),
            file,
            pending: Vec::with_capacity(8 << 10),
            snapshot_len: 0,
            records_len: 0,
            marks,
            window,
            replay,
            stale: true,
        };
        j.rewrite(engine)?;
        Ok(j)
    }

    /// Where the rings were last seen.
    #[must_use]
    pub fn marks(&self) -> RingMarks {
        self.marks
    }

    /// A request the engine answered at ring position `pos` (chain `head`), whose readable
    /// part was `readable`, with `reply` (the used bytes) written back.
    pub fn request(&mut self, pos: u16, head: u16, readable: &[u8], reply: &[u8]) {
        self.marks.next_avail[0] = pos.wrapping_add(1);
        let Some(tail) = reply.len().checked_sub(TAIL_SIZE) else {
            return;
        };
        if !journaled(readable) {
            return;
        }
        let a = Answer {
            pos,
            head,
            used: u32::try_from(reply.len()).unwrap_or(u32::MAX),
            status: reply[tail],
        };
        self.window.push(a);
        record::encode_request(&mut self.pending, &a, readable);
    }

    /// A config write the device accepted.
    pub fn config(&mut self, offset: u32, data: &[u8]) {
        self.append(&Record::Config(offset, data.to_vec()));
    }

    /// The features the driver accepted.
    pub fn features(&mut self, features: Features) {
        self.append(&Record::Features(features.bits()));
    }

    /// A guest reset.
    pub fn reset(&mut self) {
        self.window.clear();
        self.replay = (0, 0);
        self.append(&Record::Reset);
    }

    /// The rings (re)started at `marks`; `resumed`: as a resume, so the answers of positions
    /// the frontend replays (`[marks' request base, where the last daemon stopped)`) are kept.
    pub fn rings(&mut self, marks: RingMarks, resumed: bool) {
        // Up to the newest answer: a resume brings back at most a ring's worth of chains, so
        // an end behind the base (answers seen before an orderly stop) replays nothing.
        let base = marks.next_avail[0];
        let to = self
            .window
            .iter()
            .last()
            .map_or(base, |a| a.pos.wrapping_add(1));
        let span = usize::from(to.wrapping_sub(base));
        self.replay = if resumed && span <= replay_window::MAX_ANSWERS {
            (base, to)
        } else {
            (0, 0)
        };
        self.window.keep_between(self.replay.0, self.replay.1);
        self.marks = marks;
        self.append(&Record::Rings(marks));
        let kept: Vec<Answer> = self.window.iter().copied().collect();
        for a in kept {
            Record::Answered(a).encode_into(&mut self.pending);
        }
        self.flush();
    }

    /// The first daemon's answer to the chain `head` at `pos`, if this is one it answered
    /// and the guest may not have seen.
    pub fn replayed(&mut self, pos: u16, head: u16) -> Option<Answer> {
        let (from, to) = self.replay;
        if pos.wrapping_sub(from) >= to.wrapping_sub(from) {
            return None;
        }
        self.window.take(pos, head)
    }

    fn append(&mut self, r: &Record) {
        r.encode_into(&mut self.pending);
        self.flush();
    }

    /// Writes the records not yet written (one `write(2)` for a batch of requests).
    pub fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if !self.stale {
            match self.file.write_all(&self.pending) {
                Ok(()) => self.records_len += self.pending.len() as u64,
                Err(e) => {
                    crate::limited!(
                        Error,
                        "state file {}: write failed ({e}); rewriting it at the next batch",
                        self.path.display()
                    );
                    self.stale = true;
                }
            }
        }
        self.pending.clear();
    }

    /// Whether the records have outgrown the snapshot, or a write failed.
    #[must_use]
    pub fn wants_compaction(&self) -> bool {
        self.stale || self.records_len > COMPACT_AFTER.max(self.snapshot_len)
    }

    /// Replaces the file with one holding `engine`'s state as its snapshot (and the rings'
    /// marks and replay window). Logged, not returned, on failure: the old file stays, and
    /// the next batch tries again.
    pub fn compact(&mut self, engine: &Engine) {
        if let Err(e) = self.rewrite(engine) {
            crate::limited!(Error, "{e}");
        }
    }

    fn rewrite(&mut self, engine: &Engine) -> Result<(), JournalError> {
        let t0 = Instant::now();
        let io = |err| JournalError::Io {
            path: self.path.clone(),
            err,
        };
        let snapshot = snapshot(engine);
        let mut bytes = Vec::with_capacity(HEADER_LEN + snapshot.len() + 64);
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&(snapshot.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&snapshot);
        Record::Rings(self.marks).encode_into(&mut bytes);
        // Answers from before this file that a resume may still bring: only those of the
        // replay range (every later one is published before a compaction runs).
        let (from, to) = self.replay;
        for a in self.window.iter() {
            if a.pos.wrapping_sub(from) < to.wrapping_sub(from) {
                Record::Answered(*a).encode_into(&mut bytes);
            }
        }
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".new");
        let tmp = PathBuf::from(tmp);
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        self.snapshot_len = snapshot.len() as u64;
        self.records_len = (bytes.len() - HEADER_LEN - snapshot.len()) as u64;
        self.stale = false;
        info!(
            "state file {}: snapshot of {} bytes written in {:?}",
            self.path.display(),
            snapshot.len(),
            t0.elapsed()
        );
        Ok(())
    }
}

/// The engine's state without what a restart does not keep (module doc).
fn snapshot(engine: &Engine) -> Vec<u8> {
    let mut s = engine.saved_state(Instant::now());
    s.events.clear();
    s.groups.clear();
    s.encode()
}

/// Loads the snapshot of `bytes` into `engine` and replays its records.
fn recover(
    path: &Path,
    bytes: &[u8],
    engine: &mut Engine,
    marks: &mut RingMarks,
    window: &mut ReplayWindow,
) -> Result<(), JournalError> {
    let not_ours = || JournalError::NotAJournal(path.to_owned());
    let header = bytes.get(..HEADER_LEN).ok_or_else(not_ours)?;
    if header[..8] != MAGIC || header[8..12] != VERSION.to_le_bytes() {
        return Err(not_ours());
    }
    let snapshot_len = u64::from_le_bytes(header[16..24].try_into().map_err(|_| not_ours())?);
    let end = usize::try_from(snapshot_len)
        .ok()
        .and_then(|n| n.checked_add(HEADER_LEN))
        .filter(|end| *end <= bytes.len())
        .ok_or_else(not_ours)?;
    engine
        .load_state(&bytes[HEADER_LEN..end], Instant::now())
        .map_err(|err| JournalError::Snapshot {
            path: path.to_owned(),
            err,
        })?;
    let (mut at, mut replayed, mut differ) = (end, 0u64, 0u64);
    let mut reply = [0u8; TAIL_SIZE];
    while at < bytes.len() {
        let (r, n) = match Record::decode(&bytes[at..]) {
            Ok(x) => x,
            Err(ReadEnd::Torn) => {
                warn!(
                    "state file {}: the last {} bytes are a record the daemon did not finish \
                     writing; dropped",
                    path.display(),
                    bytes.len() - at
                );
                break;
            }
            Err(ReadEnd::Malformed(kind)) => {
                return Err(JournalError::Record {
                    path: path.to_owned(),
                    kind,
                    offset: at,
                })
            }
        };
        at += n;
        match r {
            Record::Request(a, readable) => {
                replayed += 1;
                marks.next_avail[0] = a.pos.wrapping_add(1);
                let used = engine.handle_request(&readable, &mut reply);
                if used != TAIL_SIZE || reply[0] != a.status {
                    differ += 1;
                }
                window.push(a);
            }
            Record::Config(offset, data) => {
                if let Err(e) = engine.write_config(offset, &data) {
                    warn!("state file: config write at {offset} refused on replay: {e}");
                }
            }
            Record::Features(f) => engine.negotiate(Features::from_bits_truncate(f)),
            Record::Reset => {
                engine.reset();
                window.clear();
            }
            Record::Rings(m) => {
                *marks = m;
                window.clear();
            }
            Record::Answered(a) => window.push(a),
        }
    }
    // Nothing has cached a translation of this process yet.
    engine.take_invalidations();
    let s = engine.stats();
    info!(
        "state file {}: resumed {} domains, {} mappings, {} tables ({replayed} requests \
         replayed); the request ring was at {}",
        path.display(),
        s.domains,
        s.mappings,
        s.tables,
        marks.next_avail[0]
    );
    if differ > 0 {
        warn!("state file: {differ} replayed request(s) answered differently than the first time");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
