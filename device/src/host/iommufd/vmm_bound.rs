//! Devices the VMM binds. Only one open file of a VFIO device can be bound to iommufd, and
//! QEMU's vfio-pci always binds the file it is given. To work beside it, the daemon shares
//! QEMU's iommufd (`--iommufd-fd`, the same open `/dev/iommu` file as QEMU's
//! `-object iommufd,fd=`) and the same open device file (`--vfio EP=fd:N`). QEMU binds the
//! device and attaches it to its own IOAS; once that has happened (before it, attach answers
//! `EINVAL`), the daemon replaces the attachment with its own IOASes and HWPTs. Object IDs are
//! looked up in the one shared context, so the daemon's IDs work on the device. The daemon
//! destroys only objects it allocated; QEMU's IOAS stays, unused, until QEMU exits.
//!
//! The iommufd device ID (needed for HW info, nesting and fault routing) belongs to QEMU's
//! bind; it is recovered from `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO`, which lists the devices a
//! reset would touch with their IDs in the caller's iommufd. Devices that cannot be reset by
//! slot or bus (e.g. on a root bus) do not show there: they get the flat model only.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use log::{error, info, warn};

use super::bound_device::BoundDevice;
use super::sys;
use crate::host::ReservedRegion;

/// A VMM-bound device whose bind has not been seen yet.
#[derive(Debug)]
pub(super) struct WaitingDevice {
    pub(super) file: File,
    pub(super) what: String,
}

/// The VMM-bound devices whose bind has not been seen yet, by endpoint.
#[derive(Debug, Default)]
pub(super) struct WaitingDevices {
    by_endpoint: BTreeMap<u32, WaitingDevice>,
}

impl WaitingDevices {
    /// Adds the open device file of `endpoint`.
    pub(super) fn insert(&mut self, endpoint: u32, device: WaitingDevice) {
        self.by_endpoint.insert(endpoint, device);
    }

    /// Whether `endpoint` waits for its bind.
    pub(super) fn contains(&self, endpoint: u32) -> bool {
        self.by_endpoint.contains_key(&endpoint)
    }

    /// The waiting endpoints.
    pub(super) fn endpoints(&self) -> Vec<u32> {
        self.by_endpoint.keys().copied().collect()
    }

    /// Takes `endpoint`'s device out (to install it, or drop it).
    pub(super) fn remove(&mut self, endpoint: u32) -> Option<WaitingDevice> {
        self.by_endpoint.remove(&endpoint)
    }
}

impl WaitingDevice {
    /// Whether the VMM has bound the device to the shared iommufd, probed by attaching it to
    /// `empty_ioas` (before the bind that answers `EINVAL`): its iommufd device ID (0 when it
    /// cannot be recovered), or `None` while it is not bound (or the probe failed, logged).
    pub(super) fn bound_dev_id(&self, endpoint: u32, empty_ioas: u32) -> Option<u32> {
        if let Err(e) = sys::vfio_attach(&self.file, empty_ioas, None) {
            if e.raw_os_error() == Some(libc::EINVAL) {
                info!(
                    "endpoint {endpoint}: {} is not bound to the shared iommufd yet (the VMM binds it)",
                    self.what
                );
            } else {
                error!(
                    "endpoint {endpoint}: attaching {} to the shared iommufd: {e}",
                    self.what
                );
            }
            return None;
        }
        Some(match find_dev_id(&self.file) {
            Ok(id) => {
                info!(
                    "endpoint {endpoint}: {} bound by the VMM as iommufd device {id}",
                    self.what
                );
                id
            }
            Err(why) => {
                info!(
                    "endpoint {endpoint}: {} bound by the VMM; its iommufd device ID is unknown ({why}): \
                     flat model only (no HW info, nesting or page requests)",
                    self.what
                );
                0
            }
        })
    }
}

