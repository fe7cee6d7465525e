//! Errors of the daemon (configuration, sockets, serve loop).

use std::io;
use std::path::PathBuf;

/// Everything that can stop the daemon or reject its configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command-line value could not be parsed or is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The semantics engine rejected the configuration.
    #[error("invalid device configuration: {0}")]
    Device(#[from] crate::engine::ConfigError),
    /// The thread that takes SIGINT/SIGTERM could not be started.
    #[error("starting the signal thread: {0}")]
    SignalThread(io::Error),
    /// The requested host IOMMU backend is not available.
    #[error("host backend `{0}` is not available: {1}")]
    HostUnavailable(&'static str, String),
    /// Creating the vhost-user daemon failed.
    #[error("could not create the vhost-user daemon: {0}")]
    CreateDaemon(vhost_user_backend::Error),
    /// Serving a frontend failed for a reason other than a disconnect.
    #[error("vhost-user serve on {path} failed: {err}")]
    Serve {
        /// The socket.
        path: PathBuf,
        /// The library's error.
        err: vhost_user_backend::Error,
    },
    /// The control socket could not be set up.
    #[error("control socket {path}: {err}")]
    ControlSocket {
        /// The socket.
        path: PathBuf,
        /// The I/O error.
        err: io::Error,
    },
    /// The translation socket could not be set up.
    #[error("translation socket {path}: {err}")]
    TranslationSocket {
        /// The socket.
        path: PathBuf,
        /// The I/O error.
        err: io::Error,
    },
    /// The state file cannot be resumed from or kept.
    #[error("{0}")]
    Journal(#[from] crate::journal::JournalError),
    /// An eventfd or another OS resource could not be created.
    #[error("system resource: {0}")]
    Io(#[from] io::Error),
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        // The vhost-user library's errors are not `Sync`; keep the message.
        io::Error::other(e.to_string())
    }
}

/// Result alias for the daemon.
pub type Result<T> = std::result::Result<T, Error>;
