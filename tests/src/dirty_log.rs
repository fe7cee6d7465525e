//! The dirty-page log a frontend hands a backend for a live migration (vhost-user
//! SET_LOG_BASE with LOG_SHMFD): one bit per 4 KiB page of guest-physical address, bit
//! `gpa / 4096 % 8` of byte `gpa / 4096 / 8`, set by the backend for every page it writes.
//!
//! The log lives in an unlinked temporary file: the backend maps it shared, this side reads
//! and clears it with plain file I/O (the page cache is the one both see).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use vhost::VhostUserDirtyLogRegion;

use crate::error::Result;

/// Bytes of guest-physical address one log bit stands for.
pub const LOG_PAGE: u64 = 0x1000;

/// A log covering guest-physical addresses `[0, end)`.
#[derive(Debug)]
pub struct DirtyLog {
    file: File,
    len: u64,
}

impl DirtyLog {
    /// A clean log for guest RAM that ends at `end` (exclusive).
    pub fn new(end: u64) -> Result<Self> {
        let len = end.div_ceil(LOG_PAGE).div_ceil(8);
        let file = tempfile::tempfile()?;
        file.set_len(len)?;
        Ok(Self { file, len })
    }

    /// What SET_LOG_BASE carries: the whole file, from offset 0.
    #[must_use]
    pub fn region(&self) -> VhostUserDirtyLogRegion {
        VhostUserDirtyLogRegion {
            mmap_size: self.len,
            mmap_offset: 0,
            mmap_handle: self.file.as_raw_fd(),
        }
    }

    /// The first guest-physical address of every page marked dirty, in order.
    pub fn dirty_pages(&self) -> Result<Vec<u64>> {
        let mut bytes = vec![0u8; usize::try_from(self.len).unwrap_or(usize::MAX)];
        self.file.read_exact_at(&mut bytes, 0)?;
        let mut pages = Vec::new();
        for (i, b) in (0u64..).zip(&bytes) {
            for bit in 0..8 {
                if b & (1 << bit) != 0 {
                    pages.push((i * 8 + bit) * LOG_PAGE);
                }
            }
        }
        Ok(pages)
    }

    /// Clears every bit, as a frontend does after it copied the pages they name.
    pub fn clear(&self) -> Result<()> {
        let zeros = vec![0u8; usize::try_from(self.len).unwrap_or(usize::MAX)];
        self.file.write_all_at(&zeros, 0)?;
        Ok(())
    }
}
