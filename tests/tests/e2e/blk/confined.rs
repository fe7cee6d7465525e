//! Confined: the blk backend translates every access through the daemon's translation socket
//! (`--translation-socket`, `--endpoint 8`); `VirtIOBlk` runs on [`ConfinedHal`], which MAPs
//! its buffers through our guest driver. Writes and reads land in their sectors; an IOVA the
//! guest unmapped gets an I/O error (the old page untouched) and the guest driver receives the
//! fault; a read-only mapping refuses the device's write.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::Error as VirtioError;
use virtio_iommu_driver::{AttachFlags, DriverOptions, Event, FaultEvent, FaultReason};
use virtio_iommu_e2e::blk::SECTOR;
use virtio_iommu_e2e::{BlkDaemon, Daemon, VhostUserTransport};
use virtio_iommu_spec::event::FaultFlags;
use virtio_iommu_spec::{Config, Features, VIRTIO_ID_IOMMU};
use virtio_iommu_testkit::GuestMemory;

use super::confined_hal::{ConfinedHal, Installed};
use super::vm::{pattern_disk, payload, BLK_CONFIG_SIZE, VIRTIO_ID_BLOCK};

pub(super) const DOMAIN: u32 = 1;
pub(super) const EP: u32 = 8;
pub(super) const SECTORS: usize = 64;
const WAIT: Duration = Duration::from_secs(10);

