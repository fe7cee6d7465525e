//! A confined virtio-blk device (`blk=1`): vhost-user-blk-confined behind QEMU's generic
//! `vhost-user-test-device-pci`, translating every access through the daemon. virtio-drivers'
//! own `VirtIOBlk` runs on [`ConfinedHal`]: rings at identity IOVAs, buffers at IOVAs the
//! driver MAPs. Writes and reads land in their sectors (the script also checks the disk file);
//! an IOVA the guest unmapped gets an I/O error, the old page untouched, and the guest driver
//! receives the fault; a read-only mapping refuses the device's write.
//!
//! `VirtIOBlk` never negotiates VIRTIO_F_ACCESS_PLATFORM, which the confined backend offers
//! and QEMU then insists on: [`PlatformTransport`] accepts it for the driver. QEMU does not pass
//! it on to the backend (it knows of no IOMMU for the device); the backend translates
//! regardless (a device behind an IOMMU cannot opt out), so without these mappings nothing
//! would work.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk, SECTOR_SIZE};
use virtio_drivers::transport::pci::bus::DeviceFunction;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::Error as VirtioError;
use virtio_iommu_driver::{AttachFlags, Event, FaultEvent, FaultReason};
use virtio_iommu_spec::event::FaultFlags;

use super::{requester_id, Iommu, Page};
use crate::confined_hal::{ConfinedHal, BUFFER_IOVAS};
use crate::interrupts;
use crate::pci::Pci;
use crate::platform_transport::{self, PlatformTransport, ACCESS_PLATFORM};
use crate::report::{expect, Report};

/// The driver over the PCI transport, confined.
type Blk = VirtIOBlk<ConfinedHal, PlatformTransport<PciTransport>>;

/// PCI ID of a modern virtio-blk function.
pub const BLK_ID: (u16, u16) = (0x1af4, 0x1042);
/// The disk the script gives the backend: this many sectors, each filled with its number.
const SECTORS: u64 = 64;
const DOMAIN: u32 = 11;
/// How long one request or one event may take.
const STEP_WAIT_MS: u32 = 10_000;

/// The byte the script fills sector `s` with.
fn sector_byte(s: usize) -> u8 {
    u8::try_from(s % 256).unwrap_or(0)
}

/// `len` bytes no sector of the pattern disk holds (the script computes the same).
fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| sector_byte(i).wrapping_mul(7).wrapping_add(seed) | 0x80)
        .collect()
}

/// What sectors `first..first + count` hold once the checks' writes landed.
fn expected(first: usize, count: usize, written: &[(usize, Vec<u8>)]) -> Vec<u8> {
    let mut disk: Vec<u8> = (first..first + count)
        .flat_map(|s| core::iter::repeat_n(sector_byte(s), SECTOR_SIZE))
        .collect();
    for (sector, data) in written {
        for (i, b) in data.iter().enumerate() {
            let at = (sector * SECTOR_SIZE + i).checked_sub(first * SECTOR_SIZE);
            if let Some(d) = at.and_then(|at| disk.get_mut(at)) {
                *d = *b;
            }
        }
    }
    disk
}

/// Waits for the request `token` and completes it with `complete`.
fn finish(
    blk: &mut Blk,
    token: u16,
    complete: impl FnOnce(&mut Blk) -> Result<(), VirtioError>,
) -> Result<(), VirtioError> {
    if !interrupts::poll_ms(STEP_WAIT_MS, || blk.peek_used() == Some(token)) {
        // The device still owns the buffers: nothing can safely go on.
        crate::fatal(format_args!(
            "blk request {token} not completed in {STEP_WAIT_MS} ms"
        ));
    }
    complete(blk)
}

/// Reads `buf.len()` bytes from `sector`, with a bounded wait.
fn read(blk: &mut Blk, sector: usize, buf: &mut [u8]) -> Result<(), VirtioError> {
    let mut req = BlkReq::default();
    let mut resp = BlkResp::default();
    // SAFETY: `req`, `buf` and `resp` are not touched until `complete_read_blocks` took them
    // back, and `finish` ends the kernel rather than return while the device holds them.
    let token = unsafe { blk.read_blocks_nb(sector, &mut req, buf, &mut resp) }?;
    finish(blk, token, |blk| {
        // SAFETY: the buffers `read_blocks_nb` was given, for its token.
        unsafe { blk.complete_read_blocks(token, &req, buf, &mut resp) }
    })
}

