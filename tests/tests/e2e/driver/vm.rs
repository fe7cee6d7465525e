//! What the tests that run the unmodified guest driver against the spawned daemon share:
//! bring-up over the vhost-user transport, a transport wrapper that counts notifications,
//! control-socket helpers (DMA by a simulated device included) and bounded event polling.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::PhysAddr;
use virtio_iommu_driver::{DriverOptions, Event, VirtIOIommu, EXTENSION_FEATURES};
use virtio_iommu_e2e::{ControlClient, Daemon, VhostUserTransport};
use virtio_iommu_spec::{Config, Features, VIRTIO_ID_IOMMU};
use virtio_iommu_testkit::{GuestHal, GuestMemory};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Bound on every wait of a test step (events, DMA replies).
pub const WAIT: Duration = Duration::from_secs(10);

/// Used-ring polls before a blocking driver call gives up with `Error::Timeout`: a few
/// seconds of spinning, far more than a request to a live daemon needs.
pub const MAX_SPINS: u64 = 50_000_000;

/// The guest driver as the tests run it.
pub type Iommu = VirtIOIommu<GuestHal, CountingTransport>;

/// Notifications the driver sent, per queue (shared with the test while the driver owns the
/// transport).
#[derive(Debug, Default)]
pub struct Kicks {
    counts: [AtomicU64; 2],
}

impl Kicks {
    /// Notifications of `queue` so far.
    pub fn of(&self, queue: u16) -> u64 {
        self.counts
            .get(usize::from(queue))
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }
}

/// [`VhostUserTransport`] that counts `notify` calls per queue; everything else is delegated.
#[derive(Debug)]
pub struct CountingTransport {
    inner: VhostUserTransport,
    kicks: Arc<Kicks>,
}

impl Transport for CountingTransport {
    fn device_type(&self) -> DeviceType {
        self.inner.device_type()
    }
    fn read_device_features(&mut self) -> u64 {
        self.inner.read_device_features()
    }
    fn write_driver_features(&mut self, driver_features: u64) {
        self.inner.write_driver_features(driver_features);
    }
    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.inner.max_queue_size(queue)
    }
    fn notify(&mut self, queue: u16) {
        if let Some(c) = self.kicks.counts.get(usize::from(queue)) {
            c.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.notify(queue);
    }
    fn get_status(&self) -> DeviceStatus {
        self.inner.get_status()
    }
    fn set_status(&mut self, status: DeviceStatus) {
        self.inner.set_status(status);
    }
    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        self.inner.set_guest_page_size(guest_page_size);
    }
    fn requires_legacy_layout(&self) -> bool {
        self.inner.requires_legacy_layout()
    }
    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.inner
            .queue_set(queue, size, descriptors, driver_area, device_area);
    }
    fn queue_unset(&mut self, queue: u16) {
        self.inner.queue_unset(queue);
    }
    fn queue_used(&mut self, queue: u16) -> bool {
        self.inner.queue_used(queue)
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.inner.ack_interrupt()
    }
    fn read_config_generation(&self) -> u32 {
        self.inner.read_config_generation()
    }
    fn read_config_space<T: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<T> {
        self.inner.read_config_space(offset)
    }
    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> virtio_drivers::Result<()> {
        self.inner.write_config_space(offset, value)
    }
}

/// A daemon, the driver bound to it, and a control connection.
#[derive(Debug)]
pub struct Vm {
    /// The guest driver.
    pub iommu: Iommu,
    /// Notification counters of the driver's transport.
    pub kicks: Arc<Kicks>,
    /// A control connection for the test's own thread.
    pub control: ControlClient,
    // Dropped last: the driver resets the device first.
    /// The daemon process.
    pub daemon: Daemon,
}

