//! The serve loop: one frontend at a time, a fresh device around the same disk for each.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use log::{error, info, warn};
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::backend::{BlkBackend, WAKE_EVENT};
use crate::confinement::Confinement;
use crate::disk::SharedDisk;
use crate::error::Error;

/// Serves `disk` on `socket` to one frontend, until it disconnects.
///
/// # Errors
/// The socket cannot be bound or the daemon cannot be created; a frontend that misbehaves or
/// disconnects is logged and ends the session normally.
pub fn serve_once<I: Confinement>(
    socket: &Path,
    disk: SharedDisk,
    queue_size: u16,
    iommu: Option<I>,
) -> Result<(), Error> {
    let backend = BlkBackend::new(disk, queue_size, iommu).map_err(Error::Setup)?;
    let wake = backend.wake_fd();
    let backend = Arc::new(RwLock::new(backend));
    let mut daemon = VhostUserDaemon::new(
        "vhost-user-blk-confined".into(),
        backend.clone(),
        GuestMemoryAtomic::new(GuestMemoryMmap::default()),
    )
    .map_err(Error::CreateDaemon)?;
    if let Some(handler) = daemon.get_epoll_handlers().first() {
        handler
            .register_listener(wake.as_raw_fd(), EventSet::IN, u64::from(WAKE_EVENT))
            .map_err(Error::Setup)?;
    }
    info!("listening on {}", socket.display());
    let result = daemon.serve(socket);
    // Dropping the daemon joins its queue thread; only then are the exit fds it leaked unused.
    drop(daemon);
    let leaked = backend
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take_handed_out_fds();
    for fd in leaked {
        // SAFETY: `fd` was created by `exit_event` for this connection and handed to the
        // library, which registered it in its epoll set and dropped ownership without closing
        // it; the epoll and its thread are gone (joined above), so nothing else refers to this
        // descriptor and closing it exactly once is sound.
        unsafe { libc::close(fd) };
    }
    match result {
        Ok(()) => info!("frontend disconnected"),
        Err(
            e @ (vhost_user_backend::Error::CreateVhostUserListener(_)
            | vhost_user_backend::Error::CreateBackendListener(_)),
        ) => {
            error!("cannot listen on {}: {e}", socket.display());
            return Err(Error::Serve(PathBuf::from(socket), e));
        }
        Err(e) => warn!("connection ended with an error: {e}; listening again"),
    }
    Ok(())
}
