//! The scenario: find the IOMMU and two `edu` functions (the endpoints) on bus 0, bring the
//! driver up over the PCI transport, run every check, reset, run the raw-request checks, and
//! with `sva=1` bring the driver up again with the extensions for the vSVA checks. With
//! `blk=1` only the driver comes up, and then the confined virtio-blk checks run ([`blk`]).

mod blk;
mod dma;
mod driver;
mod irq;
mod raw;
mod sva;
mod timing;

use alloc::format;
use alloc::vec::Vec;

use virtio_drivers::transport::pci::bus::DeviceFunction;
use virtio_drivers::transport::pci::PciTransport;
use virtio_iommu_driver::{DriverOptions, Features, VirtIOIommu, EXTENSION_FEATURES};

use crate::device_kind::{Args, DeviceKind};
use crate::hal::{self, KernelHal};
use crate::pci::Pci;
use crate::raw_device::RawDevice;
use crate::report::{expect, Report};
use crate::{host, interrupts};

/// The driver over the PCI transport.
pub type Iommu = VirtIOIommu<KernelHal, PciTransport>;

/// PCI ID of a modern virtio-iommu function.
const IOMMU_ID: (u16, u16) = (0x1af4, 0x1057);
/// PCI ID of QEMU's `edu`, the endpoints (it does DMA only when told to).
const EDU_ID: (u16, u16) = (0x1234, 0x11e8);
/// Polls of the used ring before a blocking driver call gives up (seconds under TCG).
const MAX_SPINS: u64 = 400_000_000;

/// Features both devices offer (the daemon runs with `--mmio`).
const EXPECTED_FEATURES: Features = Features::INPUT_RANGE
    .union(Features::DOMAIN_RANGE)
    .union(Features::MAP_UNMAP)
    .union(Features::PROBE)
    .union(Features::MMIO)
    .union(Features::BYPASS_CONFIG);

/// What the checks work with.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// Which device is under test.
    pub kind: DeviceKind,
    /// Whether the daemon offers the vSVA extensions.
    pub sva: bool,
    /// Endpoint ID of the first endpoint (a PCI function of the VM).
    pub ep: u32,
    /// Endpoint ID of a second endpoint.
    pub ep2: u32,
    /// Guest-physical address of 16 pages the mappings point at.
    pub target: u64,
}

/// One 4 KiB page of the DMA pool, identity mapped.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// Physical (and virtual) address.
    pub paddr: u64,
}

impl Page {
    /// A zeroed page from the DMA pool (kept for the life of the kernel).
    pub fn alloc() -> Option<Page> {
        hal::alloc_pages(1).map(|(paddr, _)| Page { paddr })
    }

    fn at(&self, offset: usize, len: usize) -> *mut u8 {
        if offset.saturating_add(len) > 0x1000 {
            crate::fatal(format_args!("{offset:#x}+{len:#x} is outside a page"));
        }
        let base = usize::try_from(self.paddr).unwrap_or(usize::MAX);
        base.saturating_add(offset) as *mut u8
    }

    /// Writes `bytes` at `offset`.
    pub fn write(&self, offset: usize, bytes: &[u8]) {
        let p = self.at(offset, bytes.len());
        // SAFETY: inside the page (checked by `at`), which this kernel owns; a device reads it
        // only after this returns.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
    }

    /// Reads `len` bytes at `offset` (volatile: a device may be writing them).
    pub fn read(&self, offset: usize, len: usize) -> Vec<u8> {
        let p = self.at(offset, len);
        // SAFETY: inside the owned page (checked by `at`).
        (0..len)
            .map(|i| unsafe { p.add(i).read_volatile() })
            .collect()
    }

    /// Waits up to `ms` for `want` at `offset`; returns what is there in the end.
    pub fn wait_for(&self, offset: usize, want: &[u8], ms: u32) -> Vec<u8> {
        interrupts::wait_ms(ms, || self.read(offset, want.len()) == want);
        self.read(offset, want.len())
    }
}

/// The requester ID of a bus-0 function: the endpoint ID a virtio-iommu uses for it.
fn requester_id(df: DeviceFunction) -> u32 {
    u32::from(df.bus) << 8 | u32::from(df.device) << 3 | u32::from(df.function)
}

