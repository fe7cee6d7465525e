//! Errors of the iommufd backend: which step failed, the errno, and a hint that tells the
//! operator what to change. Feature support is judged from errnos (`ENOTTY` = the kernel does
//! not know the ioctl, `EOPNOTSUPP` = it knows it but this IOMMU cannot), never from versions.

use std::io;
use std::path::PathBuf;

use crate::host::HostError;

/// Why the iommufd backend could not be set up or refused an operation.
#[derive(Debug, thiserror::Error)]
pub enum IommufdError {
    /// `/dev/iommu` could not be opened.
    #[error("cannot open /dev/iommu: {err}{}", hint_open(err))]
    OpenIommufd {
        /// The open error.
        err: io::Error,
    },
    /// A `--vfio` value could not be parsed.
    #[error("bad --vfio value `{value}`: {why} (expected ENDPOINT=/dev/vfio/devices/vfioN, ENDPOINT=PCI-BDF or ENDPOINT=fd:N)")]
    BadEndpointSpec {
        /// The offending value.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// The same endpoint ID was configured twice.
    #[error("endpoint {0} is configured twice")]
    DuplicateEndpoint(u32),
    /// A PCI device has no VFIO cdev (not bound to vfio-pci, or no VFIO_DEVICE_CDEV).
    #[error("PCI device {bdf} has no VFIO cdev under {}: bind it to vfio-pci (echo vfio-pci > /sys/bus/pci/devices/{bdf}/driver_override; echo {bdf} > /sys/bus/pci/drivers_probe) on a kernel with CONFIG_VFIO_DEVICE_CDEV", dir.display())]
    NotVfioBound {
        /// The PCI address.
        bdf: String,
        /// The sysfs directory that was searched.
        dir: PathBuf,
    },
    /// The VFIO device could not be opened.
    #[error("cannot open VFIO device {}: {err}", path.display())]
    OpenDevice {
        /// The cdev path.
        path: PathBuf,
        /// The open error.
        err: io::Error,
    },
    /// An inherited fd is not open.
    #[error("inherited fd {fd} for endpoint {endpoint} is not usable: {err}")]
    BadFd {
        /// Endpoint ID.
        endpoint: u32,
        /// The fd number.
        fd: i32,
        /// The error.
        err: io::Error,
    },
    /// The inherited iommufd (`--iommufd-fd`) is not open.
    #[error("inherited iommufd fd {fd} is not usable: {err} (--iommufd-fd must name an fd the launcher passed open, the same /dev/iommu file as the VMM's)")]
    BadIommufdFd {
        /// The fd number.
        fd: i32,
        /// The error.
        err: io::Error,
    },
    /// With a shared iommufd, an endpoint's device is not an inherited fd.
    #[error("endpoint {0}: with --iommufd-fd the VMM binds the device, so --vfio must name the VMM's open device file as fd:N")]
    SharedNeedsFd(u32),
    /// `VFIO_DEVICE_BIND_IOMMUFD` failed.
    #[error(
        "binding endpoint {endpoint} ({what}) to iommufd failed: {err}{}",
        hint_bind(err)
    )]
    Bind {
        /// Endpoint ID.
        endpoint: u32,
        /// Where the device came from.
        what: String,
        /// The ioctl error.
        err: io::Error,
    },
    /// Any other ioctl failed.
    #[error("{op} failed: {err}{}", hint_generic(err))]
    Ioctl {
        /// The operation, e.g. `IOMMU_IOAS_ALLOC`.
        op: &'static str,
        /// The ioctl error.
        err: io::Error,
    },
}

impl IommufdError {
    /// An ioctl failure of `op`.
    pub(crate) fn ioctl(op: &'static str, err: io::Error) -> Self {
        IommufdError::Ioctl { op, err }
    }
}

fn hint_open(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::ENOENT | libc::ENXIO | libc::ENODEV) => {
            " (the kernel has no iommufd: it needs CONFIG_IOMMUFD, which Debian's kernels do not \
             enable, or `modprobe iommufd`)"
        }
        Some(libc::EACCES | libc::EPERM) => " (run as root or give this user access to /dev/iommu)",
        _ => "",
    }
}

