//! PCI on q35: the ECAM window the firmware programmed into the host bridge's PCIEXBAR, a
//! `virtio-drivers` [`PciRoot`] over it, and the few config registers the kernel reads itself.

use alloc::vec::Vec;

use virtio_drivers::transport::pci::bus::{
    BarInfo, Cam, Command, DeviceFunction, MmioCam, PciRoot,
};

use crate::boot::IDENTITY_MAPPED_END;
use crate::cpu::{inl, outl};

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;
/// Q35 host bridge (00:00.0): PCIEXBAR, low and high dwords.
const PCIEXBAR: u8 = 0x60;
const INTERRUPT_LINE: u8 = 0x3c;

/// Reads a config dword of bus 0 through the legacy 0xcf8/0xcfc mechanism.
fn legacy_read(device: u8, function: u8, reg: u8) -> u32 {
    let addr = 0x8000_0000
        | u32::from(device & 0x1f) << 11
        | u32::from(function & 7) << 8
        | u32::from(reg & 0xfc);
    outl(CONFIG_ADDRESS, addr);
    inl(CONFIG_DATA)
}

/// The ECAM base from the host bridge's PCIEXBAR, if enabled, 256 MiB long and mapped.
pub fn ecam_base() -> Option<u64> {
    let lo = legacy_read(0, 0, PCIEXBAR);
    let hi = legacy_read(0, 0, PCIEXBAR + 4);
    let bar = u64::from(hi) << 32 | u64::from(lo);
    // Bit 0: enable; bits 2:1: length (0 = 256 MiB, all 256 buses).
    if bar & 1 == 0 || bar & 0b110 != 0 {
        return None;
    }
    let base = bar & 0x0000_000f_f000_0000;
    (base + u64::from(Cam::Ecam.size()) <= IDENTITY_MAPPED_END).then_some(base)
}

/// PCI bus 0 through ECAM.
pub struct Pci {
    /// The root complex, for `virtio-drivers`' transport.
    pub root: PciRoot<MmioCam<'static>>,
    base: u64,
}

impl core::fmt::Debug for Pci {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pci").field("ecam", &self.base).finish()
    }
}

impl Pci {
    /// Opens the ECAM window.
    pub fn new() -> Option<Pci> {
        let base = ecam_base()?;
        // SAFETY: the window is 256 MiB of identity-mapped (uncached) MMIO that only this
        // root accesses, for the life of the kernel.
        let cam = unsafe { MmioCam::new(base as *mut u8, Cam::Ecam) };
        Some(Pci {
            root: PciRoot::new(cam),
            base,
        })
    }

    /// The ECAM base address.
    pub fn ecam(&self) -> u64 {
        self.base
    }

    /// Every function on bus 0 with this vendor and device ID, in address order.
    pub fn find(&self, vendor: u16, device: u16) -> Vec<DeviceFunction> {
        self.root
            .enumerate_bus(0)
            .filter(|(_, info)| info.vendor_id == vendor && info.device_id == device)
            .map(|(df, _)| df)
            .collect()
    }

    /// A config dword read through ECAM.
    fn read(&self, df: DeviceFunction, reg: u8) -> u32 {
        let offset = (u64::from(df.bus) << 20)
            | (u64::from(df.device & 0x1f) << 15)
            | (u64::from(df.function & 7) << 12)
            | u64::from(reg & 0xfc);
        // SAFETY: an aligned dword inside the mapped 256 MiB window; config reads of this
        // register have no side effects.
        unsafe { ((self.base + offset) as *const u32).read_volatile() }
    }

    /// The legacy interrupt line the firmware routed the function's INTx pin to (0xff: none).
    pub fn interrupt_line(&self, df: DeviceFunction) -> u8 {
        let v = self.read(df, INTERRUPT_LINE);
        if (v >> 8) & 0xff == 0 {
            return 0xff; // no interrupt pin
        }
        (v & 0xff) as u8
    }

    /// Enables memory decoding and bus mastering (for a device that does DMA).
    pub fn enable_dma(&mut self, df: DeviceFunction) {
        let (_, cmd) = self.root.get_status_command(df);
        self.root
            .set_command(df, cmd | Command::MEMORY_SPACE | Command::BUS_MASTER);
    }

    /// BAR `index`'s address and size, if it is a memory BAR the firmware placed below the
    /// identity map's end.
    pub fn memory_bar(&mut self, df: DeviceFunction, index: u8) -> Option<(u64, u64)> {
        match self.root.bar_info(df, index).ok()? {
            Some(BarInfo::Memory { address, size, .. })
                if address != 0 && address.saturating_add(size) <= IDENTITY_MAPPED_END =>
            {
                Some((address, size))
            }
            _ => None,
        }
    }
}
