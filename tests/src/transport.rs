//! `virtio_drivers::transport::Transport` over a vhost-user [`Frontend`]: the virtio device as
//! QEMU's generic vhost-user device (`vhost-user-device`) exposes it to a guest driver.
//!
//! Like QEMU, the transport only records queue addresses when the driver sets a queue up, and
//! starts the backend (SET_FEATURES, SET_MEM_TABLE, the vring setup, ENABLE) when the driver
//! sets DRIVER_OK; writing status 0 (device reset) stops it (ENABLE 0, GET_VRING_BASE), and the
//! next DRIVER_OK starts every ring at base 0. Config accesses are forwarded the way QEMU's
//! vhost-user-base does it: every read fetches the whole config space (GET_CONFIG at offset 0),
//! every write sends the whole patched config space (SET_CONFIG at offset 0).

use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{Error as VirtioError, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::error::{Error, Result};
use crate::frontend::{Frontend, RingConfig, ACCESS_PLATFORM_BIT, VHOST_BITS};

/// Default for [`VhostUserTransport::max_queue_size`] (QEMU's vhost-user-device default).
pub const DEFAULT_MAX_QUEUE_SIZE: u32 = 256;

/// A virtio transport whose device is a vhost-user backend.
#[derive(Debug)]
pub struct VhostUserTransport {
    fe: Frontend,
    device_type: DeviceType,
    config_size: u32,
    max_queue_size: u32,
    status: DeviceStatus,
    driver_features: u64,
    /// Device features the platform accepts whatever the driver does.
    platform_features: u64,
    queues: Vec<Option<RingConfig>>,
    last_error: Option<Error>,
}

impl VhostUserTransport {
    /// Wraps a connected frontend as a virtio device of type `device_id` (23 for the IOMMU)
    /// with a config space of `config_size` bytes. With the test kit's `GuestHal` the frontend
    /// must use `GuestMemory::global`, where that HAL allocates.
    pub fn new(fe: Frontend, device_id: u32, config_size: u32) -> Result<Self> {
        let device_type = DeviceType::try_from(device_id)
            .map_err(|e| Error::Usage(format!("device id {device_id}: {e}")))?;
        let queues = vec![None; fe.num_queues()];
        Ok(Self {
            fe,
            device_type,
            config_size,
            max_queue_size: DEFAULT_MAX_QUEUE_SIZE,
            status: DeviceStatus::empty(),
            driver_features: 0,
            platform_features: 0,
            queues,
            last_error: None,
        })
    }

    /// Puts the device behind the platform's IOMMU: VIRTIO_F_ACCESS_PLATFORM, if the device
    /// offers it, is negotiated whatever the driver accepts (virtio-drivers' drivers do not know
    /// the bit; a Linux driver behind an IOMMU always accepts it), so the frontend sends ring
    /// addresses as IOVAs, as QEMU does with `iommu_platform=on`.
    #[must_use]
    pub fn with_access_platform(mut self) -> Self {
        self.platform_features |= ACCESS_PLATFORM_BIT;
        self
    }

    /// Sets the queue size the transport advertises (the backend's limit is not visible over
    /// vhost-user; QEMU has it as a device property).
    #[must_use]
    pub fn with_max_queue_size(mut self, size: u32) -> Self {
        self.max_queue_size = size;
        self
    }

    /// The frontend, e.g. to check call eventfds.
    #[must_use]
    pub fn frontend(&self) -> &Frontend {
        &self.fe
    }

    /// The frontend, e.g. for [`Frontend::pause_resume`].
    pub fn frontend_mut(&mut self) -> &mut Frontend {
        &mut self.fe
    }

    /// Gives the frontend back.
    #[must_use]
    pub fn into_frontend(self) -> Frontend {
        self.fe
    }

    /// Features the driver wrote.
    #[must_use]
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// The last vhost-user failure behind a trait method that cannot return one (status
    /// changes, notify, config reads); taking it clears it.
    pub fn take_error(&mut self) -> Option<Error> {
        self.last_error.take()
    }

    fn record(&mut self, what: &str, r: Result<()>) {
        if let Err(e) = r {
            log::error!("vhost-user transport: {what}: {e}");
            // A failed start or stop leaves the device unusable, as DEVICE_NEEDS_RESET says.
            self.status |= DeviceStatus::DEVICE_NEEDS_RESET;
            self.last_error = Some(e);
        }
    }

    fn start(&mut self) -> Result<()> {
        for (i, q) in self.queues.iter().enumerate() {
            self.fe.set_ring_config(i, *q)?;
        }
        self.fe.set_features(self.driver_features)?;
        self.fe.start()
    }

    fn reset(&mut self) -> Result<()> {
        self.fe.stop()?;
        for (i, q) in self.queues.iter_mut().enumerate() {
            *q = None;
            self.fe.set_ring_config(i, None)?;
        }
        Ok(())
    }

    fn config_bytes(&self) -> Result<Vec<u8>> {
        self.fe.get_config(0, self.config_size)
    }
}

impl Transport for VhostUserTransport {
    fn device_type(&self) -> DeviceType {
        self.device_type
    }

    fn read_device_features(&mut self) -> u64 {
        // PROTOCOL_FEATURES and LOG_ALL are vhost-user's, not the device's: QEMU hides them.
        self.fe.device_features() & !VHOST_BITS
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.driver_features =
            driver_features | (self.platform_features & self.fe.device_features());
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        if usize::from(queue) < self.queues.len() {
            self.max_queue_size
        } else {
            0
        }
    }

    fn notify(&mut self, queue: u16) {
        let r = self.fe.kick(usize::from(queue));
        self.record("notify", r);
    }

    fn get_status(&self) -> DeviceStatus {
        self.status
    }

    fn set_status(&mut self, status: DeviceStatus) {
        let was_running = self.status.contains(DeviceStatus::DRIVER_OK);
        if status.is_empty() {
            let r = self.reset();
            self.status = DeviceStatus::empty();
            self.record("device reset", r);
            return;
        }
        self.status = status;
        if status.contains(DeviceStatus::DRIVER_OK) && !was_running {
            let r = self.start();
            self.record("start", r);
        }
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {}

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        let index = usize::from(queue);
        let r = (|| {
            let size = u16::try_from(size).map_err(|_| Error::Usage(format!("size {size}")))?;
            let slot = self
                .queues
                .get_mut(index)
                .ok_or_else(|| Error::Usage(format!("no queue {queue}")))?;
            let config = RingConfig {
                size,
                desc: descriptors,
                avail: driver_area,
                used: device_area,
            };
            *slot = Some(config);
            if self.status.contains(DeviceStatus::DRIVER_OK) {
                self.fe.set_ring_config(index, Some(config))?;
                self.fe.start_ring(index)?;
            }
            Ok(())
        })();
        self.record("queue_set", r);
    }

    fn queue_unset(&mut self, queue: u16) {
        let index = usize::from(queue);
        let r = (|| {
            if self.fe.ring_running(index)? {
                self.fe.stop_ring(index)?;
            }
            self.fe.set_ring_config(index, None)?;
            if let Some(slot) = self.queues.get_mut(index) {
                *slot = None;
            }
            Ok(())
        })();
        self.record("queue_unset", r);
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.queues
            .get(usize::from(queue))
            .is_some_and(Option::is_some)
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        let mut any = false;
        for i in 0..self.queues.len() {
            match self.fe.take_call(i) {
                Ok(fired) => any |= fired,
                Err(e) => self.record("ack_interrupt", Err(e)),
            }
        }
        if any {
            InterruptStatus::QUEUE_INTERRUPT
        } else {
            InterruptStatus::empty()
        }
    }

    fn read_config_generation(&self) -> u32 {
        0
    }

    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result2<T> {
        let bytes = self.config_bytes().map_err(|e| {
            log::error!("GET_CONFIG: {e}");
            VirtioError::IoError
        })?;
        let end = offset
            .checked_add(size_of::<T>())
            .ok_or(VirtioError::ConfigSpaceTooSmall)?;
        let field = bytes
            .get(offset..end)
            .ok_or(VirtioError::ConfigSpaceTooSmall)?;
        T::read_from_bytes(field).map_err(|_| VirtioError::ConfigSpaceTooSmall)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> Result2<()> {
        let mut bytes = self.config_bytes().map_err(|e| {
            log::error!("GET_CONFIG: {e}");
            VirtioError::IoError
        })?;
        let end = offset
            .checked_add(size_of::<T>())
            .ok_or(VirtioError::ConfigSpaceTooSmall)?;
        bytes
            .get_mut(offset..end)
            .ok_or(VirtioError::ConfigSpaceTooSmall)?
            .copy_from_slice(value.as_bytes());
        self.fe.set_config(0, &bytes).map_err(|e| {
            log::error!("SET_CONFIG: {e}");
            VirtioError::IoError
        })
    }
}

/// virtio-drivers' result type.
type Result2<T> = std::result::Result<T, VirtioError>;