impl Vm {
    /// Spawns the daemon with `args` and brings the driver up over vhost-user, accepting the
    /// vSVA extensions when `extensions` is set.
    pub fn start(args: &[&str], extensions: bool) -> Vm {
        let _ = env_logger::builder().is_test(true).try_init();
        let daemon = Daemon::spawn(args).expect("spawn the daemon");
        let fe = daemon
            .connect(GuestMemory::global())
            .expect("connect the vhost-user frontend");
        let config_size = u32::try_from(size_of::<Config>()).expect("40 fits u32");
        let inner =
            VhostUserTransport::new(fe, VIRTIO_ID_IOMMU, config_size).expect("wrap the transport");
        let kicks = Arc::new(Kicks::default());
        let transport = CountingTransport {
            inner,
            kicks: kicks.clone(),
        };
        let options = DriverOptions {
            extensions: if extensions {
                EXTENSION_FEATURES
            } else {
                Features::empty()
            },
            max_spins: Some(MAX_SPINS),
        };
        let iommu = VirtIOIommu::new_with(transport, options).expect("driver initialisation");
        let control = daemon.control().expect("connect the control socket");
        Vm {
            iommu,
            kicks,
            control,
            daemon,
        }
    }

    /// A control command; panics unless the reply has `"ok": true`.
    pub fn ctl(&mut self, cmd: &str, args: Value) -> Value {
        ctl(&mut self.control, cmd, args)
    }

    /// The daemon's counters.
    pub fn stats(&mut self) -> Value {
        self.ctl("stats", Value::Null)["stats"].clone()
    }

    /// `translate` of one byte without PASID.
    pub fn translate(&mut self, endpoint: u32, iova: u64, access: &str) -> Value {
        self.ctl(
            "translate",
            json!({"endpoint": endpoint, "iova": iova, "access": access}),
        )
    }

    /// The next event, waiting up to [`WAIT`] for the daemon to deliver it.
    pub fn wait_event(&mut self) -> Event {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(ev) = self.iommu.poll_event().expect("event queue") {
                return ev;
            }
            assert!(Instant::now() < deadline, "no event within {WAIT:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Asserts that no event arrives within `quiet`.
    pub fn expect_no_event(&mut self, quiet: Duration) {
        let deadline = Instant::now() + quiet;
        while Instant::now() < deadline {
            let ev = self.iommu.poll_event().expect("event queue");
            assert!(ev.is_none(), "unexpected event {ev:?}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A new control connection (e.g. for a DMA issued from another thread).
    pub fn new_control(&self) -> ControlClient {
        self.daemon.control().expect("connect the control socket")
    }
}

/// A control command on `client`; panics unless the reply has `"ok": true`.
pub fn ctl(client: &mut ControlClient, cmd: &str, args: Value) -> Value {
    let reply = client.cmd(cmd, args).expect("control request");
    assert_eq!(reply["ok"], json!(true), "{cmd}: {reply}");
    reply
}

/// Lower-case hex of `data`, as the control socket takes and gives DMA bytes.
pub fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// A page of guest RAM for DMA data, filled with `fill`.
pub fn data_page(fill: u8) -> u64 {
    let mem = GuestMemory::global();
    let gpa = mem.alloc_pages(1).expect("guest page");
    mem.fill(gpa, 0x1000, fill).expect("fill");
    gpa
}

/// `len` bytes of guest RAM at `gpa`.
pub fn read_guest(gpa: u64, len: usize) -> Vec<u8> {
    GuestMemory::global()
        .read_vec(gpa, len)
        .expect("guest read")
}

/// The JSON of a fault as the control socket reports it.
pub fn fault_json(
    reason: &str,
    flags: u32,
    endpoint: u32,
    address: u64,
    pasid: Option<u32>,
) -> Value {
    json!({
        "reason": reason,
        "flags": flags,
        "endpoint": endpoint,
        "address": address,
        "pasid": pasid,
    })
}

/// `dma-write` of `data` by `endpoint` with `pasid` at `iova`; returns the whole reply.
pub fn dma_write(
    client: &mut ControlClient,
    endpoint: u32,
    pasid: Option<u32>,
    iova: u64,
    data: &[u8],
) -> Value {
    ctl(
        client,
        "dma-write",
        json!({"endpoint": endpoint, "pasid": pasid, "iova": iova, "data": hex(data)}),
    )
}

/// `dma-read` of `len` bytes; returns the whole reply.
pub fn dma_read(
    client: &mut ControlClient,
    endpoint: u32,
    pasid: Option<u32>,
    iova: u64,
    len: usize,
) -> Value {
    ctl(
        client,
        "dma-read",
        json!({"endpoint": endpoint, "pasid": pasid, "iova": iova, "len": len}),
    )
}

/// The reply of a successful `dma-read` of `data`.
pub fn read_ok(data: &[u8]) -> Value {
    json!({"ok": true, "data": hex(data)})
}
