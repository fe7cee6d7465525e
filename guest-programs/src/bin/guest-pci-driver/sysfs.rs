//! A PCI function through Linux sysfs: finding it by ID, taking it from its kernel driver,
//! its config space as virtio-drivers' `ConfigurationAccess`, and its BARs mapped with
//! `mmap` of `resourceN`.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use log::{debug, warn};
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction};

use super::hal;

const SYSFS_PCI: &str = "/sys/bus/pci/devices";
/// `IORESOURCE_MEM` in the flags column of the sysfs `resource` file.
const IORESOURCE_MEM: u64 = 0x200;

/// A PCI address `domain:bus:device.function`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bdf {
    /// PCI segment.
    pub domain: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number (0–31).
    pub device: u8,
    /// Function number (0–7).
    pub function: u8,
}

impl Bdf {
    /// Parses `dddd:bb:dd.f` as sysfs names devices.
    pub fn parse(s: &str) -> Option<Bdf> {
        let (domain, rest) = s.split_once(':')?;
        let (bus, rest) = rest.split_once(':')?;
        let (device, function) = rest.split_once('.')?;
        let bdf = Bdf {
            domain: u16::from_str_radix(domain, 16).ok()?,
            bus: u8::from_str_radix(bus, 16).ok()?,
            device: u8::from_str_radix(device, 16).ok()?,
            function: u8::from_str_radix(function, 16).ok()?,
        };
        (bdf.device < 32 && bdf.function < 8).then_some(bdf)
    }

    /// The PCI requester ID `bus << 8 | device << 3 | function`: the endpoint ID a
    /// virtio-iommu uses for this function.
    pub fn requester_id(&self) -> u32 {
        u32::from(self.bus) << 8 | u32::from(self.device) << 3 | u32::from(self.function)
    }

    /// The same address as virtio-drivers spells it.
    pub fn device_function(&self) -> DeviceFunction {
        DeviceFunction {
            bus: self.bus,
            device: self.device,
            function: self.function,
        }
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

/// One PCI function in sysfs.
#[derive(Debug, Clone)]
pub struct PciFunction {
    /// Its address.
    pub bdf: Bdf,
    path: PathBuf,
}

fn read_hex(path: &Path) -> io::Result<u64> {
    let s = fs::read_to_string(path)?;
    let s = s.trim();
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|e| io::Error::other(format!("{}: `{s}`: {e}", path.display())))
}

/// Every function with this vendor and device ID, in address order.
///
/// # Errors
/// sysfs cannot be listed.
pub fn find(vendor: u16, device: u16) -> io::Result<Vec<PciFunction>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(SYSFS_PCI)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(bdf) = name.to_str().and_then(Bdf::parse) else {
            continue;
        };
        let path = entry.path();
        let ids = (
            read_hex(&path.join("vendor")),
            read_hex(&path.join("device")),
        );
        if let (Ok(v), Ok(d)) = ids {
            if v == u64::from(vendor) && d == u64::from(device) {
                found.push(PciFunction { bdf, path });
            }
        }
    }
    found.sort_by_key(|f| f.bdf);
    Ok(found)
}

