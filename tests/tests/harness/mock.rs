//! A tiny in-process vhost-user backend to validate the harness without the real daemon.
//!
//! Two queues, a 40-byte config space, CONFIG | MQ | REPLY_ACK. Every request is answered by
//! writing `[STATUS, 0, 0, 0]` into the last 4 bytes of its writable part (which may span
//! several descriptors); the used length is the whole writable part, or 0 when it is shorter
//! than 4 bytes. Everything it sees is logged for the tests to check.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Listener, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_iommu_spec::features::{VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1};
use virtio_iommu_spec::{Config, Features};
use virtio_queue::QueueOwnedT;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use zerocopy::IntoBytes;

/// The status byte the mock writes.
pub const STATUS: u8 = 0x5a;
/// Virtio features the mock offers (device bits as the real device would have some).
pub const VIRTIO_FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_F_RING_INDIRECT_DESC
    | Features::MAP_UNMAP.bits()
    | Features::INPUT_RANGE.bits()
    | Features::BYPASS_CONFIG.bits();
/// Maximum queue size.
pub const MAX_QUEUE_SIZE: usize = 256;

/// The mock's initial config space.
pub fn initial_config() -> Config {
    Config {
        page_size_mask: 0xffff_ffff_ffff_f000.into(),
        input_range_start: 0.into(),
        input_range_end: 0x0000_ffff_ffff_ffff.into(),
        domain_range_start: 1.into(),
        domain_range_end: 1000.into(),
        probe_size: 0.into(),
        bypass: 1,
        reserved: [0; 3],
    }
}

/// One request as the mock saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Queue index.
    pub queue: u16,
    /// All device-readable bytes, concatenated.
    pub readable: Vec<u8>,
    /// Lengths of the device-writable descriptors.
    pub writable: Vec<u32>,
}

/// State shared by every connection of one mock server.
#[derive(Debug)]
pub struct MockState {
    /// Current config space.
    pub config: [u8; 40],
    /// Requests seen, in order.
    pub seen: Vec<Seen>,
    /// SET_CONFIG calls: (offset, bytes).
    pub config_writes: Vec<(u32, Vec<u8>)>,
    /// Features acked by the last SET_FEATURES.
    pub acked_features: u64,
}

struct MockBackend {
    state: Arc<Mutex<MockState>>,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
}

impl MockBackend {
    fn process(&self, queue: u16, vring: &VringRwLock) -> std::io::Result<()> {
        let mem = self.mem.memory();
        let chains: Vec<_> = match vring.get_mut().get_queue_mut().iter(mem.clone()) {
            Ok(it) => it.collect(),
            // A stopped ring (GET_VRING_BASE) may still get an event: nothing to do (trap 2).
            Err(_) => return Ok(()),
        };
        for chain in chains {
            let head = chain.head_index();
            let mut readable = Vec::new();
            for d in chain.clone().readable() {
                let mut buf = vec![0; d.len() as usize];
                mem.read_slice(&mut buf, d.addr())
                    .map_err(std::io::Error::other)?;
                readable.extend_from_slice(&buf);
            }
            let writable: Vec<(GuestAddress, u32)> = chain
                .clone()
                .writable()
                .map(|d| (d.addr(), d.len()))
                .collect();
            let total: u64 = writable.iter().map(|&(_, l)| u64::from(l)).sum();
            let used = if total >= 4 {
                let tail = [STATUS, 0, 0, 0];
                let tail_start = total - 4;
                let mut pos = 0u64;
                for &(addr, len) in &writable {
                    let end = pos + u64::from(len);
                    let (from, to) = (pos.max(tail_start), end.min(total));
                    if from < to {
                        let bytes = usize::try_from(from - tail_start)
                            .and_then(|a| Ok(a..usize::try_from(to - tail_start)?))
                            .map_err(std::io::Error::other)?;
                        let at = addr
                            .checked_add(from - pos)
                            .ok_or_else(|| std::io::Error::other("address overflow"))?;
                        mem.write_slice(&tail[bytes], at)
                            .map_err(std::io::Error::other)?;
                    }
                    pos = end;
                }
                u32::try_from(total).unwrap_or(u32::MAX)
            } else {
                0
            };
            self.state.lock().unwrap().seen.push(Seen {
                queue,
                readable,
                writable: writable.iter().map(|&(_, l)| l).collect(),
            });
            vring.add_used(head, used).map_err(std::io::Error::other)?;
        }
        vring.signal_used_queue()
    }
}

impl VhostUserBackendMut for MockBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        VIRTIO_FEATURES | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&mut self, features: u64) {
        self.state.lock().unwrap().acked_features = features;
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&mut self, _enabled: bool) {}

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let st = self.state.lock().unwrap();
        let (o, s) = (offset as usize, size as usize);
        // Out of range: an empty answer, which the protocol turns into an error reply.
        st.config
            .get(o..o.saturating_add(s))
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    fn set_config(&mut self, offset: u32, buf: &[u8]) -> std::io::Result<()> {
        let mut st = self.state.lock().unwrap();
        st.config_writes.push((offset, buf.to_vec()));
        let o = offset as usize;
        if let Some(dst) = st.config.get_mut(o..o.saturating_add(buf.len())) {
            dst.copy_from_slice(buf);
        }
        Ok(())
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> std::io::Result<()> {
        self.mem = mem;
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // Without one, dropping the daemon at the end of a session waits for its vring worker
        // forever. (The library leaks this fd per connection, trap 1: fine for a mock.)
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> std::io::Result<()> {
        match vrings.get(usize::from(device_event)) {
            Some(vring) => self.process(device_event, vring),
            None => Ok(()),
        }
    }
}

/// A mock backend listening on a socket, one connection at a time, until dropped.
pub struct MockServer {
    path: PathBuf,
    /// Shared state, for assertions.
    pub state: Arc<Mutex<MockState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl MockServer {
    /// Starts serving on a fresh socket in a tempdir.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mock.sock");
        Self::start_at(dir, path, std::time::Duration::ZERO)
    }

    /// Starts serving on `path` after `delay` (to test connect retries).
    pub fn start_at(dir: tempfile::TempDir, path: PathBuf, delay: std::time::Duration) -> Self {
        let mut config = [0u8; 40];
        config.copy_from_slice(initial_config().as_bytes());
        let state = Arc::new(Mutex::new(MockState {
            config,
            seen: Vec::new(),
            config_writes: Vec::new(),
            acked_features: 0,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, stp, p) = (state.clone(), stop.clone(), path.clone());
        let thread = std::thread::spawn(move || {
            std::thread::sleep(delay);
            let mut listener = Listener::new(&p, true).unwrap();
            while !stp.load(Ordering::Acquire) {
                let backend = Arc::new(Mutex::new(MockBackend {
                    state: st.clone(),
                    mem: GuestMemoryAtomic::new(GuestMemoryMmap::new()),
                }));
                let mut daemon = VhostUserDaemon::new(
                    "mock".into(),
                    backend,
                    GuestMemoryAtomic::new(GuestMemoryMmap::new()),
                )
                .unwrap();
                if let Err(e) = daemon.start(&mut listener) {
                    log::warn!("mock: accept: {e}");
                    continue;
                }
                if let Err(e) = daemon.wait() {
                    log::info!("mock: session ended: {e}");
                }
            }
        });
        Self {
            path,
            state,
            stop,
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept with a connection that hangs up at once.
        drop(UnixStream::connect(&self.path));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
