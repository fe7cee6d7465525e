//! A freestanding x86-64 kernel that drives a virtio-iommu over real virtio-pci with
//! `virtio-iommu-driver`: QEMU's own `virtio-iommu-pci`, or vhost-device-iommu behind
//! `vhost-user-test-device-pci` (`scripts/test-baremetal.sh` boots both).
//!
//! Booted by QEMU's `-kernel` through the PVH entry ([`boot`]); the command line says which
//! device answers (`device=qemu|daemon`, plus `sva=1` for the vSVA checks, or `blk=1` for the
//! confined virtio-blk checks alone). Results go to the serial port ([`report`]) and the exit status through `isa-debug-exit` ([`exit`]).
//!
//! Memory: everything below 4 GiB is identity mapped, so a virtual address is the physical
//! address the device sees. After the image come the heap and then the DMA pool the
//! [`hal::KernelHal`] hands out.

#![no_std]
#![no_main]

extern crate alloc;

mod boot;
mod checks;
mod confined_hal;
mod cpu;
mod device_kind;
mod exit;
mod hal;
mod heap;
mod host;
mod interrupts;
mod pci;
mod platform_transport;
mod raw_device;
mod report;
mod rt;
mod serial;
mod tsc;

use core::fmt;
use core::panic::PanicInfo;

use boot::StartInfo;
use device_kind::Args;
use heap::Heap;

#[global_allocator]
static HEAP: Heap = Heap::new();

/// Heap size.
const HEAP_SIZE: u64 = 32 << 20;
/// DMA pool size.
const DMA_POOL_SIZE: u64 = 64 << 20;
/// Where the regions start: aligned above the image.
const REGION_ALIGN: u64 = 2 << 20;

extern "C" {
    static __kernel_end: u8;
}

/// Prints a failure and ends the VM with the failure status.
pub fn fatal(what: fmt::Arguments<'_>) -> ! {
    println!("KERNEL: FAIL fatal: {what}");
    println!("KERNEL-RESULT: aborted");
    exit::exit(exit::FAILED)
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    fatal(format_args!("panic: {info}"))
}

/// Sets up memory and interrupts, then runs the checks. Called by the boot code with the
/// physical address of the PVH start info.
pub extern "C" fn kmain(start_info: u32) -> ! {
    serial::init();
    serial::init_logger();
    println!("KERNEL-INFO: virtio-iommu bare-metal kernel up (long mode, SSE)");
    // SAFETY: the boot code passes the loader's `ebx` unchanged.
    let Some(info) = (unsafe { StartInfo::read(u64::from(start_info)) }) else {
        fatal(format_args!("no PVH start info at {start_info:#x}"))
    };
    let args = match Args::parse(info.cmdline()) {
        Ok(a) => a,
        Err(e) => fatal(format_args!("command line {:?}: {e}", info.cmdline())),
    };

    // A linker-script symbol: only its address is used.
    let image_end = core::ptr::addr_of!(__kernel_end) as u64;
    let heap_start = image_end.next_multiple_of(REGION_ALIGN);
    let dma_start = heap_start + HEAP_SIZE;
    let dma_end = dma_start + DMA_POOL_SIZE;
    if !info.is_ram(heap_start, dma_end) {
        fatal(format_args!(
            "{heap_start:#x}..{dma_end:#x} is not RAM in the PVH memory map (give -m 256 or more)"
        ));
    }
    let (Ok(heap_lo), Ok(heap_hi)) = (usize::try_from(heap_start), usize::try_from(dma_start))
    else {
        fatal(format_args!(
            "heap {heap_start:#x} beyond the address space"
        ))
    };
    // SAFETY: RAM above the image that nothing else uses (checked against the memory map).
    unsafe { HEAP.init(heap_lo, heap_hi) };
    hal::init_pool(dma_start, dma_end);
    interrupts::init();
    let tsc_per_ms = tsc::calibrate();
    println!(
        "KERNEL-INFO: device={} sva={} blk={} heap {heap_start:#x}, DMA pool {dma_start:#x}..{dma_end:#x}, TSC {tsc_per_ms} cycles/ms",
        args.kind.name(),
        args.sva,
        args.blk
    );
    let passed = checks::run(args);
    exit::exit(if passed { exit::PASSED } else { exit::FAILED })
}
