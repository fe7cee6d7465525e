//! The vhost-user frontend: what QEMU does on the socket, on top of `vhost::vhost_user::Frontend`.
//!
//! Message order follows QEMU (`hw/virtio/vhost.c`, `vhost-user.c`):
//! - connect: GET_FEATURES, GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, SET_OWNER;
//! - start (driver sets DRIVER_OK): SET_FEATURES, SET_MEM_TABLE, then per ring SET_VRING_NUM,
//!   SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_KICK, SET_VRING_CALL, and last SET_VRING_ENABLE 1
//!   on every ring;
//! - stop (guest reset, VM pause): SET_VRING_ENABLE 0 on every ring, then GET_VRING_BASE on each.
//!
//! A guest reset and a VM pause send the same messages; only the base a ring restarts at differs
//! (0 after a reset, the saved base after a pause). See vhost-user-notes.md trap 6.
//!
//! Migration (`DEVICE_STATE`, as QEMU's `vhost_save_backend_state` / `vhost_load_backend_state`
//! for vhost-user-fs): with the device stopped, SET_DEVICE_STATE_FD(SAVE or LOAD, STOPPED) with a
//! pipe end, the bytes through the pipe until EOF, then CHECK_DEVICE_STATE.
//!
//! Dirty-page logging (QEMU's `vhost_migration_log` while the rings run): SET_LOG_BASE with the
//! log's fd, then SET_FEATURES with LOG_ALL and SET_VRING_ADDR with the log flag on every
//! running ring; at the end SET_FEATURES without LOG_ALL and SET_VRING_ADDR without the flag.
//! A device start while logging sends LOG_ALL in its SET_FEATURES.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags,
    VhostUserHeaderFlag, VhostUserVringAddrFlags,
};
use vhost::vhost_user::{
    Frontend as VuFrontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_iommu_testkit::rawq::Notify;
use virtio_iommu_testkit::GuestMemory;
pub use virtio_iommu_testkit::RingConfig;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::dirty_log::DirtyLog;
use crate::error::{Error, Result};

/// How long [`Frontend::connect`] keeps retrying by default.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request waits for its reply before failing (so a wedged backend fails the test
/// instead of hanging it).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Protocol features the frontend asks for (it takes the intersection with the backend's).
pub const WANTED_PROTOCOL_FEATURES: VhostUserProtocolFeatures = VhostUserProtocolFeatures::CONFIG
    .union(VhostUserProtocolFeatures::MQ)
    .union(VhostUserProtocolFeatures::REPLY_ACK)
    .union(VhostUserProtocolFeatures::DEVICE_STATE)
    .union(VhostUserProtocolFeatures::LOG_SHMFD);

/// `VHOST_USER_F_PROTOCOL_FEATURES`, a vhost-user bit inside the virtio feature word.
pub const PROTOCOL_FEATURES_BIT: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
/// `VHOST_F_LOG_ALL`: the frontend asks the backend to log the pages it writes.
pub const LOG_ALL_BIT: u64 = VhostUserVirtioFeatures::LOG_ALL.bits();
/// The vhost-user bits of the virtio feature word: a guest driver never sees them.
pub const VHOST_BITS: u64 = PROTOCOL_FEATURES_BIT | LOG_ALL_BIT;
/// `VIRTIO_F_ACCESS_PLATFORM`: the device is behind the platform's IOMMU, its ring addresses
/// are IOVAs.
pub const ACCESS_PLATFORM_BIT: u64 = 1 << 33;

/// Per-ring frontend state.
#[derive(Debug)]
struct Ring {
    config: Option<RingConfig>,
    /// Base to send in the next SET_VRING_BASE.
    next_base: u16,
    running: bool,
    kick: EventFd,
    call: EventFd,
}

/// One vhost-user connection, playing QEMU.
pub struct Frontend {
    vu: VuFrontend,
    memory: Arc<GuestMemory>,
    device_features: u64,
    protocol_features: VhostUserProtocolFeatures,
    driver_features: Option<u64>,
    /// Dirty logging is on: every SET_FEATURES carries [`LOG_ALL_BIT`].
    logging: bool,
    /// The log of the last SET_LOG_BASE, sent again by a device start while logging.
    log: Option<DirtyLog>,
    rings: Vec<Ring>,
}

impl std::fmt::Debug for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frontend")
            .field(
                "device_features",
                &format_args!("{:#x}", self.device_features),
            )
            .field("protocol_features", &self.protocol_features)
            .field("driver_features", &self.driver_features)
            .field("rings", &self.rings)
            .finish_non_exhaustive()
    }
}

