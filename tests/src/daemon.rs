//! The `vhost-device-iommu` daemon as a child process, and a client for its control socket.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::frontend::{Frontend, CONNECT_TIMEOUT};
use virtio_iommu_testkit::GuestMemory;

/// File name of the daemon binary.
pub const BINARY: &str = "vhost-device-iommu";
/// Environment variable that overrides where the binary is.
pub const BINARY_ENV: &str = "VHOST_DEVICE_IOMMU_BIN";
/// How long a control request waits for its reply.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest control reply line accepted (a dump of many mappings is large, but not unbounded).
pub const MAX_REPLY_LINE: u64 = 64 << 20;

/// Finds the daemon binary: `$VHOST_DEVICE_IOMMU_BIN`, or `target/<profile>/vhost-device-iommu`
/// next to this test executable (`target/<profile>/deps/<test>`).
pub fn binary_path() -> Result<PathBuf> {
    workspace_binary(BINARY, BINARY_ENV)
}

/// Finds the workspace binary `name`: `$env`, or `target/<profile>/<name>` next to this test
/// executable (`target/<profile>/deps/<test>`).
pub fn workspace_binary(name: &str, env: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| {
            if deps.ends_with("deps") {
                deps.parent()
            } else {
                Some(deps)
            }
        })
        .ok_or_else(|| Error::Usage(format!("odd test path {}", exe.display())))?;
    let bin = profile_dir.join(name);
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(Error::Usage(format!(
            "{} not found; build it first: `cargo build --bins` (same profile as the tests), or \
             set {env}",
            bin.display()
        )))
    }
}

/// A running daemon, killed when dropped. Its sockets and stderr log live in a private tempdir.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
    control: PathBuf,
    stderr: PathBuf,
}

impl Daemon {
    /// Starts the daemon with `--socket-path S --control-socket C` and `extra_args`.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(extra_args: &[S]) -> Result<Self> {
        Self::spawn_binary(&binary_path()?, extra_args)
    }

    /// As [`Self::spawn`], with `RUST_LOG` set to `rust_log` instead of the test's own.
    pub fn spawn_logging<S: AsRef<std::ffi::OsStr>>(
        rust_log: &str,
        extra_args: &[S],
    ) -> Result<Self> {
        Self::spawn_inner(&binary_path()?, Some(rust_log), extra_args)
    }

    /// As [`Self::spawn`], with an explicit binary.
    pub fn spawn_binary<S: AsRef<std::ffi::OsStr>>(
        binary: &Path,
        extra_args: &[S],
    ) -> Result<Self> {
        Self::spawn_inner(binary, None, extra_args)
    }

    fn spawn_inner<S: AsRef<std::ffi::OsStr>>(
        binary: &Path,
        rust_log: Option<&str>,
        extra_args: &[S],
    ) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("viommu-e2e").tempdir()?;
        let socket = dir.path().join("vhost.sock");
        let control = dir.path().join("control.sock");
        let stderr = dir.path().join("daemon.stderr");
        let child = Command::new(binary)
            .arg("--socket-path")
            .arg(&socket)
            .arg("--control-socket")
            .arg(&control)
            .args(extra_args)
            .env(
                "RUST_LOG",
                rust_log.map_or_else(
                    || std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".into()),
                    str::to_owned,
                ),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr)?)
            .spawn()?;
        Ok(Self {
            child,
            dir,
            socket,
            control,
            stderr,
        })
    }

    /// The vhost-user socket path.
    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The control socket path.
    #[must_use]
    pub fn control_socket(&self) -> &Path {
        &self.control
    }

    /// The daemon's private directory (for extra files a test wants to hand it).
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the daemon wrote to stderr so far.
    #[must_use]
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Connects a vhost-user frontend (retrying while the daemon starts).
    pub fn connect(&self, memory: Arc<GuestMemory>) -> Result<Frontend> {
        Frontend::connect(&self.socket, memory, CONNECT_TIMEOUT)
    }

    /// Connects to the control socket (retrying while the daemon starts).
    pub fn control(&self) -> Result<ControlClient> {
        ControlClient::connect(&self.control, CONNECT_TIMEOUT)
    }

    /// The exit status if the daemon has exited.
    pub fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Waits up to `timeout` for the daemon to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout(timeout, "the daemon to exit"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the daemon with SIGKILL (no cleanup of any kind) and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// The daemon's process id (e.g. to count its fds in `/proc/<pid>/fd`).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Only our own child, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- daemon stderr ----\n{}---- end ----", self.stderr());
        }
    }
}

/// A control-socket client: one JSON object per line each way.
#[derive(Debug)]
pub struct ControlClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl ControlClient {
    /// Connects, retrying for up to `timeout` while the socket does not exist or refuses.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        };
        stream.set_read_timeout(Some(CONTROL_TIMEOUT))?;
        stream.set_write_timeout(Some(CONTROL_TIMEOUT))?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends `request` and returns the reply object.
    pub fn request(&mut self, request: &Value) -> Result<Value> {
        let mut line = serde_json::to_vec(request)
            .map_err(|e| Error::Usage(format!("request not serialisable: {e}")))?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        let mut reply = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_REPLY_LINE)
            .read_until(b'\n', &mut reply)?;
        if n == 0 {
            return Err(Error::Protocol("control socket closed".into()));
        }
        if reply.last() != Some(&b'\n') {
            return Err(Error::Protocol(
                "control reply not newline-terminated".into(),
            ));
        }
        serde_json::from_slice(&reply)
            .map_err(|e| Error::Protocol(format!("control reply is not JSON: {e}")))
    }

    /// Sends `{"cmd": cmd}` merged with the fields of `args` (an object, or null).
    pub fn cmd(&mut self, cmd: &str, args: Value) -> Result<Value> {
        let mut req = match args {
            Value::Object(map) => map,
            Value::Null => serde_json::Map::new(),
            other => {
                return Err(Error::Usage(format!(
                    "control args must be an object: {other}"
                )))
            }
        };
        req.insert("cmd".into(), Value::String(cmd.into()));
        self.request(&Value::Object(req))
    }
}
