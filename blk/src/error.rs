//! The backend's errors.

use std::path::PathBuf;

/// Why setting up or serving the device failed, or why a disk access was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The disk size is below one sector or above the RAM-disk limit.
    #[error("disk size {0} bytes is out of range (one sector to 4 GiB of RAM)")]
    DiskSize(u64),
    /// The disk file cannot be opened.
    #[error("cannot open {path}: {err}", path = .0.display(), err = .1)]
    Open(PathBuf, #[source] std::io::Error),
    /// A request's range leaves the disk.
    #[error("sector {0} range leaves the disk")]
    OutOfRange(u64),
    /// A write to a read-only disk.
    #[error("the disk is read-only")]
    ReadOnly,
    /// The disk file failed.
    #[error("disk I/O: {0}")]
    Io(#[source] std::io::Error),
    /// An eventfd or epoll registration of the serve loop failed.
    #[error("cannot set up the device: {0}")]
    Setup(#[source] std::io::Error),
    /// vhost-user-backend refused to create the daemon.
    #[error("cannot create the vhost-user daemon: {0}")]
    CreateDaemon(vhost_user_backend::Error),
    /// The socket cannot be served.
    #[error("cannot serve {path}: {err}", path = .0.display(), err = .1)]
    Serve(PathBuf, vhost_user_backend::Error),
}
