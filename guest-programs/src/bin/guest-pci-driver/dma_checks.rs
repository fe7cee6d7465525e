//! Real DMA through the IOMMU's translations, and the fault event an unmapped access raises.
//!
//! - QEMU's device translates QEMU's own DMA, so an `edu` endpoint copies a page through a
//!   mapping into its buffer and back out through another part of it, then faults after the
//!   UNMAP.
//! - The daemon translates for the host side: the guest prints `GUEST-PCI-HOLD` and the
//!   script reads the mapped pattern and writes it back through the daemon's control socket
//!   (`dma-read`, `dma-write`); after the UNMAP it prints `GUEST-PCI-HOLD-FAULT` and the
//!   script's `dma-read` must fault.
//!
//! Either way the guest then expects the fault on the event queue.

use std::ptr::NonNull;
use std::thread;
use std::time::{Duration, Instant};

use virtio_drivers::transport::Transport;
use virtio_iommu_driver::{AttachFlags, Event, FaultEvent, FaultReason, MapFlags, Mapping};
use virtio_iommu_spec::event::FaultFlags;

use super::report::{expect, DeviceKind, Report};
use super::scenario::Iommu;

const DOMAIN: u32 = 9;
/// Below edu's 28-bit DMA mask.
const IOVA: u64 = 0x70_0000;
const PAGE: u64 = 0x1000;
/// Bytes copied.
const LEN: usize = 64;
/// Where in the page the copy comes back.
const BACK: usize = 0x800;
/// How long the host or the device may take for one step.
const STEP_WAIT: Duration = Duration::from_secs(40);

/// The mapped page: device address and this program's pointer to it (one owned 4 KiB page).
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// Guest-physical address.
    pub paddr: u64,
    /// Where this program sees it.
    pub ptr: NonNull<u8>,
}

impl Page {
    fn write(&self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= 0x1000, "inside the page");
        // SAFETY: in bounds of the owned page (checked above); the device reads it only
        // after this returns.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(offset),
                bytes.len(),
            );
        }
    }

    fn read(&self, offset: usize, len: usize) -> Vec<u8> {
        assert!(offset + len <= 0x1000, "inside the page");
        // SAFETY: in bounds of the owned page (checked above); a device may write it
        // concurrently, hence the volatile reads.
        (0..len)
            .map(|i| unsafe { self.ptr.as_ptr().add(offset + i).read_volatile() })
            .collect()
    }
}

