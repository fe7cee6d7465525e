//! The `vhost-user-blk-confined` backend as a child process, on a file-backed disk the test
//! can read and seed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use virtio_iommu_testkit::GuestMemory;

use crate::daemon::workspace_binary;
use crate::error::Result;
use crate::frontend::{Frontend, CONNECT_TIMEOUT};

/// File name of the blk backend binary.
pub const BLK_BINARY: &str = "vhost-user-blk-confined";
/// Environment variable that overrides where the binary is.
pub const BLK_BINARY_ENV: &str = "VHOST_USER_BLK_CONFINED_BIN";
/// virtio-blk's sector size.
pub const SECTOR: usize = 512;

/// A running blk backend, killed when dropped. Its socket, disk file and stderr log live in a
/// private tempdir.
#[derive(Debug)]
pub struct BlkDaemon {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
    disk: PathBuf,
    stderr: PathBuf,
}

impl BlkDaemon {
    /// Starts the backend on a disk file holding `disk` (whole sectors), with `extra_args`.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(disk: &[u8], extra_args: &[S]) -> Result<Self> {
        let binary = workspace_binary(BLK_BINARY, BLK_BINARY_ENV)?;
        let dir = tempfile::Builder::new().prefix("vublk-e2e").tempdir()?;
        let socket = dir.path().join("blk.sock");
        let disk_path = dir.path().join("disk.img");
        let stderr = dir.path().join("blk.stderr");
        std::fs::write(&disk_path, disk)?;
        let child = Command::new(binary)
            .arg("--socket-path")
            .arg(&socket)
            .arg("--disk-file")
            .arg(&disk_path)
            .args(extra_args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr)?)
            .spawn()?;
        Ok(Self {
            child,
            dir,
            socket,
            disk: disk_path,
            stderr,
        })
    }

    /// The vhost-user socket path.
    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The backend's private directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Connects a vhost-user frontend (retrying while the backend starts).
    pub fn connect(&self, memory: Arc<GuestMemory>) -> Result<Frontend> {
        Frontend::connect(&self.socket, memory, CONNECT_TIMEOUT)
    }

    /// The disk file's current bytes.
    pub fn disk(&self) -> Result<Vec<u8>> {
        Ok(std::fs::read(&self.disk)?)
    }

    /// `count` sectors of the disk file from `sector` on.
    pub fn sectors(&self, sector: usize, count: usize) -> Result<Vec<u8>> {
        let d = self.disk()?;
        let start = sector.saturating_mul(SECTOR).min(d.len());
        let end = start
            .saturating_add(count.saturating_mul(SECTOR))
            .min(d.len());
        Ok(d[start..end].to_vec())
    }

    /// What the backend wrote to stderr so far.
    #[must_use]
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for BlkDaemon {
    fn drop(&mut self) {
        // Only our own child, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- blk backend stderr ----\n{}---- end ----",
                self.stderr()
            );
        }
    }
}
