//! Requests as raw bytes, for the checks the driver's pre-flight rules would never let through
//! (unknown types, unaligned MAPs, non-zero reserved fields, short parts): the device is
//! brought up by hand and requests go straight onto a `VirtQueue`.

use std::time::{Duration, Instant};

use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{DeviceStatus, Transport};
use virtio_iommu_spec::features::VIRTIO_F_VERSION_1;
use virtio_iommu_spec::{Features, EVENT_QUEUE, REQUEST_QUEUE};

use super::hal::UserHal;

/// Descriptors in the raw request queue.
const QUEUE_SIZE: usize = 8;
/// How long one raw request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The device features the raw driver accepts when offered (what the driver would accept).
const ACCEPTED: Features = Features::INPUT_RANGE
    .union(Features::DOMAIN_RANGE)
    .union(Features::MAP_UNMAP)
    .union(Features::PROBE)
    .union(Features::MMIO)
    .union(Features::BYPASS_CONFIG);

/// The device's answer to one raw request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawReply {
    /// Used length the device reported.
    pub used: u32,
    /// The whole writable part after the device wrote it (zeroed before submission).
    pub writable: Vec<u8>,
}

/// A virtio-iommu driven with raw requests.
pub struct RawDevice<T: Transport> {
    transport: T,
    requests: VirtQueue<UserHal, QUEUE_SIZE>,
    // Set up (with no buffers) so that every queue of the device is live, as for a real driver.
    _events: VirtQueue<UserHal, QUEUE_SIZE>,
}

impl<T: Transport> std::fmt::Debug for RawDevice<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawDevice").finish_non_exhaustive()
    }
}

impl<T: Transport> RawDevice<T> {
    /// Resets the device, negotiates the usual features and sets up both queues.
    ///
    /// # Errors
    /// A description of the step that failed.
    pub fn new(mut transport: T) -> Result<Self, String> {
        transport.set_status(DeviceStatus::empty());
        transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let offered = transport.read_device_features();
        let accepted = (offered & ACCEPTED.bits()) | (offered & VIRTIO_F_VERSION_1);
        transport.write_driver_features(accepted);
        transport.set_status(
            DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK,
        );
        if !transport.get_status().contains(DeviceStatus::FEATURES_OK) {
            transport.set_status(DeviceStatus::FAILED);
            return Err(format!("features {accepted:#x} refused"));
        }
        let requests = VirtQueue::new(&mut transport, REQUEST_QUEUE, false, false)
            .map_err(|e| format!("request queue: {e}"))?;
        let events = VirtQueue::new(&mut transport, EVENT_QUEUE, false, false)
            .map_err(|e| format!("event queue: {e}"))?;
        transport.finish_init();
        Ok(RawDevice {
            transport,
            requests,
            _events: events,
        })
    }

    /// Sends `readable` with a zeroed writable part of `writable_len` bytes (both non-empty)
    /// and waits for the device to return them.
    ///
    /// # Errors
    /// Queue errors, or no answer within the time limit.
    pub fn request(&mut self, readable: &[u8], writable_len: usize) -> Result<RawReply, String> {
        let mut writable = vec![0u8; writable_len];
        // SAFETY: both buffers live in this frame until `pop_used` below returns them; on a
        // timeout the device is reset (and the process ends) before they go away.
        let token = unsafe {
            self.requests
                .add(&[readable], &mut [writable.as_mut_slice()])
                .map_err(|e| format!("add: {e}"))?
        };
        if self.requests.should_notify() {
            self.transport.notify(REQUEST_QUEUE);
        }
        let start = Instant::now();
        while !self.requests.can_pop() {
            if start.elapsed() > TIMEOUT {
                // The device still owns the buffers: stop it before they are freed.
                self.transport.set_status(DeviceStatus::empty());
                println!("GUEST-PCI: FAIL raw: no answer within {TIMEOUT:?}");
                println!("GUEST-PCI-RESULT: aborted");
                std::process::exit(2);
            }
            std::hint::spin_loop();
        }
        // SAFETY: the same buffers `add` was given for this token.
        let used = unsafe {
            self.requests
                .pop_used(token, &[readable], &mut [writable.as_mut_slice()])
                .map_err(|e| format!("pop_used: {e}"))?
        };
        Ok(RawReply { used, writable })
    }
}

impl<T: Transport> Drop for RawDevice<T> {
    fn drop(&mut self) {
        // Stop the device before the queues' memory is released.
        self.transport.set_status(DeviceStatus::empty());
    }
}