fn pattern() -> Vec<u8> {
    (0..LEN)
        .map(|i| u8::try_from((i * 37 + 11) % 256).unwrap_or(0))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Attaches `ep`, writes the pattern at the start of the page and maps the page at `IOVA`.
fn setup<T: Transport>(iommu: &mut Iommu<T>, ep: u32, page: Page) -> Result<(), String> {
    page.write(0, &pattern());
    page.write(BACK, &[0; LEN]);
    let m = Mapping {
        domain: DOMAIN,
        iova: IOVA,
        paddr: page.paddr,
        size: PAGE,
        flags: MapFlags::READ | MapFlags::WRITE,
    };
    expect(
        "ATTACH",
        iommu.attach(DOMAIN, ep, AttachFlags::empty()),
        Ok(()),
    )
    .and_then(|()| expect("MAP", iommu.map(&m), Ok(())))
}

/// Waits up to `STEP_WAIT` for `want` to be back at `BACK` in the page.
fn wait_back(page: Page, want: &[u8]) -> Vec<u8> {
    let start = Instant::now();
    loop {
        let got = page.read(BACK, want.len());
        if got == want || start.elapsed() > STEP_WAIT {
            return got;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Unmaps the page and returns the first event the device reports within `STEP_WAIT`, after
/// `trigger` made an access to the unmapped IOVA.
fn fault<T: Transport>(
    iommu: &mut Iommu<T>,
    trigger: impl FnOnce() -> Result<(), String>,
) -> Result<Event, String> {
    expect("UNMAP", iommu.unmap(DOMAIN, IOVA, PAGE), Ok(()))?;
    trigger()?;
    let start = Instant::now();
    loop {
        match iommu.poll_event() {
            Ok(Some(e)) => return Ok(e),
            Ok(None) if start.elapsed() > STEP_WAIT => return Err("no event".into()),
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("event queue: {e}")),
        }
    }
}

/// The fault a read of the unmapped `IOVA` by `ep` must raise. QEMU reports no access flags
/// for a missing mapping (only for a permission fault); the daemon reports the read.
fn expected_fault(kind: DeviceKind, ep: u32) -> Event {
    Event::Fault(FaultEvent {
        reason: FaultReason::Mapping,
        access: kind.pick(FaultFlags::empty(), FaultFlags::READ),
        endpoint: ep,
        address: Some(IOVA),
        pasid: None,
    })
}

/// The daemon: the host reads and writes through the mapping, then faults on it.
pub fn host<T: Transport>(r: &mut Report, iommu: &mut Iommu<T>, ep: u32, page: Page) {
    if let Err(e) = setup(iommu, ep, page) {
        r.check("host-dma", Err(e));
        return;
    }
    let want = pattern();
    println!(
        "GUEST-PCI-HOLD endpoint={ep:#x} iova={IOVA:#x} back={BACK:#x} data={}",
        hex(&want)
    );
    let got = wait_back(page, &want);
    r.check(
        "host-dma",
        expect("bytes the host wrote back through the IOMMU", got, want),
    );
    let event = fault(iommu, || {
        println!("GUEST-PCI-HOLD-FAULT endpoint={ep:#x} iova={IOVA:#x}");
        Ok(())
    });
    r.check(
        "fault-event",
        expect("event", event, Ok(expected_fault(DeviceKind::Daemon, ep))),
    );
    r.check(
        "fault-detach",
        expect("DETACH", iommu.detach(DOMAIN, ep), Ok(())),
    );
}

/// QEMU's `edu` device, BAR0 registers.
struct Edu {
    regs: NonNull<u8>,
}

impl Edu {
    const ID: usize = 0x00;
    const DMA_SRC: usize = 0x80;
    const DMA_DST: usize = 0x88;
    const DMA_CNT: usize = 0x90;
    const DMA_CMD: usize = 0x98;
    /// Start; with `TO_PCI` the copy goes from the edu buffer to the bus address.
    const RUN: u64 = 1;
    const TO_PCI: u64 = 2;
    /// Where the edu buffer sits in the device's DMA address space.
    const BUFFER: u64 = 0x4_0000;
    /// Registers used, the minimum BAR length.
    const REGS_LEN: u64 = 0xa0;

    fn read(&self, off: usize) -> u64 {
        // SAFETY: `off` is one of the register constants, 8-aligned and below REGS_LEN, which
        // the BAR length was checked against.
        unsafe { self.regs.as_ptr().add(off).cast::<u64>().read_volatile() }
    }

    fn read32(&self, off: usize) -> u32 {
        // SAFETY: as in `read`.
        unsafe { self.regs.as_ptr().add(off).cast::<u32>().read_volatile() }
    }

    fn write(&self, off: usize, v: u64) {
        // SAFETY: as in `read`.
        unsafe { self.regs.as_ptr().add(off).cast::<u64>().write_volatile(v) }
    }

    /// One DMA (`cmd` = RUN [| TO_PCI]); waits for the device to finish it.
    fn dma(&self, src: u64, dst: u64, cmd: u64) -> Result<(), String> {
        self.write(Self::DMA_SRC, src);
        self.write(Self::DMA_DST, dst);
        self.write(Self::DMA_CNT, LEN as u64);
        self.write(Self::DMA_CMD, cmd);
        let start = Instant::now();
        while self.read(Self::DMA_CMD) & Self::RUN != 0 {
            if start.elapsed() > STEP_WAIT {
                return Err(format!("edu DMA {src:#x} -> {dst:#x} did not finish"));
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

/// QEMU: an `edu` endpoint (BAR0 at `regs`, `len` bytes) copies through the mapping and back,
/// then faults after the UNMAP.
pub fn edu<T: Transport>(
    r: &mut Report,
    iommu: &mut Iommu<T>,
    ep: u32,
    page: Page,
    (regs, len): (NonNull<u8>, u64),
) {
    if len < Edu::REGS_LEN {
        r.check("edu-dma", Err(format!("edu BAR0 is {len:#x} bytes")));
        return;
    }
    let edu = Edu { regs };
    let id = edu.read32(Edu::ID);
    if id & 0xff != 0xed {
        r.check("edu-dma", Err(format!("edu ID register {id:#x}")));
        return;
    }
    let want = pattern();
    let copied = setup(iommu, ep, page)
        .and_then(|()| edu.dma(IOVA, Edu::BUFFER, Edu::RUN))
        .and_then(|()| edu.dma(Edu::BUFFER, IOVA + BACK as u64, Edu::RUN | Edu::TO_PCI))
        .and_then(|()| {
            expect(
                "bytes edu copied through the IOMMU",
                wait_back(page, &want),
                want.clone(),
            )
        });
    r.check("edu-dma", copied);
    let event = fault(iommu, || edu.dma(IOVA, Edu::BUFFER, Edu::RUN));
    r.check(
        "fault-event",
        expect("event", event, Ok(expected_fault(DeviceKind::Qemu, ep))),
    );
    r.check(
        "fault-detach",
        expect("DETACH", iommu.detach(DOMAIN, ep), Ok(())),
    );
}
