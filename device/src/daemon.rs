//! The serve loop: one frontend at a time, a fresh device for every connection, and nothing
//! leaked across reconnects.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use log::{error, info, warn};
use vhost_user_backend::VhostUserDaemon;
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::epoll::EventSet;

use crate::args::{DaemonConfig, HostKind};
use crate::backend::{lock, IommuBackend, SharedEngine, HOST_EVENT, TIMER_EVENT, WAKE_EVENT};
use crate::control::{self, WakeSlot};
use crate::engine::{EndpointConfig, Engine, Footprint};
use crate::error::{Error, Result};
use crate::host::emulated::EmulatedHost;
use crate::host::iommufd::{IommufdConfig, IommufdHost};
use crate::host::{HostIommu, ReservedRegion};
use crate::journal::{Journal, SharedJournal};
use crate::translation::{self, Hub};
use crate::GuestRam;

/// The host backend with what the serve loop must poll for it.
#[derive(Debug)]
pub struct Host {
    /// The backend.
    pub iommu: Box<dyn HostIommu>,
    /// Readable when the host raised events of its own (iommufd fault queue, vEVENTQs).
    pub events: Option<File>,
}

/// Builds the host backend the configuration asks for, and adapts the device configuration to
/// what the host reports (reserved IOVA ranges, page sizes).
///
/// # Errors
/// [`Error::HostUnavailable`] with the host's reason when the backend cannot be opened.
pub fn make_host(config: &mut DaemonConfig) -> Result<Host> {
    match config.host {
        HostKind::Emulated => Ok(Host {
            iommu: Box::new(EmulatedHost::new()),
            events: None,
        }),
        HostKind::Iommufd => {
            let cfg = IommufdConfig {
                endpoints: config.vfio.clone(),
                page_requests: config.engine.offer_page_request,
                iommufd_fd: config.iommufd_fd,
            };
            let mut host = IommufdHost::open(&cfg)
                .map_err(|e| Error::HostUnavailable("iommufd", e.to_string()))?;
            for (ep, regions) in host.all_reserved_regions() {
                carve_endpoint(&mut config.engine.endpoints, ep, regions);
                if let Some(mask) = host.page_size_mask(ep) {
                    config.engine.page_size_mask &= mask;
                }
            }
            if config.engine.offer_page_request {
                host.alloc_fault_queue()
                    .map_err(|e| Error::HostUnavailable("iommufd", e.to_string()))?;
            }
            let events = Some(
                host.events_fd()
                    .map_err(|e| Error::HostUnavailable("iommufd", e.to_string()))?,
            );
            Ok(Host {
                iommu: Box::new(host),
                events,
            })
        }
    }
}

/// The signals that stop the daemon.
const STOP_SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

fn stop_signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame.
    unsafe { libc::sigemptyset(&raw mut set) };
    for sig in STOP_SIGNALS {
        // SAFETY: as above; `sig` is a valid signal number.
        unsafe { libc::sigaddset(&raw mut set, sig) };
    }
    set
}

/// Blocks SIGINT and SIGTERM in the calling thread, and so in every thread it starts later.
/// Call it first in `main`; [`Daemon::stop_on_signals`] then takes them in a thread of its own.
pub fn block_stop_signals() {
    let set = stop_signal_set();
    // SAFETY: `set` is initialised; a null old-mask pointer is allowed.
    let rc =
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut()) };
    if rc != 0 {
        warn!("blocking SIGINT/SIGTERM failed ({rc}): they will end the daemon without cleanup");
    }
}

/// Gives endpoint `ep` its own configuration with `reserved` (the host's reserved ranges),
/// splitting it out of the range that contained it and keeping that range's capabilities.
fn carve_endpoint(endpoints: &mut Vec<EndpointConfig>, ep: u32, reserved: Vec<ReservedRegion>) {
    let Some(i) = endpoints.iter().position(|e| e.ids.contains(&ep)) else {
        return;
    };
    let orig = endpoints.remove(i);
    let (lo, hi) = (*orig.ids.start(), *orig.ids.end());
    if lo < ep {
        endpoints.push(EndpointConfig {
            ids: lo..=ep - 1,
            ..orig.clone()
        });
    }
    if ep < hi {
        endpoints.push(EndpointConfig {
            ids: ep + 1..=hi,
            ..orig.clone()
        });
    }
    endpoints.push(EndpointConfig {
        ids: ep..=ep,
        reserved,
        ..orig
    });
    endpoints.sort_by_key(|e| *e.ids.start());
}