/// Both daemons and both drivers. Fields drop in order: the blk driver (its reset frees
/// rings through the HAL) before the HAL's slot, the backends last.
pub(super) struct Confined {
    pub(super) dev: VirtIOBlk<ConfinedHal, VhostUserTransport>,
    _hal: Installed,
    pub(super) blk: BlkDaemon,
    pub(super) daemon: Daemon,
    /// The daemon's translation socket.
    pub(super) socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Confined {
    fn start(disk: &[u8]) -> Confined {
        Self::start_with(disk, &[], Features::empty())
    }

    /// As [`Confined::start`], the daemon also given `daemon_args` and our driver negotiating
    /// `extensions`.
    pub(super) fn start_with(disk: &[u8], daemon_args: &[&str], extensions: Features) -> Confined {
        let _ = env_logger::builder().is_test(true).try_init();
        let dir = tempfile::Builder::new()
            .prefix("vublk-ts")
            .tempdir()
            .unwrap();
        let path = dir.path().join("translation.sock");
        let socket = path.to_str().unwrap();
        let mut args = vec!["--translation-socket", socket];
        args.extend_from_slice(daemon_args);
        let daemon = Daemon::spawn(&args).expect("spawn the daemon");
        let fe = daemon.connect(GuestMemory::global()).expect("connect");
        let config_size = u32::try_from(size_of::<Config>()).unwrap();
        let t = VhostUserTransport::new(fe, VIRTIO_ID_IOMMU, config_size).unwrap();
        let options = DriverOptions {
            extensions,
            max_spins: Some(50_000_000),
        };
        let mut iommu = virtio_iommu_driver::VirtIOIommu::new_with(t, options).unwrap();
        iommu.attach(DOMAIN, EP, AttachFlags::empty()).unwrap();
        let hal = ConfinedHal::install(iommu, DOMAIN);
        let blk = BlkDaemon::spawn(
            disk,
            &[
                "--translation-socket",
                socket,
                "--endpoint",
                &EP.to_string(),
            ],
        )
        .expect("spawn the blk backend");
        let fe = blk.connect(GuestMemory::global()).expect("connect");
        let t = VhostUserTransport::new(fe, VIRTIO_ID_BLOCK, BLK_CONFIG_SIZE)
            .unwrap()
            .with_access_platform();
        let dev = VirtIOBlk::new(t).expect("VirtIOBlk initialisation");
        Confined {
            dev,
            _hal: hal,
            blk,
            daemon,
            socket: path,
            _dir: dir,
        }
    }

    pub(super) fn translation_stats(&self) -> serde_json::Value {
        let mut c = self.daemon.control().unwrap();
        c.cmd("stats", serde_json::Value::Null).unwrap()["stats"]["translation"].clone()
    }

    fn wait_event() -> Event {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(ev) = ConfinedHal::with(|s| s.iommu.poll_event().unwrap()) {
                return ev;
            }
            assert!(Instant::now() < deadline, "no event within {WAIT:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn no_event() {
        assert_eq!(ConfinedHal::with(|s| s.iommu.poll_event().unwrap()), None);
    }
}

#[test]
fn confined_writes_and_reads_land_in_their_sectors() {
    let disk = pattern_disk(SECTORS);
    let mut vm = Confined::start(&disk);
    let data = payload(3 * SECTOR, 9);
    vm.dev.write_blocks(10, &data).unwrap();
    let mut want = disk.clone();
    want[10 * SECTOR..13 * SECTOR].copy_from_slice(&data);
    assert_eq!(vm.blk.disk().unwrap(), want);
    let mut buf = vec![0u8; 5 * SECTOR];
    vm.dev.read_blocks(9, &mut buf).unwrap();
    assert_eq!(buf, want[9 * SECTOR..14 * SECTOR]);
    // Every access was translated by the daemon, and each UNMAP of a buffer the backend had
    // used was pushed to it and acknowledged.
    let s = vm.translation_stats();
    assert_eq!(s["accepted"], json!(1), "{s}");
    assert!(s["translate_ok"].as_u64().unwrap() >= 4, "{s}");
    assert_eq!(s["translate_fault"], json!(0), "{s}");
    assert!(s["invalidates"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["acks"], s["invalidates"], "{s}");
    Confined::no_event();
}

#[test]
fn after_unmap_the_backend_gets_an_io_error_and_the_guest_the_fault() {
    let disk = pattern_disk(SECTORS);
    let mut vm = Confined::start(&disk);
    // A read through IOVA X: the backend caches X, the HAL UNMAPs it on unshare.
    let mut buf = vec![0u8; SECTOR];
    vm.dev.read_blocks(7, &mut buf).unwrap();
    assert_eq!(buf, vec![7u8; SECTOR]);
    let (iova, old_gpa) = ConfinedHal::with(|s| s.last_writable.unwrap());
    // The old page is the guest's again (here: marked, and kept from reuse).
    let mem = GuestMemory::global();
    mem.alloc_at(old_gpa, 1).unwrap();
    mem.fill(old_gpa, 0x1000, 0x5c).unwrap();
    // The driver hands the device X again without mapping it.
    ConfinedHal::with(|s| s.stale_iova = Some(iova));
    let mut buf = vec![0xaa; SECTOR];
    assert_eq!(vm.dev.read_blocks(8, &mut buf), Err(VirtioError::IoError));
    assert_eq!(buf, vec![0xaa; SECTOR], "nothing written to the new buffer");
    assert!(
        mem.read_vec(old_gpa, 0x1000)
            .unwrap()
            .iter()
            .all(|b| *b == 0x5c),
        "the old page untouched"
    );
    mem.free_pages(old_gpa, 1).unwrap();
    assert_eq!(
        Confined::wait_event(),
        Event::Fault(FaultEvent {
            reason: FaultReason::Mapping,
            access: FaultFlags::WRITE,
            endpoint: EP,
            address: Some(iova),
            pasid: None,
        })
    );
    // The device goes on serving mapped buffers.
    vm.dev.read_blocks(8, &mut buf).unwrap();
    assert_eq!(buf, vec![8u8; SECTOR]);
}

#[test]
fn a_read_only_mapping_refuses_the_device_write() {
    let disk = pattern_disk(SECTORS);
    let mut vm = Confined::start(&disk);
    ConfinedHal::with(|s| s.writable_read_only = true);
    let mut buf = vec![0xaa; 2 * SECTOR];
    assert_eq!(vm.dev.read_blocks(3, &mut buf), Err(VirtioError::IoError));
    assert_eq!(buf, vec![0xaa; 2 * SECTOR], "the device wrote nothing");
    match Confined::wait_event() {
        Event::Fault(f) => {
            assert_eq!((f.reason, f.endpoint), (FaultReason::Mapping, EP));
            assert_eq!(f.access, FaultFlags::WRITE);
        }
        other => panic!("{other:?}"),
    }
    // Device reads of read-only buffers still work: a write lands.
    let data = payload(SECTOR, 4);
    vm.dev.write_blocks(3, &data).unwrap();
    assert_eq!(vm.blk.sectors(3, 1).unwrap(), data);
}
