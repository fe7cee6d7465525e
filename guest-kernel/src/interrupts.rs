//! Interrupts: an IDT whose exception vectors report and end the VM, the 8259 PICs remapped
//! to vectors 0x20–0x2f, and the PIT ticking at 100 Hz so that every wait wakes up to look at
//! its deadline.
//!
//! Interrupts are only taken inside [`cpu::wait_for_interrupt`]. A device line (PCI INTx,
//! level-triggered) is masked by its handler and counted; the waiter acknowledges the device
//! (reading its ISR lowers the line) and unmasks it again: the usual mask–ack–unmask of a
//! level interrupt.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::cpu::{self, inb, outb};

/// The PIT's rate.
pub const TICK_HZ: u32 = 100;
/// First vector of the remapped PICs.
const IRQ_BASE: u8 = 0x20;
const PIC1: u16 = 0x20;
const PIC2: u16 = 0xa0;
const PIT_CH0: u16 = 0x40;
const PIT_CMD: u16 = 0x43;
const PIT_HZ: u32 = 1_193_182;
const EOI: u8 = 0x20;

/// Interrupts taken per IRQ line.
static COUNTS: [AtomicU32; 16] = [const { AtomicU32::new(0) }; 16];
/// The PICs' mask (bit set = masked), kept here to avoid reading it back.
static MASK: AtomicU32 = AtomicU32::new(0xffff);

global_asm!(
    ".section .text",
    // Exceptions: a uniform frame [vector, error code, rip, cs, rflags, rsp, ss].
    ".irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31",
    "exc_stub_\\n:",
    "push 0",
    "push \\n",
    "jmp exc_common",
    ".endr",
    ".irp n, 8,10,11,12,13,14,17,21,29,30",
    "exc_stub_\\n:",
    "push \\n",
    "jmp exc_common",
    ".endr",
    "exc_common:",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {exception}",
    "ud2",
    // IRQs 0-15: caller-saved registers and the SSE state survive the Rust handler.
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    "irq_stub_\\n:",
    "push \\n",
    "jmp irq_common",
    ".endr",
    "irq_common:",
    "push rax",
    "push rcx",
    "push rdx",
    "push rsi",
    "push rdi",
    "push r8",
    "push r9",
    "push r10",
    "push r11",
    "push rbp",
    "mov rbp, rsp",
    "mov rdi, [rbp + 80]",
    "sub rsp, 512",
    "and rsp, -16",
    "fxsave [rsp]",
    "call {irq}",
    "fxrstor [rsp]",
    "mov rsp, rbp",
    "pop rbp",
    "pop r11",
    "pop r10",
    "pop r9",
    "pop r8",
    "pop rdi",
    "pop rsi",
    "pop rdx",
    "pop rcx",
    "pop rax",
    "add rsp, 8",
    "iretq",
    ".section .rodata",
    ".balign 8",
    ".global exc_stubs",
    "exc_stubs:",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    ".quad exc_stub_\\n",
    ".endr",
    ".global irq_stubs",
    "irq_stubs:",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    ".quad irq_stub_\\n",
    ".endr",
    exception = sym exception,
    irq = sym irq,
);

extern "C" {
    static exc_stubs: [u64; 32];
    static irq_stubs: [u64; 16];
}

/// One IDT gate.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    const MISSING: Gate = Gate {
        offset_low: 0,
        selector: 0,
        ist: 0,
        attributes: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    /// A present 64-bit interrupt gate (interrupts stay off in the handler).
    #[allow(clippy::cast_possible_truncation)] // the address is split into its fields
    fn interrupt(handler: u64) -> Gate {
        Gate {
            offset_low: handler as u16,
            selector: 0x08,
            ist: 0,
            attributes: 0x8e,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static mut IDT: Idt = Idt([Gate::MISSING; 256]);

#[repr(C, packed)]
struct IdtPointer {
    limit: u16,
    base: u64,
}

/// Reports a CPU exception and ends the VM.
extern "C" fn exception(frame: *const u64) -> ! {
    // SAFETY: `exc_common` passes its stack pointer, which points at the 7-word frame.
    let f = unsafe { core::slice::from_raw_parts(frame, 7) };
    let cr2: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack)) };
    crate::fatal(format_args!(
        "CPU exception {} (error {:#x}) at rip {:#x}, rsp {:#x}, cr2 {cr2:#x}",
        f[0], f[1], f[2], f[5]
    ))
}

