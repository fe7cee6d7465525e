//! The serve loop: one frontend at a time, a fresh device for every connection, and nothing
//! leaked across reconnects.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use log::{error, info, warn};
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::args::{DaemonConfig, HostKind};
use crate::backend::{lock, IommuBackend, SharedViommu, WAKE_EVENT};
use crate::control::{self, WakeSlot};
use crate::error::{Error, Result};
use crate::host::emulated::EmulatedHost;
use crate::host::HostIommu;
use crate::viommu::Viommu;

/// Builds the host backend the configuration asks for.
///
/// # Errors
/// [`Error::HostUnavailable`] for a backend this build cannot provide.
pub fn make_host(kind: HostKind) -> Result<Box<dyn HostIommu>> {
    match kind {
        HostKind::Emulated => Ok(Box::new(EmulatedHost::new())),
        HostKind::Iommufd => Err(Error::HostUnavailable(
            "iommufd",
            "the iommufd backend is not implemented yet; use --host emulated".into(),
        )),
    }
}

/// A configured daemon: the engine plus its sockets.
#[derive(Debug)]
pub struct Daemon {
    config: DaemonConfig,
    viommu: SharedViommu,
    wake: WakeSlot,
    stop: Arc<AtomicBool>,
}

impl Daemon {
    /// Builds the engine and binds the control socket (if configured).
    ///
    /// # Errors
    /// Host or device configuration errors, or the control socket cannot be bound.
    pub fn new(config: DaemonConfig) -> Result<Self> {
        let host = make_host(config.host)?;
        let viommu = Viommu::new(config.viommu.clone(), host)
            .map_err(|e| Error::Device(format!("{e:?}")))?;
        let viommu = Arc::new(Mutex::new(viommu));
        let wake: WakeSlot = Arc::new(Mutex::new(None));
        if let Some(path) = &config.control_socket {
            control::spawn(path, viommu.clone(), wake.clone())?;
        }
        Ok(Daemon { config, viommu, wake, stop: Arc::new(AtomicBool::new(false)) })
    }

    /// The engine, e.g. for in-process inspection.
    #[must_use]
    pub fn viommu(&self) -> SharedViommu {
        self.viommu.clone()
    }

    /// A flag that ends [`Daemon::run`] after the current connection closes.
    #[must_use]
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Serves frontends one after another until the stop flag is set.
    ///
    /// # Errors
    /// Only errors that make serving impossible (e.g. the socket cannot be bound); a frontend
    /// that misbehaves or disconnects is logged and the daemon listens again.
    pub fn run(&self) -> Result<()> {
        while !self.stop.load(Ordering::Acquire) {
            self.serve_one()?;
        }
        Ok(())
    }

    fn serve_one(&self) -> Result<()> {
        // Each connection starts from a freshly reset device (bypass back to its boot value).
        lock(&self.viommu).system_reset();
        let backend = IommuBackend::new(self.viommu.clone(), self.config.queue_size)?;
        let wake = backend.wake_fd();
        let backend = Arc::new(RwLock::new(backend));
        let mut daemon = VhostUserDaemon::new(
            "vhost-device-iommu".into(),
            backend.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::default()),
        )
        .map_err(Error::CreateDaemon)?;
        for handler in daemon.get_epoll_handlers() {
            handler.register_listener(wake.as_raw_fd(), EventSet::IN, u64::from(WAKE_EVENT))?;
        }
        *self.wake.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(wake);
        info!("listening on {}", self.config.socket_path.display());
        let result = daemon.serve(&self.config.socket_path);
        *self.wake.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        // Dropping the daemon joins its queue thread; only then are the exit fds it leaked
        // unused, and we close them (vhost-user-backend keeps them as bare numbers).
        drop(daemon);
        let leaked = backend
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take_handed_out_fds();
        for fd in leaked {
            // SAFETY: `fd` was created by `exit_event` for this connection and handed to the
            // library, which registered it in its epoll set and dropped ownership without
            // closing it; the epoll and the thread using it are gone (joined above), so nothing
            // else refers to this descriptor and closing it exactly once is sound.
            unsafe { libc::close(fd) };
        }
        match result {
            Ok(()) => {
                info!("frontend disconnected");
                Ok(())
            }
            Err(
                e @ (vhost_user_backend::Error::CreateVhostUserListener(_)
                | vhost_user_backend::Error::CreateBackendListener(_)),
            ) => {
                error!("cannot listen on {}: {e}", self.config.socket_path.display());
                Err(Error::Serve { path: self.config.socket_path.clone(), err: e })
            }
            Err(e) => {
                warn!("connection ended with an error: {e}; listening again");
                Ok(())
            }
        }
    }
}
