//! Without an IOMMU: `VirtIOBlk`'s writes land in their sectors of the disk file and nowhere
//! else, reads return the file's sectors, and bad requests fail with the device's status.

use super::vm::*;
use virtio_drivers::Error as VirtioError;
use virtio_iommu_e2e::blk::SECTOR;

const SECTORS: usize = 64;

#[test]
fn writes_and_reads_land_in_their_sectors() {
    let disk = pattern_disk(SECTORS);
    let mut vm = BlkVm::start(&disk, &[]);
    assert_eq!(vm.dev.capacity(), SECTORS as u64);
    assert!(!vm.dev.readonly());

    // Two sectors at 5: exactly sectors 5 and 6 of the file change.
    let data = payload(2 * SECTOR, 1);
    vm.dev.write_blocks(5, &data).unwrap();
    let mut want = disk.clone();
    want[5 * SECTOR..7 * SECTOR].copy_from_slice(&data);
    assert_eq!(vm.daemon.disk().unwrap(), want);

    // Reads return the file's sectors: the pattern, and what was written.
    let mut buf = vec![0u8; 4 * SECTOR];
    vm.dev.read_blocks(4, &mut buf).unwrap();
    assert_eq!(buf, want[4 * SECTOR..8 * SECTOR]);
    let mut last = vec![0u8; SECTOR];
    vm.dev.read_blocks(SECTORS - 1, &mut last).unwrap();
    assert_eq!(last, vec![sector_byte(SECTORS - 1); SECTOR]);

    vm.dev.flush().unwrap();
    let mut id = [0u8; 20];
    let n = vm.dev.device_id(&mut id).unwrap();
    assert_eq!(&id[..n], b"vublk-confined");
}

#[test]
fn requests_past_the_end_fail_with_ioerr_and_change_nothing() {
    let disk = pattern_disk(SECTORS);
    let mut vm = BlkVm::start(&disk, &[]);
    let data = payload(2 * SECTOR, 2);
    // The second sector is past the end: the whole write is refused.
    assert_eq!(
        vm.dev.write_blocks(SECTORS - 1, &data),
        Err(VirtioError::IoError)
    );
    let mut buf = vec![0xaa; 2 * SECTOR];
    assert_eq!(
        vm.dev.read_blocks(SECTORS - 1, &mut buf),
        Err(VirtioError::IoError)
    );
    assert_eq!(vm.daemon.disk().unwrap(), disk);
    // The device goes on serving.
    let mut one = vec![0u8; SECTOR];
    vm.dev.read_blocks(3, &mut one).unwrap();
    assert_eq!(one, vec![3u8; SECTOR]);
}

#[test]
fn a_read_only_disk_refuses_writes() {
    let disk = pattern_disk(8);
    let mut vm = BlkVm::start(&disk, &["--read-only"]);
    assert!(vm.dev.readonly());
    assert_eq!(
        vm.dev.write_blocks(1, &payload(SECTOR, 3)),
        Err(VirtioError::IoError)
    );
    assert_eq!(vm.daemon.disk().unwrap(), disk);
}