fn write_mask(mask: u32) {
    MASK.store(mask, Ordering::Relaxed);
    let [low, high, ..] = mask.to_le_bytes();
    outb(PIC1 + 1, low);
    outb(PIC2 + 1, high);
}

/// In-service register of a PIC (OCW3 read ISR).
fn in_service(pic: u16) -> u8 {
    outb(pic, 0x0b);
    inb(pic)
}

/// Counts the interrupt; masks a device line until its waiter acknowledged the device.
extern "C" fn irq(line: u64) {
    let line = (line & 0xf) as usize;
    // A spurious IRQ 7/15 is not in service and gets no EOI (15 still needs the master's).
    if line == 7 && in_service(PIC1) & 0x80 == 0 {
        return;
    }
    if line == 15 && in_service(PIC2) & 0x80 == 0 {
        outb(PIC1, EOI);
        return;
    }
    COUNTS[line].fetch_add(1, Ordering::Relaxed);
    if line != 0 {
        write_mask(MASK.load(Ordering::Relaxed) | 1 << line);
    }
    if line >= 8 {
        outb(PIC2, EOI);
    }
    outb(PIC1, EOI);
}

/// Loads the IDT, remaps and masks the PICs, starts the PIT on IRQ 0.
pub fn init() {
    // SAFETY: single-threaded boot code, before interrupts are ever enabled: nothing else
    // reads the IDT while it is filled; the stub tables are defined in the assembly above.
    unsafe {
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        for (v, stub) in exc_stubs.iter().enumerate() {
            idt.0[v] = Gate::interrupt(*stub);
        }
        for (i, stub) in irq_stubs.iter().enumerate() {
            idt.0[usize::from(IRQ_BASE) + i] = Gate::interrupt(*stub);
        }
        let ptr = IdtPointer {
            limit: u16::try_from(core::mem::size_of::<Idt>() - 1).unwrap_or(u16::MAX),
            base: idt as *const Idt as u64,
        };
        core::arch::asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack));
    }
    // ICW1-4: edge/level from ELCR, cascade on IRQ 2, 8086 mode.
    outb(PIC1, 0x11);
    outb(PIC2, 0x11);
    outb(PIC1 + 1, IRQ_BASE);
    outb(PIC2 + 1, IRQ_BASE + 8);
    outb(PIC1 + 1, 4);
    outb(PIC2 + 1, 2);
    outb(PIC1 + 1, 1);
    outb(PIC2 + 1, 1);
    // Everything masked but the timer and the cascade.
    write_mask(0xffff & !(1 | 1 << 2));
    let divisor = PIT_HZ / TICK_HZ;
    outb(PIT_CMD, 0x34); // channel 0, lo/hi byte, rate generator
    let [low, high, ..] = divisor.to_le_bytes();
    outb(PIT_CH0, low);
    outb(PIT_CH0, high);
}

/// Interrupts taken on `line` so far.
pub fn count(line: u8) -> u32 {
    COUNTS[usize::from(line & 0xf)].load(Ordering::Relaxed)
}

/// Timer ticks so far.
pub fn ticks() -> u32 {
    count(0)
}

/// Unmasks a device line (after its device was acknowledged).
pub fn unmask(line: u8) {
    let line = line & 0xf;
    write_mask(MASK.load(Ordering::Relaxed) & !(1 << line));
}

/// Masks a device line.
pub fn mask(line: u8) {
    let line = line & 0xf;
    if line != 0 && line != 2 {
        write_mask(MASK.load(Ordering::Relaxed) | 1 << line);
    }
}

/// Halts until `done()` holds or `ticks` timer ticks passed; returns whether it holds.
pub fn wait_ticks(ticks: u32, mut done: impl FnMut() -> bool) -> bool {
    let start = self::ticks();
    loop {
        if done() {
            return true;
        }
        if self::ticks().wrapping_sub(start) >= ticks {
            return done();
        }
        cpu::wait_for_interrupt();
    }
}

/// [`wait_ticks`] in milliseconds.
pub fn wait_ms(ms: u32, done: impl FnMut() -> bool) -> bool {
    wait_ticks(ms.div_ceil(1000 / TICK_HZ), done)
}

/// Spins that [`poll_ms`] tries before halting between looks.
const POLL_SPINS: u32 = 20_000;

/// Waits for `done()` up to `ms`: spins briefly first (so an answer that comes at once costs
/// no timer tick), then halts between looks.
pub fn poll_ms(ms: u32, mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..POLL_SPINS {
        if done() {
            return true;
        }
        core::hint::spin_loop();
    }
    wait_ms(ms, done)
}
