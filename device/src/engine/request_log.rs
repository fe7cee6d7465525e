//! The one debug line the engine logs per request: type, domain, endpoint, range and status,
//! e.g. `MAP domain 1 [0x1000, 0x1fff] -> 0x8000 RW: S_OK` (statuses by their specification
//! names). Formatted only when the debug level is enabled (the `log` macros check the level
//! before they format).

use core::fmt;

use virtio_iommu_spec::ext::InvalScope;
use virtio_iommu_spec::request::{AttachFlags, MapFlags, TableDesc};
use virtio_iommu_spec::Request;

/// A request as its log line shows it (without the status).
#[derive(Debug, Clone, Copy)]
pub(super) struct RequestLine<'a>(pub(super) &'a Request);

fn pasid(f: &mut fmt::Formatter<'_>, pasid: Option<u32>) -> fmt::Result {
    match pasid {
        Some(p) => write!(f, " pasid {p}"),
        None => Ok(()),
    }
}

impl fmt::Display for RequestLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ty = self.0.request_type();
        match self.0 {
            Request::Attach(a) => {
                write!(f, "{ty} domain {} endpoint {:#x}", a.domain, a.endpoint)?;
                if a.flags.contains(AttachFlags::BYPASS) {
                    f.write_str(" bypass")?;
                }
                Ok(())
            }
            Request::Detach(d) => {
                write!(f, "{ty} domain {} endpoint {:#x}", d.domain, d.endpoint)
            }
            Request::Map(m) => {
                write!(
                    f,
                    "{ty} domain {} [{:#x}, {:#x}] -> {:#x} ",
                    m.domain, m.virt_start, m.virt_end, m.phys_start
                )?;
                for (flag, c) in [
                    (MapFlags::READ, 'R'),
                    (MapFlags::WRITE, 'W'),
                    (MapFlags::MMIO, 'M'),
                ] {
                    if m.flags.contains(flag) {
                        write!(f, "{c}")?;
                    }
                }
                if m.flags.is_empty() {
                    f.write_str("-")?;
                }
                Ok(())
            }
            Request::Unmap(u) => write!(
                f,
                "{ty} domain {} [{:#x}, {:#x}]",
                u.domain, u.virt_start, u.virt_end
            ),
            Request::Probe(p) => write!(f, "{ty} endpoint {:#x}", p.endpoint),
            Request::AttachTable(a) => {
                write!(f, "{ty} domain {} endpoint {:#x}", a.domain, a.endpoint)?;
                match a.table {
                    TableDesc::Vtd {
                        pasid,
                        pgd,
                        addr_width,
                        ..
                    } => write!(f, " vtd pasid {pasid} pgd {pgd:#x} width {addr_width}"),
                    TableDesc::ArmSmmuV3 {
                        s1contextptr,
                        s1cdmax,
                        ..
                    } => write!(f, " smmuv3 cd {s1contextptr:#x} cdmax {s1cdmax}"),
                }
            }
            Request::Invalidate(i) => {
                write!(f, "{ty} domain {} caches {:#x}", i.domain, i.caches.bits())?;
                match i.scope {
                    InvalScope::Domain => Ok(()),
                    InvalScope::Pasid(p) => pasid(f, Some(p)),
                    InvalScope::Range {
                        pasid: p,
                        start,
                        nr_pages,
                        granule,
                    } => {
                        pasid(f, p)?;
                        write!(f, " {nr_pages} page(s) of 2^{granule} at {start:#x}")
                    }
                }
            }
            Request::PageResp(p) => {
                write!(f, "{ty} endpoint {:#x}", p.endpoint)?;
                pasid(f, p.pasid)?;
                write!(f, " group {} {:?}", p.group_id, p.code)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_iommu_spec::request::{Attach, Map, Unmap};

    #[test]
    fn lines() {
        let line = |r: Request| RequestLine(&r).to_string();
        assert_eq!(
            line(Request::Map(Map {
                domain: 1,
                virt_start: 0x1000,
                virt_end: 0x1fff,
                phys_start: 0x8000,
                flags: MapFlags::READ | MapFlags::WRITE,
            })),
            "MAP domain 1 [0x1000, 0x1fff] -> 0x8000 RW"
        );
        assert_eq!(
            line(Request::Unmap(Unmap {
                domain: 2,
                virt_start: 0,
                virt_end: u64::MAX,
            })),
            "UNMAP domain 2 [0x0, 0xffffffffffffffff]"
        );
        assert_eq!(
            line(Request::Attach(Attach {
                domain: 3,
                endpoint: 0x20,
                flags: AttachFlags::BYPASS,
            })),
            "ATTACH domain 3 endpoint 0x20 bypass"
        );
    }
}
