//! The disk behind the device: RAM or a file, addressed in 512-byte sectors.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::Error;

/// virtio-blk's sector: every offset and length of a request is in these units.
pub const SECTOR_SIZE: u64 = 512;

/// Largest RAM disk accepted (the whole disk is allocated up front).
pub const MAX_RAM_BYTES: u64 = 4 << 30;

#[derive(Debug)]
enum Store {
    Ram(Vec<u8>),
    File(File),
}

/// A disk shared by the devices of successive connections.
pub type SharedDisk = std::sync::Arc<parking_lot::Mutex<Disk>>;

/// A fixed-size disk of whole sectors.
#[derive(Debug)]
pub struct Disk {
    store: Store,
    sectors: u64,
    read_only: bool,
}

impl Disk {
    /// A zeroed RAM disk of `bytes` (rounded down to whole sectors, at least one).
    ///
    /// # Errors
    /// `bytes` is smaller than a sector or larger than [`MAX_RAM_BYTES`].
    pub fn ram(bytes: u64, read_only: bool) -> Result<Self, Error> {
        if !(SECTOR_SIZE..=MAX_RAM_BYTES).contains(&bytes) {
            return Err(Error::DiskSize(bytes));
        }
        let sectors = bytes / SECTOR_SIZE;
        let len = usize::try_from(sectors * SECTOR_SIZE).map_err(|_| Error::DiskSize(bytes))?;
        Ok(Self {
            store: Store::Ram(vec![0; len]),
            sectors,
            read_only,
        })
    }

    /// The file at `path` as a disk of its whole sectors (a trailing partial sector is not
    /// exposed).
    ///
    /// # Errors
    /// The file cannot be opened, or holds less than one sector.
    pub fn file(path: &Path, read_only: bool) -> Result<Self, Error> {
        let open = |path: &Path| OpenOptions::new().read(true).write(!read_only).open(path);
        let file = open(path).map_err(|e| Error::Open(path.to_owned(), e))?;
        let bytes = file
            .metadata()
            .map_err(|e| Error::Open(path.to_owned(), e))?
            .len();
        if bytes < SECTOR_SIZE {
            return Err(Error::DiskSize(bytes));
        }
        Ok(Self {
            store: Store::File(file),
            sectors: bytes / SECTOR_SIZE,
            read_only,
        })
    }

    /// Size in sectors (the config space's `capacity`).
    #[must_use]
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether writes are refused (`VIRTIO_BLK_F_RO`).
    #[must_use]
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Byte offset of `len` bytes at `sector`, if they lie inside the disk.
    fn span(&self, sector: u64, len: usize) -> Option<u64> {
        let len = u64::try_from(len).ok()?;
        let start = sector.checked_mul(SECTOR_SIZE)?;
        let end = start.checked_add(len)?;
        (end <= self.sectors * SECTOR_SIZE).then_some(start)
    }

    /// Reads `buf.len()` bytes from `sector` on.
    ///
    /// # Errors
    /// The range leaves the disk, or the file read fails.
    pub fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), Error> {
        let start = self
            .span(sector, buf.len())
            .ok_or(Error::OutOfRange(sector))?;
        match &self.store {
            Store::Ram(v) => {
                // `span` bounded the range by the disk, whose length fits usize.
                let at = usize::try_from(start).map_err(|_| Error::OutOfRange(sector))?;
                buf.copy_from_slice(&v[at..at + buf.len()]);
                Ok(())
            }
            Store::File(f) => f.read_exact_at(buf, start).map_err(Error::Io),
        }
    }

    /// Writes `data` from `sector` on.
    ///
    /// # Errors
    /// The disk is read-only, the range leaves it, or the file write fails.
    pub fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), Error> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let start = self
            .span(sector, data.len())
            .ok_or(Error::OutOfRange(sector))?;
        match &mut self.store {
            Store::Ram(v) => {
                let at = usize::try_from(start).map_err(|_| Error::OutOfRange(sector))?;
                v[at..at + data.len()].copy_from_slice(data);
                Ok(())
            }
            Store::File(f) => f.write_all_at(data, start).map_err(Error::Io),
        }
    }

    /// Makes written data durable (`VIRTIO_BLK_T_FLUSH`).
    ///
    /// # Errors
    /// The file's sync fails.
    pub fn flush(&self) -> Result<(), Error> {
        match &self.store {
            Store::Ram(_) => Ok(()),
            Store::File(f) => f.sync_data().map_err(Error::Io),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_disk_reads_back_what_was_written_and_refuses_past_the_end() {
        let mut d = Disk::ram(4 * SECTOR_SIZE + 100, false).unwrap();
        assert_eq!(d.sectors(), 4);
        d.write(2, &[7; 512]).unwrap();
        let mut buf = [0u8; 1024];
        d.read(1, &mut buf).unwrap();
        assert_eq!(
            (&buf[..512], &buf[512..]),
            (&[0u8; 512][..], &[7u8; 512][..])
        );
        assert!(matches!(d.read(3, &mut buf), Err(Error::OutOfRange(3))));
        assert!(matches!(
            d.write(u64::MAX, &[0; 512]),
            Err(Error::OutOfRange(u64::MAX))
        ));
        d.read(3, &mut buf[..512]).unwrap();
    }

    #[test]
    fn read_only_disk_refuses_writes() {
        let mut d = Disk::ram(SECTOR_SIZE, true).unwrap();
        assert!(matches!(d.write(0, &[1; 512]), Err(Error::ReadOnly)));
        assert!(matches!(Disk::ram(0, false), Err(Error::DiskSize(0))));
    }

    #[test]
    fn file_disk_writes_land_at_their_sector_offsets() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(8 * SECTOR_SIZE).unwrap();
        let mut d = Disk::file(f.path(), false).unwrap();
        assert_eq!(d.sectors(), 8);
        d.write(5, b"sector five").unwrap();
        d.flush().unwrap();
        let raw = std::fs::read(f.path()).unwrap();
        assert_eq!(&raw[5 * 512..5 * 512 + 11], b"sector five");
        assert!(raw[..5 * 512].iter().all(|b| *b == 0));
    }
}
