//! The serve loop: one frontend at a time, a fresh device around the same disk for each.

use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::backend::{BlkBackend, WAKE_EVENT};
use crate::confinement::Confinement;
use crate::disk::SharedDisk;
use crate::error::Error;
use crate::frontend_shim::FrontendShim;
use crate::ring_iovas::RingIovas;

/// How long the shim waits for the library to listen on its private socket.
const LIBRARY_LISTEN_TIMEOUT: Duration = Duration::from_secs(5);

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
    let confined = iommu.is_some();
    let backend = BlkBackend::new(disk, queue_size, iommu).map_err(Error::Setup)?;
    let wake = backend.wake_fd();
    let ring_iovas = backend.ring_iovas();
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
    let result = if confined {
        serve_through_shim(&mut daemon, socket, ring_iovas)
    } else {
        daemon.serve(socket)
    };
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

/// Serves one frontend with the library behind a [`FrontendShim`]: the frontend connects to
/// `socket`, the library listens on a private socket the shim connects to.
fn serve_through_shim<I: Confinement>(
    daemon: &mut VhostUserDaemon<Arc<RwLock<BlkBackend<I>>>>,
    socket: &Path,
    ring_iovas: Arc<RingIovas>,
) -> vhost_user_backend::Result<()> {
    let listen_err = |e| {
        vhost_user_backend::Error::CreateVhostUserListener(vhost::vhost_user::Error::SocketError(e))
    };
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).map_err(listen_err)?;
    let dir = private_dir().map_err(listen_err)?;
    let inner = dir.join("library.sock");
    let frontend = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(listen_err(e));
            }
        }
    };
    debug!(
        "frontend connected; the library listens on {}",
        inner.display()
    );
    let path = inner.clone();
    let shim = std::thread::Builder::new()
        .name("blk-shim".into())
        .spawn(move || match connect_when_listening(&path) {
            Ok(library) => match FrontendShim::new(frontend, library, ring_iovas) {
                Ok(shim) => shim.run(),
                Err(e) => warn!("cannot set up the shim: {e}"),
            },
            Err(e) => warn!("the library does not listen on {}: {e}", path.display()),
        })
        .map_err(listen_err)?;
    let result = daemon.serve(&inner);
    let _ = shim.join();
    drop(listener);
    let _ = std::fs::remove_file(socket);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A fresh directory only this user can enter, for the library's socket.
fn private_dir() -> std::io::Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "vhost-user-blk-confined.{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let dir = std::env::temp_dir().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// Connects to `path` once something listens there (the library binds it as it starts).
fn connect_when_listening(path: &Path) -> std::io::Result<UnixStream> {
    let start = Instant::now();
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if start.elapsed() >= LIBRARY_LISTEN_TIMEOUT => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}
