//! `--vfio ENDPOINT=SOURCE`: which VFIO device backs which virtio-iommu endpoint, and how to
//! reach it (a cdev path, a PCI address resolved through sysfs, or an inherited fd).

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::error::IommufdError;
use super::sys;

/// Where the VFIO device of an endpoint comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VfioSource {
    /// A VFIO cdev node, `/dev/vfio/devices/vfioN`.
    Cdev(PathBuf),
    /// A PCI function (`0000:00:03.0` or `00:03.0`) bound to vfio-pci; its cdev is looked up in
    /// `/sys/bus/pci/devices/<BDF>/vfio-dev/`.
    Pci(String),
    /// An already-open cdev fd inherited from the launcher. Only one open of a device can be
    /// bound to iommufd, so a VMM that also uses the device must share its open file this way.
    Fd(i32),
}

/// One `--vfio` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfioEndpoint {
    /// The virtio-iommu endpoint ID (as in the VIOT table given to the guest).
    pub endpoint: u32,
    /// The device.
    pub source: VfioSource,
}

fn bad(value: &str, why: impl Into<String>) -> IommufdError {
    IommufdError::BadEndpointSpec {
        value: value.to_owned(),
        why: why.into(),
    }
}

fn parse_u32(s: &str) -> Option<u32> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Normalises a PCI address to `DDDD:BB:DD.F` (lower case), or `None` if it is not one.
fn normalize_bdf(s: &str) -> Option<String> {
    let full = if s.matches(':').count() == 1 {
        format!("0000:{s}")
    } else {
        s.to_owned()
    };
    let (dom, rest) = full.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (dev, func) = rest.split_once('.')?;
    let hex = |t: &str, n: usize| t.len() == n && t.chars().all(|c| c.is_ascii_hexdigit());
    (hex(dom, 4) && hex(bus, 2) && hex(dev, 2) && hex(func, 1)).then(|| full.to_ascii_lowercase())
}

impl FromStr for VfioEndpoint {
    type Err = IommufdError;

    fn from_str(value: &str) -> Result<Self, IommufdError> {
        let (ep, src) = value
            .split_once('=')
            .ok_or_else(|| bad(value, "missing `=`"))?;
        let endpoint = parse_u32(ep.trim()).ok_or_else(|| bad(value, "endpoint is not a u32"))?;
        let src = src.trim();
        let source = if let Some(n) = src.strip_prefix("fd:") {
            let fd = n.parse::<i32>().ok().filter(|&f| f >= 0);
            VfioSource::Fd(fd.ok_or_else(|| bad(value, "fd is not a non-negative integer"))?)
        } else if src.starts_with('/') {
            VfioSource::Cdev(PathBuf::from(src))
        } else if let Some(bdf) = normalize_bdf(src) {
            VfioSource::Pci(bdf)
        } else {
            return Err(bad(value, "not a path, a PCI address or fd:N"));
        };
        Ok(VfioEndpoint { endpoint, source })
    }
}

/// The sysfs root PCI devices are looked up under (a parameter for tests).
pub const SYSFS_PCI: &str = "/sys/bus/pci/devices";

/// Finds the VFIO cdev of PCI function `bdf` below `sysfs` (normally [`SYSFS_PCI`]).
///
/// # Errors
/// [`IommufdError::NotVfioBound`] if the function has no `vfio-dev/vfioN` entry.
pub fn resolve_pci(sysfs: &Path, bdf: &str) -> Result<PathBuf, IommufdError> {
    let dir = sysfs.join(bdf).join("vfio-dev");
    let not_bound = || IommufdError::NotVfioBound {
        bdf: bdf.to_owned(),
        dir: dir.clone(),
    };
    let mut names: Vec<String> = fs::read_dir(&dir)
        .map_err(|_| not_bound())?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("vfio"))
        .collect();
    names.sort();
    let name = names.into_iter().next().ok_or_else(not_bound)?;
    Ok(Path::new("/dev/vfio/devices").join(name))
}

impl VfioEndpoint {
    /// Opens the device: a readable description of where it came from, and the open file.
    ///
    /// # Errors
    /// Resolution or open failures, with the path in the message.
    pub fn open(&self) -> Result<(String, File), IommufdError> {
        let path = match &self.source {
            VfioSource::Fd(fd) => {
                let file = sys::take_inherited_fd(*fd).map_err(|err| IommufdError::BadFd {
                    endpoint: self.endpoint,
                    fd: *fd,
                    err,
                })?;
                return Ok((format!("fd:{fd}"), file));
            }
            VfioSource::Cdev(p) => p.clone(),
            VfioSource::Pci(bdf) => resolve_pci(Path::new(SYSFS_PCI), bdf)?,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|err| IommufdError::OpenDevice {
                path: path.clone(),
                err,
            })?;
        Ok((path.display().to_string(), file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        let e: VfioEndpoint = "8=/dev/vfio/devices/vfio0".parse().unwrap();
        assert_eq!(
            e,
            VfioEndpoint {
                endpoint: 8,
                source: VfioSource::Cdev("/dev/vfio/devices/vfio0".into())
            }
        );
        let e: VfioEndpoint = "0x18=00:03.0".parse().unwrap();
        assert_eq!(
            e,
            VfioEndpoint {
                endpoint: 0x18,
                source: VfioSource::Pci("0000:00:03.0".into())
            }
        );
        let e: VfioEndpoint = "1=0000:AF:1f.7".parse().unwrap();
        assert_eq!(e.source, VfioSource::Pci("0000:af:1f.7".into()));
        let e: VfioEndpoint = "2=fd:7".parse().unwrap();
        assert_eq!(
            e,
            VfioEndpoint {
                endpoint: 2,
                source: VfioSource::Fd(7)
            }
        );
    }

    #[test]
    fn rejects_malformed_values() {
        for v in [
            "",
            "8",
            "x=/dev/a",
            "8=fd:-1",
            "8=fd:x",
            "8=vfio0",
            "8=00:3.0",
            "8=0000:00:03",
            "4294967296=fd:1",
        ] {
            let r = v.parse::<VfioEndpoint>();
            assert!(
                matches!(r, Err(IommufdError::BadEndpointSpec { .. })),
                "{v}: {r:?}"
            );
        }
    }

    #[test]
    fn resolves_pci_through_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("0000:00:03.0/vfio-dev/vfio2")).unwrap();
        fs::create_dir_all(dir.path().join("0000:00:04.0")).unwrap();
        assert_eq!(
            resolve_pci(dir.path(), "0000:00:03.0").unwrap(),
            PathBuf::from("/dev/vfio/devices/vfio2")
        );
        let err = resolve_pci(dir.path(), "0000:00:04.0").unwrap_err();
        assert!(matches!(err, IommufdError::NotVfioBound { .. }));
        assert!(err.to_string().contains("driver_override"), "{err}");
    }
}