/// A configured daemon: the engine plus its sockets.
#[derive(Debug)]
pub struct Daemon {
    config: DaemonConfig,
    engine: SharedEngine,
    wake: WakeSlot,
    stop: Arc<AtomicBool>,
    host_events: Option<File>,
    hub: Option<Arc<Hub>>,
    journal: Option<SharedJournal>,
}

impl Daemon {
    /// Builds the engine and binds the control socket (if configured).
    ///
    /// # Errors
    /// Host or device configuration errors, or the control socket cannot be bound.
    pub fn new(mut config: DaemonConfig) -> Result<Self> {
        let host = make_host(&mut config)?;
        let mut engine = Engine::new(config.engine.clone(), host.iommu).map_err(Error::Device)?;
        let journal = match &config.state_file {
            Some(path) => Some(Arc::new(parking_lot::Mutex::new(Journal::open(
                path,
                &mut engine,
            )?))),
            None => None,
        };
        let f = Footprint::of(&config.engine.limits);
        let mib = |b: u64| b.div_ceil(1 << 20);
        info!(
            "limits allow {} MiB of device state at most (mappings {}, domains and endpoints {}, \
             tables {}, page requests {}, events {} MiB)",
            mib(f.total()),
            mib(f.mappings),
            mib(f.domains),
            mib(f.tables),
            mib(f.page_requests),
            mib(f.events)
        );
        let engine = Arc::new(parking_lot::Mutex::new(engine));
        let wake: WakeSlot = Arc::new(Mutex::new(None));
        let hub = match &config.translation {
            Some(t) => Some(translation::spawn(t.clone(), engine.clone(), wake.clone())?),
            None => None,
        };
        if let Some(path) = &config.control_socket {
            control::spawn(
                path,
                config.max_control_clients,
                engine.clone(),
                wake.clone(),
                hub.clone(),
            )?;
        }
        Ok(Daemon {
            config,
            engine,
            wake,
            stop: Arc::new(AtomicBool::new(false)),
            host_events: host.events,
            hub,
            journal,
        })
    }

    /// The engine, e.g. for in-process inspection.
    #[must_use]
    pub fn engine(&self) -> SharedEngine {
        self.engine.clone()
    }

