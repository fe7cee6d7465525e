//! A transport that accepts VIRTIO_F_ACCESS_PLATFORM on behalf of a virtio-drivers device
//! driver that does not know the feature (`VirtIOBlk` negotiates only its own bits).
//!
//! Accepting it is the truth when the driver runs on a `Hal` that hands the device
//! translated addresses ([`crate::confined_hal::ConfinedHal`]), and it is required: QEMU
//! refuses FEATURES_OK from a driver that leaves the feature out when the device offers it,
//! and virtio-drivers does not read the status back, so the device would silently never
//! start. This wrapper reads it back and ends the run if FEATURES_OK did not stick.

use core::sync::atomic::{AtomicU64, Ordering};

use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{PhysAddr, Result};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::println;

/// VIRTIO_F_ACCESS_PLATFORM.
pub const ACCESS_PLATFORM: u64 = 1 << 33;

/// The driver features last written through any `PlatformTransport` (the kernel drives one
/// such device at a time).
static LAST_DRIVER_FEATURES: AtomicU64 = AtomicU64::new(0);

/// The driver features last written (the device driver owns the transport).
pub fn last_driver_features() -> u64 {
    LAST_DRIVER_FEATURES.load(Ordering::Relaxed)
}

/// `T`, with ACCESS_PLATFORM added to the driver's features when the device offers it.
#[derive(Debug)]
pub struct PlatformTransport<T> {
    inner: T,
    offered: u64,
}

impl<T: Transport> PlatformTransport<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        PlatformTransport { inner, offered: 0 }
    }
}

impl<T: Transport> Transport for PlatformTransport<T> {
    fn device_type(&self) -> DeviceType {
        self.inner.device_type()
    }

    fn read_device_features(&mut self) -> u64 {
        self.offered = self.inner.read_device_features();
        self.offered
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        let features = driver_features | (self.offered & ACCESS_PLATFORM);
        println!(
            "KERNEL-INFO: device features {:#x}, driver features {features:#x}",
            self.offered
        );
        LAST_DRIVER_FEATURES.store(features, Ordering::Relaxed);
        self.inner.write_driver_features(features);
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.inner.max_queue_size(queue)
    }

    fn notify(&mut self, queue: u16) {
        self.inner.notify(queue);
    }

    fn get_status(&self) -> DeviceStatus {
        self.inner.get_status()
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.inner.set_status(status);
        let got = self.inner.get_status();
        if status.contains(DeviceStatus::FEATURES_OK) && !got.contains(DeviceStatus::FEATURES_OK) {
            crate::fatal(format_args!(
                "the device refused FEATURES_OK (status {got:?})"
            ));
        }
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

    fn read_config_space<V: FromBytes + IntoBytes>(&self, offset: usize) -> Result<V> {
        self.inner.read_config_space(offset)
    }

    fn write_config_space<V: IntoBytes + Immutable>(&mut self, offset: usize, value: V) -> Result {
        self.inner.write_config_space(offset, value)
    }
}
