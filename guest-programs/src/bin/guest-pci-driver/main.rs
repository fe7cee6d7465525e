//! Runs as root inside a Linux guest (scripts/test-guest-driver.sh) and drives a virtio-iommu
//! PCI function with `virtio-iommu-driver` from user space: the function is taken from the
//! kernel's virtio-pci driver, its config space reached through sysfs, its BARs mapped from
//! `resourceN`, and DMA memory is a hugetlb page whose guest-physical address comes from
//! pagemap (requests reach it through bounce buffers). Interrupts are not used: the driver
//! polls.
//!
//! usage: `guest-pci-driver --device qemu|daemon [--endpoints VENDOR:DEVICE] [--hold]`
//!
//! - `--device`: which device answers (QEMU's virtio-iommu-pci or vhost-device-iommu), for the
//!   few checks where QEMU legitimately differs.
//! - `--endpoints`: PCI ID of the functions used as endpoints (default `1234:11e8`, QEMU's
//!   `edu`, which does no DMA on its own); at least two must exist. Endpoint ID = requester ID.
//! - `--hold` (daemon): after the scenario, map a page with a pattern, print `GUEST-PCI-HOLD …`
//!   and wait for the host to read it through the daemon's translation and write it back at
//!   offset 0x800; then unmap it, print `GUEST-PCI-HOLD-FAULT …` and wait for the fault the
//!   host's access raises. Against QEMU the first endpoint's own DMA does the same.
//!
//! Output: `GUEST-PCI: PASS <name>` / `GUEST-PCI: FAIL <name>: <why>` per check and a final
//! `GUEST-PCI-RESULT: N passed, M failed`; exit status 0 only if nothing failed.

mod alloc;
mod dma;
mod dma_checks;
mod hal;
mod raw;
mod raw_checks;
mod report;
mod scenario;
mod sysfs;

use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use virtio_drivers::transport::pci::bus::{Command, PciRoot};
use virtio_drivers::transport::pci::PciTransport;
use virtio_iommu_driver::{DriverOptions, Features};

use crate::dma::Region;
use crate::dma_checks::Page;
use crate::hal::UserHal;
use crate::raw::RawDevice;
use crate::report::{expect, DeviceKind, Report};
use crate::scenario::{Iommu, Setup};
use crate::sysfs::{PciFunction, SysfsConfig};

/// PCI ID of a modern virtio-iommu function.
const IOMMU_ID: (u16, u16) = (0x1af4, 0x1057);
/// Whole-program time limit: a device that stops answering must not hang the VM.
const WATCHDOG: Duration = Duration::from_secs(75);
/// Polls of the used ring before a blocking driver call gives up (seconds under TCG).
const MAX_SPINS: u64 = 400_000_000;

/// Features both devices offer (the daemon runs with `--mmio`).
const EXPECTED_FEATURES: Features = Features::INPUT_RANGE
    .union(Features::DOMAIN_RANGE)
    .union(Features::MAP_UNMAP)
    .union(Features::PROBE)
    .union(Features::MMIO)
    .union(Features::BYPASS_CONFIG);

struct Args {
    kind: DeviceKind,
    endpoints: (u16, u16),
    hold: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut kind = None;
    let mut endpoints = (0x1234, 0x11e8);
    let mut hold = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--device" => {
                kind = Some(match it.next().as_deref() {
                    Some("qemu") => DeviceKind::Qemu,
                    Some("daemon") => DeviceKind::Daemon,
                    other => return Err(format!("--device qemu|daemon, not {other:?}")),
                });
            }
            "--endpoints" => {
                let v = it.next().ok_or("--endpoints needs VENDOR:DEVICE")?;
                let (a, b) = v.split_once(':').ok_or("--endpoints needs VENDOR:DEVICE")?;
                let p = |s: &str| u16::from_str_radix(s, 16).map_err(|e| format!("{v}: {e}"));
                endpoints = (p(a)?, p(b)?);
            }
            "--hold" => hold = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        kind: kind.ok_or("--device is required")?,
        endpoints,
        hold,
    })
}