impl PciFunction {
    /// The name of the kernel driver bound to the function, if any.
    pub fn driver(&self) -> Option<String> {
        fs::read_link(self.path.join("driver"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    /// Unbinds the function from its kernel driver (if any); returns the driver's name.
    ///
    /// # Errors
    /// The unbind write failed, or a driver is still bound afterwards.
    pub fn unbind(&self) -> io::Result<Option<String>> {
        let Some(driver) = self.driver() else {
            return Ok(None);
        };
        fs::write(self.path.join("driver/unbind"), self.bdf.to_string())?;
        if let Some(still) = self.driver() {
            return Err(io::Error::other(format!("still bound to {still}")));
        }
        Ok(Some(driver))
    }

    /// Enables the function (memory decoding) through the kernel.
    ///
    /// # Errors
    /// The write to `enable` failed.
    pub fn enable(&self) -> io::Result<()> {
        fs::write(self.path.join("enable"), "1")
    }

    /// Opens the config space.
    ///
    /// # Errors
    /// The `config` file cannot be opened read-write (not root?).
    pub fn config(&self) -> io::Result<SysfsConfig> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path.join("config"))?;
        Ok(SysfsConfig {
            file,
            function: self.bdf.device_function(),
        })
    }

    /// The memory BARs: `(index, physical address, length)`, from the `resource` file.
    ///
    /// # Errors
    /// The `resource` file is unreadable.
    pub fn memory_bars(&self) -> io::Result<Vec<(usize, u64, u64)>> {
        let table = fs::read_to_string(self.path.join("resource"))?;
        let mut bars = Vec::new();
        // Lines 0–5 are the BARs: "start end flags" in hex.
        for (index, line) in table.lines().take(6).enumerate() {
            let cols: Vec<u64> = line
                .split_whitespace()
                .filter_map(|c| u64::from_str_radix(c.trim_start_matches("0x"), 16).ok())
                .collect();
            let &[start, end, flags] = cols.as_slice() else {
                warn!("{}: odd resource line `{line}`", self.bdf);
                continue;
            };
            if flags & IORESOURCE_MEM != 0 && start != 0 && end > start {
                bars.push((index, start, end - start + 1));
            }
        }
        Ok(bars)
    }

    /// Maps every memory BAR with `mmap` of `resourceN` and registers it with the `Hal`;
    /// returns how many were mapped. The mappings stay for the life of the process.
    ///
    /// # Errors
    /// The `resource` file is unreadable or a BAR cannot be mapped.
    pub fn map_bars(&self) -> io::Result<usize> {
        let bars = self.memory_bars()?;
        for &(index, start, len) in &bars {
            let vaddr = self.map_resource(index, len)?;
            debug!("{} BAR{index}: {start:#x}+{len:#x} at {vaddr:p}", self.bdf);
            hal::register_bar(start, len, vaddr);
        }
        Ok(bars.len())
    }

    /// Maps memory BAR `index` for this program's own accesses: `(address, length)`.
    ///
    /// # Errors
    /// No such memory BAR, or it cannot be mapped.
    pub fn map_bar(&self, index: usize) -> io::Result<(NonNull<u8>, u64)> {
        let Some(&(_, _, len)) = self.memory_bars()?.iter().find(|b| b.0 == index) else {
            return Err(io::Error::other(format!(
                "{}: no memory BAR{index}",
                self.bdf
            )));
        };
        Ok((self.map_resource(index, len)?, len))
    }

    /// Enables memory decoding and bus mastering, and masks INTx.
    ///
    /// # Errors
    /// The config space cannot be read or written.
    pub fn enable_bus_master(&self) -> io::Result<()> {
        self.enable()?;
        let f = self.config()?.file;
        let mut cmd = [0u8; 2];
        f.read_exact_at(&mut cmd, 4)?;
        // Memory space (bit 1), bus master (bit 2), INTx disable (bit 10).
        let cmd = u16::from_le_bytes(cmd) | 0x0006 | 0x0400;
        f.write_all_at(&cmd.to_le_bytes(), 4)
    }

    fn map_resource(&self, index: usize, len: u64) -> io::Result<NonNull<u8>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path.join(format!("resource{index}")))?;
        let len = usize::try_from(len).map_err(io::Error::other)?;
        // SAFETY: maps a sysfs BAR file; the kernel checks the length against the BAR. The
        // mapping is never unmapped, so pointers into it stay valid.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave 0"))
    }
}

/// Config-space access to one function through its sysfs `config` file. Other functions read
/// as absent (all ones) and ignore writes.
#[derive(Debug)]
pub struct SysfsConfig {
    file: File,
    function: DeviceFunction,
}

impl ConfigurationAccess for SysfsConfig {
    fn read_word(&self, device_function: DeviceFunction, register_offset: u8) -> u32 {
        if device_function != self.function {
            return u32::MAX;
        }
        let mut b = [0u8; 4];
        match self.file.read_exact_at(&mut b, u64::from(register_offset)) {
            Ok(()) => u32::from_le_bytes(b),
            Err(e) => {
                warn!("config read at {register_offset:#x}: {e}");
                u32::MAX
            }
        }
    }

    fn write_word(&mut self, device_function: DeviceFunction, register_offset: u8, data: u32) {
        if device_function != self.function {
            return;
        }
        if let Err(e) = self
            .file
            .write_all_at(&data.to_le_bytes(), u64::from(register_offset))
        {
            warn!("config write at {register_offset:#x}: {e}");
        }
    }

    unsafe fn unsafe_clone(&self) -> Self {
        match self.file.try_clone() {
            Ok(file) => SysfsConfig {
                file,
                function: self.function,
            },
            Err(e) => {
                println!("GUEST-PCI: FAIL sysfs: cannot clone the config file: {e}");
                std::process::exit(2)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_parse_and_requester_id() {
        let b = Bdf::parse("0000:00:04.0").unwrap();
        assert_eq!(b.requester_id(), 0x20);
        assert_eq!(b.to_string(), "0000:00:04.0");
        let b = Bdf::parse("0001:3a:1f.7").unwrap();
        assert_eq!(b.requester_id(), 0x3aff);
        assert_eq!(b.domain, 1);
        assert_eq!(Bdf::parse("0000:00:20.0"), None);
        assert_eq!(Bdf::parse("0000:00:01.8"), None);
        assert_eq!(Bdf::parse("0000:00:01"), None);
        assert_eq!(Bdf::parse("pci0000:00"), None);
    }
}
