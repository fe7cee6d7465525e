//! What the blk tests share: a disk image with a recognisable pattern, and bring-up of
//! `VirtIOBlk` on the test kit's guest RAM.

use virtio_drivers::device::blk::VirtIOBlk;
use virtio_iommu_e2e::blk::SECTOR;
use virtio_iommu_e2e::{BlkDaemon, VhostUserTransport};
use virtio_iommu_testkit::{GuestHal, GuestMemory};

/// virtio-blk's device ID.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Bytes of the config space the backend fills (capacity and the four zero fields).
pub const BLK_CONFIG_SIZE: u32 = 24;

/// A disk of `sectors` sectors, each filled with its own number (mod 256) so a misplaced
/// transfer shows.
pub fn pattern_disk(sectors: usize) -> Vec<u8> {
    (0..sectors)
        .flat_map(|s| std::iter::repeat_n(sector_byte(s), SECTOR))
        .collect()
}

/// The byte [`pattern_disk`] fills sector `s` with.
pub fn sector_byte(s: usize) -> u8 {
    u8::try_from(s % 256).expect("below 256")
}

/// `len` bytes no sector of [`pattern_disk`] holds.
pub fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| sector_byte(i).wrapping_mul(7).wrapping_add(seed) | 0x80)
        .collect()
}

/// The blk backend, and `VirtIOBlk` bound to it with the identity `GuestHal`.
pub struct BlkVm {
    /// The guest driver.
    pub dev: VirtIOBlk<GuestHal, VhostUserTransport>,
    // Dropped last: the driver resets the device first.
    /// The backend process.
    pub daemon: BlkDaemon,
}

impl BlkVm {
    /// Spawns the backend on `disk` with `args`, then brings up `VirtIOBlk`.
    pub fn start(disk: &[u8], args: &[&str]) -> BlkVm {
        let _ = env_logger::builder().is_test(true).try_init();
        let daemon = BlkDaemon::spawn(disk, args).expect("spawn the blk backend");
        let fe = daemon
            .connect(GuestMemory::global())
            .expect("connect the vhost-user frontend");
        let transport = VhostUserTransport::new(fe, VIRTIO_ID_BLOCK, BLK_CONFIG_SIZE)
            .expect("wrap the transport");
        let dev = VirtIOBlk::new(transport).expect("VirtIOBlk initialisation");
        BlkVm { dev, daemon }
    }
}

impl std::fmt::Debug for BlkVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlkVm")
            .field("daemon", &self.daemon)
            .finish_non_exhaustive()
    }
}
