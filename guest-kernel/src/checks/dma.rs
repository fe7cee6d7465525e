//! Real DMA through the IOMMU's translations, and the fault event an unmapped access raises.
//!
//! - QEMU's device translates QEMU's own DMA, so an `edu` endpoint copies bytes through a
//!   mapping into its buffer and back out through another part of it, then faults after the
//!   UNMAP.
//! - The daemon translates for the host side: the host reads the mapped pattern and writes
//!   it back through the daemon's control socket (`dma-read`, `dma-write`); after the UNMAP
//!   the host's `dma-read` must fault.
//!
//! Either way the kernel then takes the fault from the event queue, woken by the device's
//! interrupt.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use virtio_iommu_driver::{AttachFlags, Event, FaultEvent, FaultReason, MapFlags, Mapping};
use virtio_iommu_spec::event::FaultFlags;

use super::{irq, Iommu, Page};
use crate::device_kind::DeviceKind;
use crate::host::{self, Dma, Expect, Op};
use crate::interrupts;
use crate::report::{expect, Report};

const DOMAIN: u32 = 9;
/// Below edu's 28-bit DMA mask.
const IOVA: u64 = 0x70_0000;
const PAGE: u64 = 0x1000;
/// Bytes copied.
const LEN: usize = 64;
/// Where in the page the copy comes back.
const BACK: usize = 0x800;
/// How long the host or the device may take for one step.
const STEP_WAIT_MS: u32 = 10_000;

fn pattern() -> Vec<u8> {
    (0..LEN)
        .map(|i| u8::try_from((i * 37 + 11) % 256).unwrap_or(0))
        .collect()
}