fn abort(what: impl std::fmt::Display) -> ExitCode {
    println!("GUEST-PCI: FAIL setup: {what}");
    println!("GUEST-PCI-RESULT: aborted");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => return abort(e),
    };
    thread::spawn(|| {
        thread::sleep(WATCHDOG);
        println!("GUEST-PCI: FAIL watchdog: still running after {WATCHDOG:?}");
        println!("GUEST-PCI-RESULT: aborted");
        std::process::exit(3);
    });
    let mut r = Report::default();

    // DMA memory first: a 2 MiB page reserved for this program.
    if let Err(e) = std::fs::write("/proc/sys/vm/nr_hugepages", "2") {
        return abort(format!("reserving hugepages: {e}"));
    }
    let region = match Region::map() {
        Ok(reg) => reg,
        Err(e) => return abort(format!("DMA region: {e}")),
    };
    let dma_base = hal::install_pool(region);
    r.info(format!("DMA region at guest-physical {dma_base:#x}"));
    let (Some((target, _)), Some((paddr, ptr))) = (hal::alloc_pages(16), hal::alloc_pages(1))
    else {
        return abort("no pages for mapping targets");
    };
    let dma_page = Page { paddr, ptr };

    // The endpoints and the IOMMU function.
    let eps = match sysfs::find(args.endpoints.0, args.endpoints.1) {
        Ok(e) if e.len() >= 2 => e,
        Ok(e) => return abort(format!("{} endpoint functions found, need 2", e.len())),
        Err(e) => return abort(format!("listing PCI devices: {e}")),
    };
    let setup = Setup {
        kind: args.kind,
        ep: eps[0].bdf.requester_id(),
        ep2: eps[1].bdf.requester_id(),
        target,
    };
    r.info(format!(
        "endpoints {} (ID {:#x}) and {} (ID {:#x})",
        eps[0].bdf, setup.ep, eps[1].bdf, setup.ep2
    ));
    let (func, mut root) = match take_device(&mut r) {
        Ok(x) => x,
        Err(e) => return abort(e),
    };

    // The driver.
    let transport = match PciTransport::new::<UserHal, _>(&mut root, func.bdf.device_function()) {
        Ok(t) => t,
        Err(e) => return abort(format!("PCI transport: {e}")),
    };
    let options = DriverOptions {
        extensions: Features::empty(),
        max_spins: Some(MAX_SPINS),
    };
    let mut iommu: Iommu<PciTransport> = match Iommu::new_with(transport, options) {
        Ok(d) => {
            r.check("init", expect("features", d.features(), EXPECTED_FEATURES));
            d
        }
        Err(e) => {
            r.check("init", Err(e.to_string()));
            return r.finish();
        }
    };
    r.info(format!("config {:?}", iommu.config()));
    scenario::run(&mut r, &mut iommu, &setup);
    match args.kind {
        DeviceKind::Daemon if args.hold => dma_checks::host(&mut r, &mut iommu, setup.ep, dma_page),
        DeviceKind::Daemon => r.info("no --hold: host-side DMA checks skipped"),
        DeviceKind::Qemu => match eps[0].enable_bus_master().and_then(|()| eps[0].map_bar(0)) {
            Ok(bar) => dma_checks::edu(&mut r, &mut iommu, setup.ep, dma_page, bar),
            Err(e) => r.check("edu-dma", Err(format!("edu {}: {e}", eps[0].bdf))),
        },
    }
    // Dropping the driver resets the device; the raw checks start from a clean state.
    drop(iommu);

    let transport = match PciTransport::new::<UserHal, _>(&mut root, func.bdf.device_function()) {
        Ok(t) => t,
        Err(e) => return abort(format!("PCI transport (raw): {e}")),
    };
    match RawDevice::new(transport) {
        Ok(mut dev) => {
            raw_checks::run(&mut r, &mut dev, args.kind, setup.ep, target);
        }
        Err(e) => r.check("raw-init", Err(e)),
    }
    r.finish()
}

/// Finds the IOMMU function, takes it from its kernel driver, maps its BARs and enables
/// memory decoding and bus mastering (INTx off: nothing handles it).
fn take_device(r: &mut Report) -> Result<(PciFunction, PciRoot<SysfsConfig>), String> {
    // The kernel's own virtio-iommu driver must not be loaded: it would claim the device.
    r.check(
        "no-kernel-driver",
        expect(
            "/sys/module/virtio_iommu exists",
            std::path::Path::new("/sys/module/virtio_iommu").exists(),
            false,
        ),
    );
    let found = sysfs::find(IOMMU_ID.0, IOMMU_ID.1).map_err(|e| format!("listing: {e}"))?;
    let [func] = found.as_slice() else {
        return Err(format!("{} virtio-iommu functions, want 1", found.len()));
    };
    let unbound = func
        .unbind()
        .map_err(|e| format!("unbind {}: {e}", func.bdf))?;
    r.check(
        "take-device",
        expect("driver after unbind", func.driver(), None),
    );
    r.info(format!(
        "virtio-iommu at {}, was bound to {}",
        func.bdf,
        unbound.as_deref().unwrap_or("nothing")
    ));
    func.enable().map_err(|e| format!("enable: {e}"))?;
    let bars = func.map_bars().map_err(|e| format!("mapping BARs: {e}"))?;
    r.info(format!("{bars} memory BARs mapped"));
    let config = func.config().map_err(|e| format!("config space: {e}"))?;
    let mut root = PciRoot::new(config);
    let df = func.bdf.device_function();
    let (_, cmd) = root.get_status_command(df);
    root.set_command(
        df,
        cmd | Command::MEMORY_SPACE | Command::BUS_MASTER | Command::INTERRUPT_DISABLE,
    );
    let (_, cmd) = root.get_status_command(df);
    if !cmd.contains(Command::MEMORY_SPACE | Command::BUS_MASTER) {
        return Err(format!("command register {cmd:?}"));
    }
    Ok((func.clone(), root))
}
