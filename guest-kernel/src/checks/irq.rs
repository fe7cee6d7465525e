//! Interrupt-driven completion, as a kernel with interrupts runs the driver: submit without
//! waiting, halt until the device's INTx arrives, acknowledge it with `ack_interrupt`, then
//! collect the completion with `poll`.

use alloc::format;
use alloc::string::String;

use virtio_iommu_driver::{AttachFlags, Error, InterruptStatus, MapFlags, Reply, Request, Token};
use virtio_iommu_spec::request::{Attach, Detach, Map, Unmap};

use super::{Iommu, Setup};
use crate::interrupts;
use crate::report::{expect, Report};

/// How long one interrupt-driven wait may take.
pub const IRQ_WAIT_MS: u32 = 10_000;

/// How a wait was woken.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Wakeups {
    /// Interrupts taken on the line.
    pub interrupts: u32,
    /// The ISR bits read when acknowledging them, combined.
    pub status: InterruptStatus,
}

impl core::fmt::Debug for Wakeups {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Wakeups")
            .field("interrupts", &self.interrupts)
            .field("status", &self.status.bits())
            .finish()
    }
}

/// Waits, woken by the device's interrupts, until `ready` returns something; looks only after
/// an interrupt (the point is to be woken by the device), acknowledging each one (reading the
/// ISR lowers the line) and unmasking the line again. An interrupt that finds nothing ready
/// (a stale one latched while the line was masked) just waits again.
///
/// # Errors
/// Nothing ready within `ms`.
pub fn wait_until<R>(
    iommu: &mut Iommu,
    line: u8,
    ms: u32,
    mut ready: impl FnMut(&mut Iommu) -> Option<R>,
) -> Result<(R, Wakeups), String> {
    let mut woke = Wakeups::default();
    let ticks = ms.div_ceil(1000 / interrupts::TICK_HZ);
    let start = interrupts::ticks();
    while interrupts::ticks().wrapping_sub(start) < ticks {
        let before = interrupts::count(line);
        interrupts::unmask(line);
        interrupts::wait_ticks(ticks, || interrupts::count(line) != before);
        interrupts::mask(line);
        if interrupts::count(line) == before {
            break;
        }
        woke.interrupts += interrupts::count(line) - before;
        woke.status |= iommu.ack_interrupt();
        if let Some(r) = ready(iommu) {
            return Ok((r, woke));
        }
    }
    Err(format!(
        "nothing within {ms} ms ({} interrupts on IRQ {line})",
        woke.interrupts
    ))
}

/// Submits `req`, then collects it with `poll` once an interrupt said it completed.
fn one(
    iommu: &mut Iommu,
    line: u8,
    req: &Request,
) -> Result<(Result<Reply, Error>, Wakeups), String> {
    // Lower the line first: earlier (polled) completions left it raised.
    iommu.ack_interrupt();
    let token: Token = iommu.submit(req).map_err(|e| format!("submit: {e}"))?;
    let (reply, woke) = wait_until(iommu, line, IRQ_WAIT_MS, |iommu| match iommu.poll(token) {
        Ok(None) => None,
        Ok(Some(reply)) => Some(Ok(reply)),
        Err(e) => Some(Err(e)),
    })?;
    expect(
        "ISR QUEUE_INTERRUPT bit",
        woke.status.contains(InterruptStatus::QUEUE_INTERRUPT),
        true,
    )?;
    Ok((reply, woke))
}

/// ATTACH, MAP, UNMAP and DETACH, each completed through an interrupt.
pub fn run(r: &mut Report, iommu: &mut Iommu, s: &Setup, line: u8) {
    let d = 30;
    let (iova, last) = (0x30_0000, 0x30_0fff);
    let map = Request::Map(Map {
        domain: d,
        virt_start: iova,
        virt_end: last,
        phys_start: s.target,
        flags: MapFlags::READ | MapFlags::WRITE,
    });
    let steps = [
        (
            "ATTACH",
            Request::Attach(Attach {
                domain: d,
                endpoint: s.ep,
                flags: AttachFlags::empty(),
            }),
            Ok(Reply::Done),
        ),
        ("MAP", map, Ok(Reply::Done)),
        ("MAP over it", map, Err(Error::Inval)),
        (
            "UNMAP",
            Request::Unmap(Unmap {
                domain: d,
                virt_start: iova,
                virt_end: last,
            }),
            Ok(Reply::Done),
        ),
        (
            "DETACH",
            Request::Detach(Detach {
                domain: d,
                endpoint: s.ep,
            }),
            Ok(Reply::Done),
        ),
    ];
    let mut taken = 0;
    let mut result = Ok(());
    for (what, req, want) in steps {
        result = one(iommu, line, &req).and_then(|(got, woke)| {
            taken += woke.interrupts;
            expect(what, got, want)
        });
        if result.is_err() {
            break;
        }
    }
    r.info(format!(
        "IRQ {line}: {taken} interrupts woke 5 interrupt-driven requests"
    ));
    r.check("irq-completion", result);
}