/// Attaches `ep`, writes the pattern at the start of the page and maps the page at `IOVA`.
fn setup(iommu: &mut Iommu, ep: u32, page: Page) -> Result<(), String> {
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

/// Unmaps the page, lets `trigger` access the unmapped IOVA, and returns the first event,
/// taken after the device's interrupt on `line`.
fn fault(
    iommu: &mut Iommu,
    line: u8,
    kind: DeviceKind,
    trigger: impl FnOnce() -> Result<(), String>,
) -> Result<Event, String> {
    expect("UNMAP", iommu.unmap(DOMAIN, IOVA, PAGE), Ok(()))?;
    event_after(iommu, line, kind, trigger)
}

/// Lets `trigger` make a faulting access of `LEN` bytes and returns the first event, taken
/// after the device's interrupt on `line`. The rest of the event queue is drained: the daemon
/// reports one fault per access; QEMU one per failed translation (edu's DMA translates in
/// pieces), each the same fault at a later address of the access.
fn event_after(
    iommu: &mut Iommu,
    line: u8,
    kind: DeviceKind,
    trigger: impl FnOnce() -> Result<(), String>,
) -> Result<Event, String> {
    // Lower the line first: earlier (polled) completions left it raised.
    iommu.ack_interrupt();
    trigger()?;
    let (first, _) = irq::wait_until(iommu, line, STEP_WAIT_MS, |iommu| {
        iommu.poll_event().transpose()
    })?;
    let first = first.map_err(|e| format!("event queue: {e}"))?;
    let mut more = Vec::new();
    while let Some(e) = iommu
        .poll_event()
        .map_err(|e| format!("event queue: {e}"))?
    {
        if more.len() >= LEN {
            return Err(format!("more than {LEN} further events"));
        }
        more.push(e);
    }
    let same_access = |e: &Event| match (e, &first) {
        (Event::Fault(f), Event::Fault(f0)) => {
            let (a, a0) = (f.address.unwrap_or(0), f0.address.unwrap_or(0));
            f.reason == f0.reason && f.endpoint == f0.endpoint && a > a0 && a < a0 + LEN as u64
        }
        _ => false,
    };
    match kind {
        DeviceKind::Daemon => expect("further events", more, Vec::new())?,
        DeviceKind::Qemu => {
            if let Some(bad) = more.iter().find(|e| !same_access(e)) {
                return Err(format!("after {first:?}, an unrelated event {bad:?}"));
            }
        }
    }
    Ok(first)
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
pub fn host(r: &mut Report, iommu: &mut Iommu, ep: u32, page: Page, line: u8) {
    if let Err(e) = setup(iommu, ep, page) {
        r.check("host-dma", Err(e));
        return;
    }
    let want = pattern();
    let read = Dma {
        endpoint: ep,
        pasid: None,
        iova: IOVA,
        op: Op::Read(LEN),
    };
    host::request(&read, Expect::Data(&want), false);
    let back = Dma {
        endpoint: ep,
        pasid: None,
        iova: IOVA + BACK as u64,
        op: Op::Write(&want),
    };
    host::request(&back, Expect::Ok, false);
    let got = page.wait_for(BACK, &want, STEP_WAIT_MS);
    r.check(
        "host-dma",
        expect("bytes the host wrote back through the IOMMU", got, want),
    );
    let event = fault(iommu, line, DeviceKind::Daemon, || {
        host::request(&read, Expect::Fault, false);
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

/// The fault an unattached endpoint's access raises with bypass off. QEMU has forgotten the
/// detached endpoint and reports an unknown one, with no access flags; the daemon reports a
/// missing domain and the read.
fn expected_bypass_fault(kind: DeviceKind, ep: u32, address: u64) -> Event {
    Event::Fault(FaultEvent {
        reason: kind.pick(FaultReason::Unknown, FaultReason::Domain),
        access: kind.pick(FaultFlags::empty(), FaultFlags::READ),
        endpoint: ep,
        address: Some(address),
        pasid: None,
    })
}

/// Bypass on and off with the daemon: an unattached endpoint (`ep`) reads and writes guest
/// memory 1:1 while `bypass` is set, and faults once it is cleared.
pub fn host_bypass(r: &mut Report, iommu: &mut Iommu, ep: u32, page: Page, line: u8) {
    let want = pattern();
    page.write(0, &want);
    page.write(BACK, &[0; LEN]);
    let read = Dma {
        endpoint: ep,
        pasid: None,
        iova: page.paddr,
        op: Op::Read(LEN),
    };
    host::request(&read, Expect::Data(&want), false);
    let back = Dma {
        endpoint: ep,
        pasid: None,
        iova: page.paddr + BACK as u64,
        op: Op::Write(&want),
    };
    host::request(&back, Expect::Ok, false);
    let got = page.wait_for(BACK, &want, STEP_WAIT_MS);
    r.check("bypass-on-dma", expect("bytes written 1:1", got, want));
    let event = expect("set_bypass(false)", iommu.set_bypass(false), Ok(())).and_then(|()| {
        event_after(iommu, line, DeviceKind::Daemon, || {
            host::request(&read, Expect::Fault, false);
            Ok(())
        })
    });
    r.check(
        "bypass-off-fault",
        expect(
            "event",
            event,
            Ok(expected_bypass_fault(DeviceKind::Daemon, ep, page.paddr)),
        )
        .and_then(|()| expect("set_bypass(true)", iommu.set_bypass(true), Ok(()))),
    );
}

/// QEMU's `edu` device, BAR0 registers.
struct Edu {
    regs: u64,
}

impl Edu {
    const ID: u64 = 0x00;
    const DMA_SRC: u64 = 0x80;
    const DMA_DST: u64 = 0x88;
    const DMA_CNT: u64 = 0x90;
    const DMA_CMD: u64 = 0x98;
    /// Start; with `TO_PCI` the copy goes from the edu buffer to the bus address.
    const RUN: u64 = 1;
    const TO_PCI: u64 = 2;
    /// Where the edu buffer sits in the device's DMA address space.
    const BUFFER: u64 = 0x4_0000;
    /// Registers used, the minimum BAR length.
    const REGS_LEN: u64 = 0xa0;

    fn read(&self, off: u64) -> u64 {
        // SAFETY: `off` is one of the register constants, 8-aligned and below REGS_LEN, which
        // the BAR length was checked against; the BAR is identity-mapped MMIO.
        unsafe { ((self.regs + off) as *const u64).read_volatile() }
    }

    fn read32(&self, off: u64) -> u32 {
        // SAFETY: as in `read`.
        unsafe { ((self.regs + off) as *const u32).read_volatile() }
    }

    fn write(&self, off: u64, v: u64) {
        // SAFETY: as in `read`.
        unsafe { ((self.regs + off) as *mut u64).write_volatile(v) }
    }

    /// One DMA (`cmd` = RUN [| TO_PCI]); waits for the device to finish it.
    fn dma(&self, src: u64, dst: u64, cmd: u64) -> Result<(), String> {
        self.write(Self::DMA_SRC, src);
        self.write(Self::DMA_DST, dst);
        self.write(Self::DMA_CNT, LEN as u64);
        self.write(Self::DMA_CMD, cmd);
        if interrupts::poll_ms(STEP_WAIT_MS, || self.read(Self::DMA_CMD) & Self::RUN == 0) {
            Ok(())
        } else {
            Err(format!("edu DMA {src:#x} -> {dst:#x} did not finish"))
        }
    }
}

/// QEMU: an `edu` endpoint (BAR0 at `regs`, `len` bytes) copies through the mapping and back,
/// then faults after the UNMAP.
pub fn edu(r: &mut Report, iommu: &mut Iommu, ep: u32, page: Page, bar: (u64, u64), line: u8) {
    let (regs, len) = bar;
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
                page.wait_for(BACK, &want, STEP_WAIT_MS),
                want.clone(),
            )
        });
    r.check("edu-dma", copied);
    let event = fault(iommu, line, DeviceKind::Qemu, || {
        edu.dma(IOVA, Edu::BUFFER, Edu::RUN)
    });
    r.check(
        "fault-event",
        expect("event", event, Ok(expected_fault(DeviceKind::Qemu, ep))),
    );
    r.check(
        "fault-detach",
        expect("DETACH", iommu.detach(DOMAIN, ep), Ok(())),
    );

    // Bypass on and off: the now unattached endpoint copies 1:1, then faults.
    page.write(BACK, &[0; LEN]);
    let copied = edu
        .dma(page.paddr, Edu::BUFFER, Edu::RUN)
        .and_then(|()| {
            edu.dma(
                Edu::BUFFER,
                page.paddr + BACK as u64,
                Edu::RUN | Edu::TO_PCI,
            )
        })
        .and_then(|()| {
            expect(
                "bytes edu copied 1:1",
                page.wait_for(BACK, &want, STEP_WAIT_MS),
                want.clone(),
            )
        });
    r.check("bypass-on-dma", copied);
    let event = expect("set_bypass(false)", iommu.set_bypass(false), Ok(())).and_then(|()| {
        event_after(iommu, line, DeviceKind::Qemu, || {
            edu.dma(page.paddr, Edu::BUFFER, Edu::RUN)
        })
    });
    r.check(
        "bypass-off-fault",
        expect(
            "event",
            event,
            Ok(expected_bypass_fault(DeviceKind::Qemu, ep, page.paddr)),
        )
        .and_then(|()| expect("set_bypass(true)", iommu.set_bypass(true), Ok(()))),
    );
}