/// Writes `buf` at `sector`, with a bounded wait.
fn write(blk: &mut Blk, sector: usize, buf: &[u8]) -> Result<(), VirtioError> {
    let mut req = BlkReq::default();
    let mut resp = BlkResp::default();
    // SAFETY: as in `read`.
    let token = unsafe { blk.write_blocks_nb(sector, &mut req, buf, &mut resp) }?;
    finish(blk, token, |blk| {
        // SAFETY: the buffers `write_blocks_nb` was given, for its token.
        unsafe { blk.complete_write_blocks(token, &req, buf, &mut resp) }
    })
}

/// The next event from the IOMMU's event queue, within the step's time.
fn next_event() -> Result<Event, String> {
    let mut got = None;
    interrupts::poll_ms(STEP_WAIT_MS, || {
        got = ConfinedHal::with(|s| s.iommu.poll_event()).transpose();
        got.is_some()
    });
    match got {
        Some(Ok(e)) => Ok(e),
        Some(Err(e)) => Err(format!("event queue: {e}")),
        None => Err(format!("no event within {STEP_WAIT_MS} ms")),
    }
}

/// A page's first `len` bytes as a buffer.
fn bytes(page: &Page, len: usize) -> &'static mut [u8] {
    if len > 0x1000 {
        crate::fatal(format_args!("{len:#x} bytes do not fit a page"));
    }
    // SAFETY: the page is owned by the kernel for its whole life, identity mapped, and each
    // check uses one buffer of it at a time.
    unsafe { core::slice::from_raw_parts_mut(page.paddr as *mut u8, len) }
}

/// `Ok` if every byte of `page` is `b`.
fn all_bytes(what: &str, page: &Page, b: u8) -> Result<(), String> {
    match page.read(0, 0x1000).iter().position(|x| *x != b) {
        None => Ok(()),
        Some(i) => Err(format!("{what}: byte {i:#x} is not {b:#x}")),
    }
}

/// Runs the blk checks on the function `df`; `iommu` is the IOMMU driver, up.
pub fn run(r: &mut Report, mut iommu: Iommu, pci: &mut Pci, df: DeviceFunction) {
    let ep = requester_id(df);
    r.info(format!("virtio-blk at {df}, endpoint {ep}"));
    let attached = expect(
        "ATTACH",
        iommu.attach(DOMAIN, ep, AttachFlags::empty()),
        Ok(()),
    );
    let failed = attached.is_err();
    r.check("blk-attach", attached);
    if failed {
        return;
    }
    ConfinedHal::install(iommu, DOMAIN);
    let blk = PciTransport::new::<ConfinedHal, _>(&mut pci.root, df)
        .map_err(|e| format!("PCI transport: {e}"))
        .and_then(|t| Blk::new(PlatformTransport::new(t)).map_err(|e| format!("VirtIOBlk: {e}")));
    let mut blk = match blk {
        Ok(b) => b,
        Err(e) => {
            r.check("blk-init", Err(e));
            return;
        }
    };
    let platform = platform_transport::last_driver_features() & ACCESS_PLATFORM;
    r.check(
        "blk-init",
        expect("capacity", blk.capacity(), SECTORS)
            .and_then(|()| expect("ACCESS_PLATFORM accepted", platform, ACCESS_PLATFORM)),
    );

    let mut written = Vec::new();
    r.check("blk-write-read", write_read(&mut blk, &mut written));
    r.check("blk-unmap-io-error", stale_iova(&mut blk, ep));
    r.check("blk-read-only", read_only(&mut blk, ep, &mut written));
    r.check(
        "blk-no-other-events",
        expect(
            "event",
            ConfinedHal::with(|s| s.iommu.poll_event()).map_err(|e| format!("{e}")),
            Ok(None),
        ),
    );
    // Dropping the driver resets the device and frees (UNMAPs) the rings through the HAL.
    drop(blk);
    let teardown = match ConfinedHal::uninstall() {
        Some(mut s) => expect("buffers still shared", s.shared_count(), 0)
            .and_then(|()| expect("DETACH", s.iommu.detach(DOMAIN, ep), Ok(()))),
        None => Err(String::from("the HAL's slot is empty")),
    };
    r.check("blk-teardown", teardown);
}