impl Frontend {
    /// Connects to the backend at `path` and performs QEMU's initial handshake, retrying for up
    /// to `timeout` while the socket does not exist yet, refuses, or resets the connection (the
    /// daemon may still be starting, or re-listening after the previous session: trap 4).
    pub fn connect(path: &Path, memory: Arc<GuestMemory>, timeout: Duration) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        loop {
            match Self::try_connect(path, memory.clone()) {
                Ok(fe) => return Ok(fe),
                Err(e) if is_transient(&e) && Instant::now() < deadline => {
                    log::debug!("connect to {} failed ({e}), retrying", path.display());
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn try_connect(path: &Path, memory: Arc<GuestMemory>) -> Result<Self> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        // The real queue count comes from GET_QUEUE_NUM; until then allow the protocol maximum.
        let mut vu = VuFrontend::from_stream(stream, 256);
        let device_features = vu.get_features()?;
        if device_features & PROTOCOL_FEATURES_BIT == 0 {
            return Err(Error::Protocol(
                "backend does not offer VHOST_USER_F_PROTOCOL_FEATURES".into(),
            ));
        }
        let offered = vu.get_protocol_features()?;
        let protocol_features = offered & WANTED_PROTOCOL_FEATURES;
        vu.set_protocol_features(protocol_features)?;
        if protocol_features.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // Like QEMU with REPLY_ACK: every request without its own reply gets acked, so a
            // backend error surfaces as an error here instead of passing silently.
            vu.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let queues = if protocol_features.contains(VhostUserProtocolFeatures::MQ) {
            vu.get_queue_num()?
        } else {
            1
        };
        vu.set_owner()?;
        let queues = usize::try_from(queues)
            .map_err(|_| Error::Protocol(format!("queue count {queues}")))?;
        let rings = (0..queues)
            .map(|_| {
                Ok(Ring {
                    config: None,
                    next_base: 0,
                    running: false,
                    kick: EventFd::new(EFD_NONBLOCK)?,
                    call: EventFd::new(EFD_NONBLOCK)?,
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self {
            vu,
            memory,
            device_features,
            protocol_features,
            driver_features: None,
            logging: false,
            log: None,
            rings,
        })
    }

    /// The underlying `vhost` frontend, to send arbitrary (or out-of-order) messages.
    pub fn raw(&mut self) -> &mut VuFrontend {
        &mut self.vu
    }

    /// The guest RAM this frontend sends in SET_MEM_TABLE.
    #[must_use]
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.memory
    }

    /// Features from GET_FEATURES at connect time (including [`PROTOCOL_FEATURES_BIT`]).
    #[must_use]
    pub fn device_features(&self) -> u64 {
        self.device_features
    }

    /// The negotiated protocol features.
    #[must_use]
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol_features
    }

    /// Number of queues (GET_QUEUE_NUM, or 1 without MQ).
    #[must_use]
    pub fn num_queues(&self) -> usize {
        self.rings.len()
    }

    /// Sends GET_FEATURES again.
    pub fn get_features(&mut self) -> Result<u64> {
        Ok(self.vu.get_features()?)
    }

    /// Sends SET_FEATURES with `virtio_features` plus [`PROTOCOL_FEATURES_BIT`] (as QEMU does,
    /// so that rings stay disabled until SET_VRING_ENABLE) and, while logging,
    /// [`LOG_ALL_BIT`]; remembers them for [`Self::start`].
    pub fn set_features(&mut self, virtio_features: u64) -> Result<()> {
        let log = if self.logging { LOG_ALL_BIT } else { 0 };
        self.vu
            .set_features(virtio_features | PROTOCOL_FEATURES_BIT | log)?;
        self.driver_features = Some(virtio_features);
        Ok(())
    }

    /// SET_LOG_BASE: hands `log` to the backend (LOG_SHMFD), which marks in it every page it
    /// writes from now on; kept, and sent again by a device start while logging (SET_MEM_TABLE
    /// gives the backend new regions, without their log).
    pub fn set_log_base(&mut self, log: DirtyLog) -> Result<()> {
        self.vu.set_log_base(0, Some(log.region()))?;
        self.log = Some(log);
        Ok(())
    }

    /// The log of the last [`Self::set_log_base`].
    #[must_use]
    pub fn dirty_log(&self) -> Option<&DirtyLog> {
        self.log.as_ref()
    }

    /// Turns dirty logging on or off as QEMU's `vhost_migration_log` does: on a running
    /// device SET_FEATURES with the driver's features and LOG_ALL set or cleared, then
    /// SET_VRING_ADDR of every running ring with the log flag (the used ring's address as its
    /// log address) set or cleared; on a stopped one nothing is sent. Device starts send
    /// LOG_ALL while it is on.
    pub fn set_logging(&mut self, on: bool) -> Result<()> {
        self.logging = on;
        if !self.rings.iter().any(|r| r.running) {
            return Ok(());
        }
        let features = self
            .driver_features
            .ok_or_else(|| Error::Usage("logging before set_features".into()))?;
        self.set_features(features)?;
        for i in 0..self.rings.len() {
            let ring = &self.rings[i];
            if let (true, Some(config)) = (ring.running, ring.config) {
                let data = self.vring_addr(config, on)?;
                self.vu.set_vring_addr(i, &data)?;
            }
        }
        Ok(())
    }

    /// Sends SET_MEM_TABLE with the guest RAM's regions.
    pub fn set_mem_table(&mut self) -> Result<()> {
        self.vu.set_mem_table(&regions(&self.memory))?;
        Ok(())
    }

    /// Records the layout [`Self::start`] will give ring `index`, at base 0 (`None`: leave the
    /// ring unset).
    pub fn set_ring_config(&mut self, index: usize, config: Option<RingConfig>) -> Result<()> {
        let ring = self.ring_mut(index)?;
        ring.config = config;
        ring.next_base = 0;
        Ok(())
    }

    /// The layout recorded for ring `index`.
    pub fn ring_config(&self, index: usize) -> Result<Option<RingConfig>> {
        Ok(self.ring(index)?.config)
    }

    /// Whether ring `index` has been started and not stopped since.
    pub fn ring_running(&self, index: usize) -> Result<bool> {
        Ok(self.ring(index)?.running)
    }

    /// The base ring `index` restarts at (what its last GET_VRING_BASE returned, or 0).
    pub fn ring_next_base(&self, index: usize) -> Result<u16> {
        Ok(self.ring(index)?.next_base)
    }

    /// Sets up one ring at `base`: SET_VRING_NUM, BASE, ADDR, KICK, CALL (not ENABLE).
    pub fn setup_ring(&mut self, index: usize, config: RingConfig, base: u16) -> Result<()> {
        let data = self.vring_addr(config, self.logging)?;
        self.ring(index)?;
        self.vu.set_vring_num(index, config.size)?;
        self.vu.set_vring_base(index, base)?;
        self.vu.set_vring_addr(index, &data)?;
        let ring = &self.rings[index];
        self.vu.set_vring_kick(index, &ring.kick)?;
        self.vu.set_vring_call(index, &ring.call)?;
        let ring = &mut self.rings[index];
        ring.config = Some(config);
        ring.next_base = base;
        Ok(())
    }

    /// Sends SET_VRING_ENABLE for ring `index`.
    pub fn enable_ring(&mut self, index: usize, enable: bool) -> Result<()> {
        self.ring(index)?;
        self.vu.set_vring_enable(index, enable)?;
        Ok(())
    }

    /// Stops one ring (SET_VRING_ENABLE 0, GET_VRING_BASE) and returns (and remembers) its base.
    pub fn stop_ring(&mut self, index: usize) -> Result<u16> {
        self.enable_ring(index, false)?;
        self.get_vring_base(index)
    }

    /// Sends GET_VRING_BASE alone; the returned base is remembered for the next start.
    pub fn get_vring_base(&mut self, index: usize) -> Result<u16> {
        self.ring(index)?;
        let base = self.vu.get_vring_base(index)?;
        let base = u16::try_from(base)
            .map_err(|_| Error::Protocol(format!("ring {index} base {base:#x} > u16")))?;
        let ring = &mut self.rings[index];
        ring.next_base = base;
        ring.running = false;
        Ok(base)
    }

    /// Starts the device like QEMU's `vhost_dev_start`: SET_FEATURES (the last features given
    /// to [`Self::set_features`]), SET_MEM_TABLE, every configured ring at its next base,
    /// SET_LOG_BASE while logging, then SET_VRING_ENABLE 1 on each ring.
    pub fn start(&mut self) -> Result<()> {
        let features = self
            .driver_features
            .ok_or_else(|| Error::Usage("start before set_features".into()))?;
        self.set_features(features)?;
        self.set_mem_table()?;
        let configured: Vec<(usize, RingConfig, u16)> = self
            .rings
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.config.map(|c| (i, c, r.next_base)))
            .collect();
        for &(i, config, base) in &configured {
            self.setup_ring(i, config, base)?;
        }
        if let (true, Some(log)) = (self.logging, &self.log) {
            self.vu.set_log_base(0, Some(log.region()))?;
        }
        for &(i, _, _) in &configured {
            self.enable_ring(i, true)?;
            self.rings[i].running = true;
        }
        Ok(())
    }

    /// Starts one configured ring while the device runs (a queue set up after DRIVER_OK): set
    /// up at its next base, then SET_VRING_ENABLE 1.
    pub fn start_ring(&mut self, index: usize) -> Result<()> {
        let ring = self.ring(index)?;
        let config = ring
            .config
            .ok_or_else(|| Error::Usage(format!("ring {index} has no layout")))?;
        let base = ring.next_base;
        self.setup_ring(index, config, base)?;
        self.enable_ring(index, true)?;
        self.rings[index].running = true;
        Ok(())
    }

    /// Convenience: features, ring layouts (by index), then [`Self::start`] with every ring at 0.
    pub fn configure(&mut self, virtio_features: u64, rings: &[(usize, RingConfig)]) -> Result<()> {
        for &(i, config) in rings {
            self.set_ring_config(i, Some(config))?;
        }
        self.driver_features = Some(virtio_features);
        self.start()
    }

    /// Stops the device like QEMU's `vhost_dev_stop`: SET_VRING_ENABLE 0 on every running ring,
    /// then GET_VRING_BASE on each. Returns the bases by ring index (`None`: was not running).
    pub fn stop(&mut self) -> Result<Vec<Option<u16>>> {
        let running: Vec<usize> = (0..self.rings.len())
            .filter(|&i| self.rings[i].running)
            .collect();
        for &i in &running {
            self.enable_ring(i, false)?;
        }
        let mut bases = vec![None; self.rings.len()];
        for &i in &running {
            bases[i] = Some(self.get_vring_base(i)?);
        }
        Ok(bases)
    }

    /// Guest reset (reboot): stop, run `reinit` (the guest re-initialising its queue memory,
    /// e.g. `RawQueue::reset`), then start again with every ring at base 0. Returns the bases
    /// the rings had when stopped.
    pub fn guest_reset<E: Into<Error>>(
        &mut self,
        reinit: impl FnOnce() -> std::result::Result<(), E>,
    ) -> Result<Vec<Option<u16>>> {
        let bases = self.stop()?;
        reinit().map_err(Into::into)?;
        self.start_fresh()?;
        Ok(bases)
    }

    /// [`Self::start`] with every ring at base 0 (the second half of a guest reset).
    pub fn start_fresh(&mut self) -> Result<()> {
        for ring in &mut self.rings {
            ring.next_base = 0;
        }
        self.start()
    }

    /// VM pause then resume (stop/cont, or a migration to the same backend): stop, then restart
    /// every ring at its saved base, ring memory untouched. Returns the saved bases.
    pub fn pause_resume(&mut self) -> Result<Vec<Option<u16>>> {
        let bases = self.stop()?;
        self.start()?;
        Ok(bases)
    }

    /// Records the base ring `index` starts at next (what a migration destination gets from the
    /// source's GET_VRING_BASE through the migration stream).
    pub fn set_ring_base(&mut self, index: usize, base: u16) -> Result<()> {
        self.ring_mut(index)?.next_base = base;
        Ok(())
    }

    /// Records the features [`Self::start`] sends (on a migration destination: the source
    /// driver's), without sending anything yet.
    pub fn set_driver_features(&mut self, virtio_features: u64) {
        self.driver_features = Some(virtio_features);
    }

    fn device_stopped(&self, what: &str) -> Result<()> {
        if self.rings.iter().any(|r| r.running) {
            return Err(Error::Usage(format!(
                "{what} while the device runs: stop it first"
            )));
        }
        Ok(())
    }

    /// SAVE: the backend's device state, read from a pipe to its end, then CHECK_DEVICE_STATE.
    /// The device must be stopped ([`Self::stop`]).
    pub fn save_state(&mut self) -> Result<Vec<u8>> {
        self.device_stopped("SAVE")?;
        let (read, write) = pipe()?;
        self.vu.set_device_state_fd(
            VhostTransferStateDirection::SAVE,
            VhostTransferStatePhase::STOPPED,
            write,
        )?;
        let mut bytes = Vec::new();
        File::from(read).read_to_end(&mut bytes)?;
        self.vu.check_device_state()?;
        Ok(bytes)
    }

    /// LOAD: `bytes` written into a pipe and closed, then CHECK_DEVICE_STATE (which fails when
    /// the backend refused the state). The device must be stopped (a migration destination
    /// loads before its first start).
    pub fn load_state(&mut self, bytes: &[u8]) -> Result<()> {
        self.device_stopped("LOAD")?;
        let (read, write) = pipe()?;
        self.vu.set_device_state_fd(
            VhostTransferStateDirection::LOAD,
            VhostTransferStatePhase::STOPPED,
            read,
        )?;
        let mut w = File::from(write);
        // A backend that refuses early closes its end: the rest of the write then fails with
        // EPIPE, and CHECK_DEVICE_STATE says why.
        let written = w.write_all(bytes);
        drop(w);
        self.vu.check_device_state()?;
        written?;
        Ok(())
    }

    /// Signals ring `index`'s kick eventfd (what a guest's queue notify becomes).
    pub fn kick(&self, index: usize) -> Result<()> {
        self.ring(index)?.kick.write(1)?;
        Ok(())
    }

    /// Ring `index`'s call eventfd (non-blocking), for a frontend that sleeps on it with
    /// poll(2) as a VMM's event loop does; reading it consumes it as [`Self::take_call`] does.
    pub fn call_eventfd(&self, index: usize) -> Result<&EventFd> {
        Ok(&self.ring(index)?.call)
    }

    /// Consumes ring `index`'s call eventfd without blocking; true if the backend signalled it.
    pub fn take_call(&self, index: usize) -> Result<bool> {
        match self.ring(index)?.call.read() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits up to `timeout` for ring `index`'s call eventfd, consuming it; false on timeout.
    pub fn wait_call(&self, index: usize, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.take_call(index)? {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// GET_CONFIG of `len` bytes at config-space `offset` (no flags, like QEMU).
    ///
    /// Beware: when the backend refuses (a reply without payload), vhost 0.18's frontend keeps
    /// waiting for the payload; the call fails only after [`REPLY_TIMEOUT`] and the connection
    /// is out of step afterwards. Only ask for ranges the backend accepts.
    pub fn get_config(&self, offset: u32, len: u32) -> Result<Vec<u8>> {
        let buf = vec![0; usize::try_from(len).map_err(|_| Error::Usage("len".into()))?];
        // `vhost`'s frontend is a shared handle; a clone lets config reads take `&self`
        // (virtio-drivers reads config space through `&self`).
        let (_, data) =
            self.vu
                .clone()
                .get_config(offset, len, VhostUserConfigFlags::empty(), &buf)?;
        Ok(data)
    }

    /// SET_CONFIG of `data` at config-space `offset` (no flags: QEMU's "frontend" write type).
    pub fn set_config(&self, offset: u32, data: &[u8]) -> Result<()> {
        self.vu
            .clone()
            .set_config(offset, VhostUserConfigFlags::empty(), data)?;
        Ok(())
    }

    /// SET_VRING_ADDR's payload for `config`; `log`: with the log flag, the used ring's
    /// guest-physical address as the log address (as QEMU sends it). With ACCESS_PLATFORM
    /// negotiated the ring addresses are IOVAs and go as they are, as QEMU sends them for a
    /// device behind its vIOMMU; otherwise they are guest-physical and go as frontend addresses.
    fn vring_addr(&self, config: RingConfig, log: bool) -> Result<VringConfigData> {
        let iovas = self
            .driver_features
            .is_some_and(|f| f & ACCESS_PLATFORM_BIT != 0);
        let ring = |a: u64| if iovas { Ok(a) } else { self.host_addr(a) };
        let flags = if log {
            VhostUserVringAddrFlags::VHOST_VRING_F_LOG.bits()
        } else {
            0
        };
        Ok(VringConfigData {
            queue_max_size: config.size,
            queue_size: config.size,
            flags,
            desc_table_addr: ring(config.desc)?,
            used_ring_addr: ring(config.used)?,
            avail_ring_addr: ring(config.avail)?,
            log_addr: log.then_some(config.used),
        })
    }

    /// Host virtual address of a GPA: vring addresses travel as frontend addresses, which the
    /// backend translates through the SET_MEM_TABLE regions.
    fn host_addr(&self, gpa: u64) -> Result<u64> {
        Ok(self.memory.host_ptr(gpa, 0)?.as_ptr() as u64)
    }

    fn ring(&self, index: usize) -> Result<&Ring> {
        self.rings
            .get(index)
            .ok_or_else(|| Error::Usage(format!("no ring {index}")))
    }

    fn ring_mut(&mut self, index: usize) -> Result<&mut Ring> {
        self.rings
            .get_mut(index)
            .ok_or_else(|| Error::Usage(format!("no ring {index}")))
    }
}

/// A pipe (read end, write end), close-on-exec, as QEMU makes for a state transfer.
fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill; nothing else is touched.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Errors worth retrying while a daemon starts or re-listens.
fn is_transient(e: &Error) -> bool {
    use std::io::ErrorKind as K;
    let kind = match e {
        Error::Io(io) => io.kind(),
        Error::Vhost(vhost::Error::VhostUserProtocol(
            vhost::vhost_user::Error::SocketConnect(io) | vhost::vhost_user::Error::SocketError(io),
        )) => io.kind(),
        Error::Vhost(vhost::Error::VhostUserProtocol(
            vhost::vhost_user::Error::SocketBroken(_)
            | vhost::vhost_user::Error::Disconnected
            | vhost::vhost_user::Error::PartialMessage,
        )) => return true,
        _ => return false,
    };
    matches!(
        kind,
        K::NotFound | K::ConnectionRefused | K::ConnectionReset | K::BrokenPipe | K::UnexpectedEof
    )
}

impl Notify for Frontend {
    fn notify(&self, index: usize) -> virtio_iommu_testkit::Result<()> {
        self.kick(index).map_err(|e| match e {
            Error::Kit(k) => k,
            Error::Io(io) => virtio_iommu_testkit::Error::Io(io),
            other => virtio_iommu_testkit::Error::Usage(other.to_string()),
        })
    }
}

/// The region list for SET_MEM_TABLE. `userspace_addr` is this process's mapping, as QEMU
/// sends its own virtual addresses (vring addresses are then translated by the backend).
fn regions(memory: &GuestMemory) -> Vec<VhostUserMemoryRegionInfo> {
    vec![VhostUserMemoryRegionInfo {
        guest_phys_addr: memory.base(),
        memory_size: memory.size(),
        userspace_addr: memory.host_base(),
        mmap_offset: 0,
        mmap_handle: memory.file().as_raw_fd(),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_iommu_testkit::memory::PAGE_SIZE;

    #[test]
    fn one_region_of_the_whole_ram() {
        let m = GuestMemory::new(0x10_0000, 4 * PAGE_SIZE).unwrap();
        let r = regions(&m);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].guest_phys_addr, r[0].memory_size),
            (0x10_0000, 4 * PAGE_SIZE)
        );
        assert_eq!(r[0].userspace_addr, m.host_base());
    }
}