    /// Starts a thread that waits for SIGINT/SIGTERM (blocked by [`block_stop_signals`]) and
    /// then shuts the daemon down: the device's domains and the host are released (an iommufd
    /// host destroys every object it allocated and detaches its devices, which matters when the
    /// iommufd is shared with a VMM that outlives us) and the process exits with status 0.
    ///
    /// # Errors
    /// The thread cannot be started.
    pub fn stop_on_signals(&self) -> Result<()> {
        let engine = self.engine.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let set = stop_signal_set();
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is initialised and `sig` is a valid out-pointer.
                let rc = unsafe { libc::sigwait(&raw const set, &raw mut sig) };
                info!("signal {sig} (sigwait rc {rc}): releasing the host and exiting");
                let host = lock(&engine).replace_host(Box::new(EmulatedHost::new()));
                drop(host);
                std::process::exit(0);
            })
            .map(|_| ())
            .map_err(Error::SignalThread)
    }

    /// The translation service, if configured.
    #[must_use]
    pub fn translation(&self) -> Option<Arc<Hub>> {
        self.hub.clone()
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

    /// The frontend saved the state for a migration and went away without starting the
    /// device again: the guest runs on the destination now, so its domains and mappings are
    /// released here (with a state file too, which then holds the empty device).
    fn release_migrated(&self) {
        info!("the guest migrated away: releasing its state");
        let mut engine = lock(&self.engine);
        engine.system_reset();
        if let Some(hub) = &self.hub {
            hub.notify(engine.take_invalidations());
        }
        if let Some(j) = &self.journal {
            let mut j = j.lock();
            j.reset();
            j.compact(&engine);
        }
    }

    fn serve_one(&self) -> Result<()> {
        // Each connection starts from a freshly reset device (bypass back to its boot value);
        // translation clients drop what they cached of the last frontend's guest. With a
        // state file the state is the VM's, kept across reconnects as across restarts.
        if self.journal.is_none() {
            let mut engine = lock(&self.engine);
            engine.system_reset();
            if let Some(hub) = &self.hub {
                hub.notify(engine.take_invalidations());
            }
        }
        let backend = IommuBackend::new(
            self.engine.clone(),
            self.config.queue_size,
            self.hub.clone(),
            self.journal.clone(),
        )?
        .with_request_poll(self.config.request_poll);
        let wake = backend.wake_fd();
        let timer = backend.timer_fd();
        let backend = Arc::new(RwLock::new(backend));
        let mut daemon = VhostUserDaemon::new(
            "vhost-device-iommu".into(),
            backend.clone(),
            GuestMemoryAtomic::new(GuestRam::default()),
        )
        .map_err(Error::CreateDaemon)?;
        if let Some(handler) = daemon.get_epoll_handlers().first() {
            handler.register_listener(wake.as_raw_fd(), EventSet::IN, u64::from(WAKE_EVENT))?;
            handler.register_listener(timer, EventSet::IN, u64::from(TIMER_EVENT))?;
            if let Some(f) = &self.host_events {
                handler.register_listener(f.as_raw_fd(), EventSet::IN, u64::from(HOST_EVENT))?;
            }
        }
        *self
            .wake
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(wake);
        info!("listening on {}", self.config.socket_path.display());
        let result = daemon.serve(&self.config.socket_path);
        *self
            .wake
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
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
        let handed_off = backend
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .handed_off();
        if handed_off {
            self.release_migrated();
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
                error!(
                    "cannot listen on {}: {e}",
                    self.config.socket_path.display()
                );
                Err(Error::Serve {
                    path: self.config.socket_path.clone(),
                    err: e,
                })
            }
            Err(e) => {
                warn!("connection ended with an error: {e}; listening again");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use virtio_iommu_spec::probe::ResvMemSubtype;

    use super::*;

    fn ep(ids: core::ops::RangeInclusive<u32>) -> EndpointConfig {
        EndpointConfig {
            ids,
            reserved: vec![ReservedRegion::x86_msi()],
            pasid_bits: 5,
            page_requests: true,
            table_formats: Vec::new(),
        }
    }

    #[test]
    fn carving_an_endpoint_out_of_a_range() {
        let host = vec![ReservedRegion {
            start: 0,
            last: 0xfff,
            kind: ResvMemSubtype::Reserved,
        }];
        let mut eps = vec![ep(0..=0xff)];
        carve_endpoint(&mut eps, 0x18, host.clone());
        let ids: Vec<_> = eps.iter().map(|e| e.ids.clone()).collect();
        assert_eq!(ids, vec![0..=0x17, 0x18..=0x18, 0x19..=0xff]);
        assert_eq!(eps[1].reserved, host);
        assert_eq!(eps[1].pasid_bits, 5, "capabilities of the range are kept");
        assert_eq!(eps[0].reserved, vec![ReservedRegion::x86_msi()]);
        // Edges of a range and IDs outside every range.
        carve_endpoint(&mut eps, 0, host.clone());
        carve_endpoint(&mut eps, 0xff, host.clone());
        carve_endpoint(&mut eps, 0x1000, host);
        let ids: Vec<_> = eps.iter().map(|e| e.ids.clone()).collect();
        assert_eq!(
            ids,
            vec![0..=0, 1..=0x17, 0x18..=0x18, 0x19..=0xfe, 0xff..=0xff]
        );
    }

    #[test]
    fn engine_errors_reach_the_user_as_text() {
        let args = crate::args::Args::try_parse_from([
            "x",
            "--socket-path",
            "/tmp/unused.sock",
            "--probe-size",
            "8",
        ])
        .unwrap();
        let err = Daemon::new(DaemonConfig::try_from(args).unwrap())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "invalid device configuration: probe properties need 24 bytes but probe_size is 8"
        );
    }

    #[test]
    fn iommufd_without_dev_iommu_is_a_clear_error() {
        if std::path::Path::new("/dev/iommu").exists() {
            return; // A host with iommufd: the message is covered by the guest tests.
        }
        let args = crate::args::Args::try_parse_from([
            "x",
            "--socket-path",
            "/tmp/unused.sock",
            "--host",
            "iommufd",
        ])
        .unwrap();
        let mut cfg = DaemonConfig::try_from(args).unwrap();
        let err = make_host(&mut cfg).unwrap_err().to_string();
        assert!(
            err.contains("iommufd") && err.contains("/dev/iommu"),
            "{err}"
        );
    }
}
