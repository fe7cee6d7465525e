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

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use log::{error, info, warn};

use super::bound_device::{BoundDevice, DeviceKind};
use super::{sys, IommufdHost};
use crate::host::ReservedRegion;

/// A VMM-bound device whose bind has not been seen yet.
#[derive(Debug)]
pub(super) struct WaitingDevice {
    pub(super) file: File,
    pub(super) what: String,
}

/// Why an install attempt did not install.
enum NotYet {
    /// The VMM has not bound the device yet (attach answered `EINVAL`).
    Unbound,
    /// Something else went wrong (logged).
    Failed,
}

impl IommufdHost {
    /// Installs the waiting VMM-bound devices whose bind has happened: all of them, or only
    /// `endpoint`. Returns whether `endpoint` (if given) is ready afterwards.
    pub(super) fn install_vmm_bound(&mut self, endpoint: Option<u32>) -> bool {
        let eps: Vec<u32> = match endpoint {
            Some(ep) if self.waiting.contains_key(&ep) => vec![ep],
            Some(_) => return true,
            None => self.waiting.keys().copied().collect(),
        };
        let mut ready = true;
        for ep in eps {
            let Some(w) = self.waiting.remove(&ep) else {
                continue;
            };
            match self.try_install(ep, w) {
                Ok(()) => {}
                Err((w, why)) => {
                    if matches!(why, NotYet::Unbound) {
                        info!(
                            "endpoint {ep}: {} is not bound to the shared iommufd yet (the VMM binds it)",
                            w.what
                        );
                    }
                    self.waiting.insert(ep, w);
                    ready = false;
                }
            }
        }
        ready
    }

    fn try_install(&mut self, ep: u32, w: WaitingDevice) -> Result<(), (WaitingDevice, NotYet)> {
        let probe = sys::vfio_attach(&w.file, self.empty, None);
        if let Err(e) = probe {
            let why = if e.raw_os_error() == Some(libc::EINVAL) {
                NotYet::Unbound
            } else {
                error!(
                    "endpoint {ep}: attaching {} to the shared iommufd: {e}",
                    w.what
                );
                NotYet::Failed
            };
            return Err((w, why));
        }
        let dev_id = match find_dev_id(&w.file) {
            Ok(id) => {
                info!(
                    "endpoint {ep}: {} bound by the VMM as iommufd device {id}",
                    w.what
                );
                id
            }
            Err(why) => {
                info!(
                    "endpoint {ep}: {} bound by the VMM; its iommufd device ID is unknown ({why}): \
                     flat model only (no HW info, nesting or page requests)",
                    w.what
                );
                0
            }
        };
        let WaitingDevice { file, what } = w;
        let advertised = vmm_bound_reserved();
        let dev = BoundDevice::new(DeviceKind::Vfio { file, what }, dev_id);
        if let Err(e) = self.install(ep, dev) {
            // `install` keeps the device even when applying the default failed.
            error!("endpoint {ep}: {e}");
        }
        if let Some(d) = self.devices.get(&ep) {
            let missing: Vec<&ReservedRegion> = d
                .reserved
                .iter()
                .filter(|r| {
                    !advertised
                        .iter()
                        .any(|a| a.start <= r.start && r.end <= a.end)
                })
                .collect();
            if !missing.is_empty() {
                warn!(
                    "endpoint {ep}: host reserved IOVA ranges {missing:x?} were not advertised \
                     to the guest (the device was bound after start-up); guest MAPs there fail \
                     unless --input-range or --reserved already keep the guest out of them)"
                );
            }
            if d.iova_alignment > 4096 {
                warn!(
                    "endpoint {ep}: the host needs IOVA alignment {:#x}; smaller guest MAPs fail",
                    d.iova_alignment
                );
            }
        }
        Ok(())
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
