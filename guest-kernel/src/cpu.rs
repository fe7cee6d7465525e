//! The few x86 instructions the kernel needs: port I/O, the TSC, halting.

use core::arch::asm;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port writes have no memory effects; the ports the kernel uses belong to the
    // legacy devices it drives (serial, PIC, PIT, debug exit, PCI config address).
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags));
    };
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as in `outb`.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags));
    };
    value
}

/// Writes a 32-bit word to an I/O port.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as in `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags));
    };
}

/// Reads a 32-bit word from an I/O port.
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as in `outb`.
    unsafe {
        asm!("in eax, dx", out("eax") value, in("dx") port, options(nomem, nostack, preserves_flags));
    };
    value
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC only reads the counter.
    unsafe {
        asm!("lfence", "rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
    };
    u64::from(hi) << 32 | u64::from(lo)
}

/// Enables interrupts, halts until one arrives and disables them again. Interrupts are taken
/// only here: the block may use the stack (no `nostack`), so no caller keeps data in the red
/// zone of the prebuilt code across it, and handlers never interrupt other kernel code.
pub fn wait_for_interrupt() {
    // SAFETY: the IDT is loaded before the first call (`interrupts::init`), every unmasked
    // vector has a handler, and `sti; hlt` leaves no window in which a wake-up is lost.
    unsafe { asm!("sti", "hlt", "cli") };
}

/// Stops the CPU for good.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: with interrupts off, HLT parks the CPU; nothing follows.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
