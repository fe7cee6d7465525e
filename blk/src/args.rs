//! The command line.

use std::path::PathBuf;

use clap::Parser;

use crate::disk::{Disk, SECTOR_SIZE};
use crate::error::Error;

/// A vhost-user virtio-blk device whose guest-memory accesses the virtio-iommu daemon can
/// confine.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    /// The vhost-user socket to listen on.
    #[arg(long)]
    pub socket_path: PathBuf,
    /// Back the disk with this file (its whole sectors) instead of RAM.
    #[arg(long, conflicts_with = "ram_size")]
    pub disk_file: Option<PathBuf>,
    /// Size of the RAM disk in bytes (whole sectors).
    #[arg(long, default_value_t = 64 << 20)]
    pub ram_size: u64,
    /// Refuse writes (offers VIRTIO_BLK_F_RO).
    #[arg(long)]
    pub read_only: bool,
    /// Largest queue size a driver may set up.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=32768))]
    pub queue_size: u16,
    /// Confine the device: translate every guest-memory access through the virtio-iommu
    /// daemon's translation socket (offers VIRTIO_F_ACCESS_PLATFORM).
    #[arg(long, requires = "endpoint")]
    pub translation_socket: Option<PathBuf>,
    /// The device's endpoint ID in the guest's IOMMU (with --translation-socket).
    #[arg(long, requires = "translation_socket")]
    pub endpoint: Option<u32>,
}

impl Args {
    /// The disk the arguments describe.
    ///
    /// # Errors
    /// The file cannot be opened, or a size is out of range.
    pub fn disk(&self) -> Result<Disk, Error> {
        match &self.disk_file {
            Some(path) => Disk::file(path, self.read_only),
            None => Disk::ram(self.ram_size / SECTOR_SIZE * SECTOR_SIZE, self.read_only),
        }
    }
}