/// After a late install: what the guest was not told because the device was bound after
/// start-up (host reservations beyond [`vmm_bound_reserved`], a coarse IOVA alignment).
pub(super) fn warn_late_install(endpoint: u32, dev: &BoundDevice) {
    let advertised = vmm_bound_reserved();
    let missing: Vec<&ReservedRegion> = dev
        .reserved
        .iter()
        .filter(|r| {
            !advertised
                .iter()
                .any(|a| a.start <= r.start && r.last <= a.last)
        })
        .collect();
    if !missing.is_empty() {
        warn!(
            "endpoint {endpoint}: host reserved IOVA ranges {missing:x?} were not advertised \
             to the guest (the device was bound after start-up); guest MAPs there fail \
             unless --input-range or --reserved already keep the guest out of them)"
        );
    }
    if dev.iova_alignment > 4096 {
        warn!(
            "endpoint {endpoint}: the host needs IOVA alignment {:#x}; smaller guest MAPs fail",
            dev.iova_alignment
        );
    }
}

/// What the guest is told is reserved for a VMM-bound endpoint before the host can be asked:
/// the x86 MSI window, which every x86 IOMMU reserves.
pub(super) fn vmm_bound_reserved() -> Vec<ReservedRegion> {
    if cfg!(target_arch = "x86_64") {
        vec![ReservedRegion::x86_msi()]
    } else {
        Vec::new()
    }
}

/// The iommufd device ID of the bound device `file`, from the hot-reset device list.
fn find_dev_id(file: &File) -> Result<u32, String> {
    let (segment, bus, devfn) = own_pci_address(file)?;
    let devs = sys::vfio_hot_reset_devices(file)
        .map_err(|e| format!("VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: {e}"))?;
    devs.iter()
        .find(|d| (d.segment, d.bus, d.devfn) == (segment, bus, devfn))
        .and_then(|d| d.dev_id)
        .ok_or_else(|| "the device is not in its own hot-reset list with an ID".into())
}

/// The PCI address of the VFIO cdev open as `file`: `/proc/self/fd/N` names
/// `/dev/vfio/devices/vfioX`, whose sysfs class entry links to the PCI device.
fn own_pci_address(file: &File) -> Result<(u16, u8, u8), String> {
    let link = fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| format!("readlink of the device fd: {e}"))?;
    let name = link
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| n.starts_with("vfio"))
        .ok_or_else(|| format!("{} is not a VFIO cdev", link.display()))?;
    let dev = fs::read_link(
        PathBuf::from("/sys/class/vfio-dev")
            .join(name)
            .join("device"),
    )
    .map_err(|e: io::Error| format!("sysfs entry of {name}: {e}"))?;
    let bdf = dev
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{} names no PCI device", dev.display()))?;
    parse_bdf(bdf).ok_or_else(|| format!("{bdf} is not a PCI address"))
}

/// `DDDD:BB:DD.F` → (segment, bus, devfn).
fn parse_bdf(s: &str) -> Option<(u16, u8, u8)> {
    let (seg, rest) = s.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (dev, func) = rest.split_once('.')?;
    let seg = u16::from_str_radix(seg, 16).ok()?;
    let bus = u8::from_str_radix(bus, 16).ok()?;
    let dev = u8::from_str_radix(dev, 16).ok().filter(|d| *d < 32)?;
    let func = u8::from_str_radix(func, 16).ok().filter(|f| *f < 8)?;
    Some((seg, bus, dev << 3 | func))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses() {
        assert_eq!(parse_bdf("0000:01:00.0"), Some((0, 1, 0)));
        assert_eq!(parse_bdf("0001:af:1f.7"), Some((1, 0xaf, 0xff)));
        assert_eq!(parse_bdf("0000:00:20.0"), None);
        assert_eq!(parse_bdf("0000:00:03.8"), None);
        assert_eq!(parse_bdf("00:03.0"), None);
    }

    #[test]
    fn a_file_that_is_no_vfio_cdev_has_no_pci_address() {
        let f = tempfile::tempfile().unwrap();
        let err = own_pci_address(&f).unwrap_err();
        assert!(err.contains("not a VFIO cdev"), "{err}");
    }
}