fn driver(
    pci: &mut Pci,
    df: DeviceFunction,
    extensions: Features,
) -> Result<Iommu, alloc::string::String> {
    let transport = PciTransport::new::<KernelHal, _>(&mut pci.root, df)
        .map_err(|e| format!("PCI transport: {e}"))?;
    let options = DriverOptions {
        extensions,
        max_spins: Some(MAX_SPINS),
    };
    Iommu::new_with(transport, options).map_err(|e| format!("driver: {e}"))
}

/// Runs everything; whether every check passed.
pub fn run(args: Args) -> bool {
    let mut r = Report::default();
    let Some(mut pci) = Pci::new() else {
        crate::fatal(format_args!(
            "no ECAM window (PCIEXBAR disabled or not 256 MiB)"
        ));
    };
    let iommus = pci.find(IOMMU_ID.0, IOMMU_ID.1);
    let eps = pci.find(EDU_ID.0, EDU_ID.1);
    let (Some(&func), [ep, ep2, ..]) = (iommus.first(), eps.as_slice()) else {
        crate::fatal(format_args!(
            "need a virtio-iommu and two edu functions on bus 0, found {} and {}",
            iommus.len(),
            eps.len()
        ));
    };
    let (ep, ep2) = (*ep, *ep2);
    let line = pci.interrupt_line(func);
    r.info(format!(
        "ECAM at {:#x}; virtio-iommu at {func} (INTx line {line}); endpoints {ep} and {ep2}",
        pci.ecam()
    ));
    if line >= 16 || line == 2 {
        crate::fatal(format_args!(
            "virtio-iommu has no usable INTx line ({line})"
        ));
    }
    let (Some(target), Some(dma_page)) = (hal::alloc_pages(16), Page::alloc()) else {
        crate::fatal(format_args!("no DMA pages for mapping targets"));
    };
    let setup = Setup {
        kind: args.kind,
        sva: args.sva,
        ep: requester_id(ep),
        ep2: requester_id(ep2),
        target: target.0,
    };

    let mut iommu = match driver(&mut pci, func, Features::empty()) {
        Ok(d) => {
            r.check("init", expect("features", d.features(), EXPECTED_FEATURES));
            d
        }
        Err(e) => {
            r.check("init", Err(e));
            return r.finish();
        }
    };
    r.info(format!("config {:?}", iommu.config()));
    if args.blk {
        match pci.find(blk::BLK_ID.0, blk::BLK_ID.1).first() {
            Some(&df) => blk::run(&mut r, iommu, &mut pci, df),
            None => r.check("blk-init", Err("no virtio-blk function on bus 0".into())),
        }
        return r.finish();
    }
    driver::run(&mut r, &mut iommu, &setup);
    irq::run(&mut r, &mut iommu, &setup, line);
    timing::run(&mut r, &mut iommu, &setup);
    match args.kind {
        DeviceKind::Daemon => {
            dma::host(&mut r, &mut iommu, setup.ep, dma_page, line);
            dma::host_bypass(&mut r, &mut iommu, setup.ep2, dma_page, line);
        }
        DeviceKind::Qemu => {
            pci.enable_dma(ep);
            match pci.memory_bar(ep, 0) {
                Some(bar) => dma::edu(&mut r, &mut iommu, setup.ep, dma_page, bar, line),
                None => r.check("edu-dma", Err(format!("edu {ep}: no memory BAR0"))),
            }
        }
    }
    // Dropping the driver resets the device; the raw checks start from a clean state.
    drop(iommu);

    match PciTransport::new::<KernelHal, _>(&mut pci.root, func)
        .map_err(|e| format!("PCI transport (raw): {e}"))
        .and_then(RawDevice::new)
    {
        Ok(mut dev) => raw::run(&mut r, &mut dev, args.kind, setup.ep, setup.target),
        Err(e) => r.check("raw-init", Err(e)),
    }

    if args.sva {
        match driver(&mut pci, func, EXTENSION_FEATURES) {
            Ok(mut iommu) => {
                r.check(
                    "sva-init",
                    expect(
                        "features",
                        iommu.features(),
                        EXPECTED_FEATURES | EXTENSION_FEATURES,
                    ),
                );
                sva::run(&mut r, &mut iommu, &setup, line);
            }
            Err(e) => r.check("sva-init", Err(e)),
        }
    }
    r.info(format!(
        "{} host requests; heap in use {} KiB, DMA pages in use {}",
        host::requests(),
        crate::HEAP.in_use() / 1024,
        hal::pages_in_use()
    ));
    r.finish()
}