fn hint_bind(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EPERM) => {
            " (the platform cannot isolate MSIs: enable interrupt remapping, e.g. intel-iommu with \
             intremap=on, or accept the risk with the kernel parameter \
             iommufd.allow_unsafe_interrupts=1)"
        }
        Some(libc::ENOTTY) => {
            " (this kernel or device has no VFIO cdev iommufd binding: it needs \
             CONFIG_VFIO_DEVICE_CDEV and a device opened through /dev/vfio/devices/)"
        }
        Some(libc::EINVAL) => {
            " (the device is already bound: only one open of a VFIO device can be bound to \
             iommufd, so share the VMM's fd with ENDPOINT=fd:N; or the IOMMU is not cache \
             coherent)"
        }
        Some(libc::EBUSY) => " (the device is in use, e.g. through a legacy VFIO group/container)",
        _ => "",
    }
}

fn hint_generic(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::ENOTTY) => " (this kernel does not know the ioctl: too old for this feature)",
        Some(libc::EOPNOTSUPP) => " (the host IOMMU does not support this)",
        _ => "",
    }
}

/// Maps an ioctl errno to what the engine understands.
#[must_use]
pub fn host_error(err: &io::Error) -> HostError {
    match err.raw_os_error() {
        Some(libc::ENOMEM | libc::ENOSPC) => HostError::NoMem,
        Some(libc::EOPNOTSUPP | libc::ENOTTY) => HostError::Unsupported,
        Some(
            libc::EINVAL
            | libc::ENOENT
            | libc::EBUSY
            | libc::EEXIST
            | libc::EOVERFLOW
            | libc::ERANGE,
        ) => HostError::Invalid,
        _ => HostError::Failed,
    }
}

/// Wraps a failed setup ioctl with its name (for `map_err`).
pub(super) fn ioctl_err(op: &'static str) -> impl FnOnce(io::Error) -> IommufdError {
    move |e| IommufdError::ioctl(op, e)
}

/// Logs a failed ioctl and converts it for the engine.
pub(super) fn host_err(op: &str, e: &io::Error) -> HostError {
    let h = host_error(e);
    // Rate-limited: a guest can repeat a request the host refuses.
    if h == HostError::Invalid {
        crate::limited!(Debug, "{op}: {e}");
    } else {
        crate::limited!(Warn, "{op}: {e}");
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_classes() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert_eq!(host_error(&e(libc::ENOMEM)), HostError::NoMem);
        assert_eq!(host_error(&e(libc::ENOSPC)), HostError::NoMem);
        assert_eq!(host_error(&e(libc::EOPNOTSUPP)), HostError::Unsupported);
        assert_eq!(host_error(&e(libc::ENOTTY)), HostError::Unsupported);
        assert_eq!(host_error(&e(libc::EINVAL)), HostError::Invalid);
        assert_eq!(host_error(&e(libc::ENOENT)), HostError::Invalid);
        assert_eq!(host_error(&e(libc::EBUSY)), HostError::Invalid);
        assert_eq!(host_error(&e(libc::EIO)), HostError::Failed);
    }

    #[test]
    fn messages_carry_hints() {
        let bind = IommufdError::Bind {
            endpoint: 3,
            what: "/dev/vfio/devices/vfio0".into(),
            err: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert!(
            bind.to_string()
                .contains("iommufd.allow_unsafe_interrupts=1"),
            "{bind}"
        );
        let open = IommufdError::OpenIommufd {
            err: io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert!(open.to_string().contains("CONFIG_IOMMUFD"), "{open}");
        let old = IommufdError::ioctl(
            "IOMMU_HWPT_ALLOC",
            io::Error::from_raw_os_error(libc::ENOTTY),
        );
        assert!(old.to_string().contains("too old"), "{old}");
        let nest = IommufdError::ioctl(
            "IOMMU_HWPT_ALLOC",
            io::Error::from_raw_os_error(libc::EOPNOTSUPP),
        );
        assert!(nest.to_string().contains("does not support"), "{nest}");
    }
}