/// Writes three sectors, reads five around them: every byte where it belongs; the data
/// buffers were at translated IOVAs.
fn write_read(blk: &mut Blk, written: &mut Vec<(usize, Vec<u8>)>) -> Result<(), String> {
    let data = payload(3 * SECTOR_SIZE, 9);
    expect("write of sectors 10-12", write(blk, 10, &data), Ok(()))?;
    written.push((10, data));
    let mut buf = vec![0u8; 5 * SECTOR_SIZE];
    expect("read of sectors 9-13", read(blk, 9, &mut buf), Ok(()))?;
    let iova = ConfinedHal::with(|s| s.last_writable.map(|(iova, _)| iova));
    match iova {
        Some(iova) if iova >= BUFFER_IOVAS => {}
        other => return Err(format!("the read buffer's device address {other:x?}")),
    }
    if buf != expected(9, 5, written) {
        let at = buf
            .iter()
            .zip(expected(9, 5, written))
            .position(|(a, b)| *a != b);
        return Err(format!("sectors 9-13 differ at byte {at:?}"));
    }
    Ok(())
}

/// The driver hands the device an IOVA it unmapped: the request fails with an I/O error,
/// neither the new buffer nor the page the IOVA used to reach changes, and the fault reaches
/// the guest. The device then serves mapped buffers again.
fn stale_iova(blk: &mut Blk, ep: u32) -> Result<(), String> {
    let (Some(old), Some(new)) = (Page::alloc(), Page::alloc()) else {
        return Err(String::from("no DMA pages"));
    };
    expect(
        "read of sector 7",
        read(blk, 7, bytes(&old, SECTOR_SIZE)),
        Ok(()),
    )?;
    expect("sector 7", old.read(0, SECTOR_SIZE), vec![7u8; SECTOR_SIZE])?;
    let Some((iova, paddr)) = ConfinedHal::with(|s| s.last_writable) else {
        return Err(String::from("no device-writable buffer shared"));
    };
    expect("the read buffer", paddr, old.paddr)?;
    // The unshare UNMAPped the IOVA; the page is the kernel's again.
    old.write(0, &[0x5c; 0x1000]);
    new.write(0, &[0xaa; 0x1000]);
    ConfinedHal::with(|s| s.stale_iova = Some(iova));
    expect(
        "read of sector 8 through the unmapped IOVA",
        read(blk, 8, bytes(&new, SECTOR_SIZE)),
        Err(VirtioError::IoError),
    )?;
    all_bytes("the new buffer", &new, 0xaa)?;
    all_bytes("the old page", &old, 0x5c)?;
    expect(
        "event",
        next_event(),
        Ok(Event::Fault(FaultEvent {
            reason: FaultReason::Mapping,
            access: FaultFlags::WRITE,
            endpoint: ep,
            address: Some(iova),
            pasid: None,
        })),
    )?;
    expect(
        "read of sector 8",
        read(blk, 8, bytes(&new, SECTOR_SIZE)),
        Ok(()),
    )?;
    expect("sector 8", new.read(0, SECTOR_SIZE), vec![8u8; SECTOR_SIZE])
}

/// The data buffer of a read is mapped READ only: the device's write faults, the request
/// fails with an I/O error and the buffer is unchanged. A write (the device reads its
/// read-only buffer) still lands.
fn read_only(blk: &mut Blk, ep: u32, written: &mut Vec<(usize, Vec<u8>)>) -> Result<(), String> {
    let Some(page) = Page::alloc() else {
        return Err(String::from("no DMA page"));
    };
    page.write(0, &[0xaa; 0x1000]);
    ConfinedHal::with(|s| s.writable_read_only = true);
    let refused = expect(
        "read of sectors 3-4 into a read-only mapping",
        read(blk, 3, bytes(&page, 2 * SECTOR_SIZE)),
        Err(VirtioError::IoError),
    );
    ConfinedHal::with(|s| s.writable_read_only = false);
    refused?;
    all_bytes("the read-only buffer", &page, 0xaa)?;
    let iova = ConfinedHal::with(|s| s.last_writable.map(|(iova, _)| iova));
    match next_event()? {
        Event::Fault(f)
            if f.reason == FaultReason::Mapping
                && f.endpoint == ep
                && f.access == FaultFlags::WRITE
                && f.pasid.is_none()
                && matches!((f.address, iova), (Some(a), Some(i)) if a >= i && a < i + 2 * SECTOR_SIZE as u64) =>
            {}
        other => return Err(format!("event {other:?}, want a write fault at {iova:x?}")),
    }
    let data = payload(SECTOR_SIZE, 4);
    expect("write of sector 3", write(blk, 3, &data), Ok(()))?;
    written.push((3, data));
    let mut buf = vec![0u8; 2 * SECTOR_SIZE];
    expect("read of sectors 3-4", read(blk, 3, &mut buf), Ok(()))?;
    expect("sectors 3-4", buf, expected(3, 2, written))
}
