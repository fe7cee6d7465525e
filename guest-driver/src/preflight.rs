//! Checks a request against the negotiated features and the config before it is sent, so that
//! requests the specification forbids never reach the device.

use virtio_iommu_spec::ext::InvalScope;
use virtio_iommu_spec::request::{AttachFlags, MapFlags, Request};
use virtio_iommu_spec::Features;

use crate::config::IommuConfig;
use crate::error::Error;

/// The largest `probe_size` the driver allocates a properties area for.
pub const MAX_PROBE_SIZE: u32 = 64 * 1024;

fn need(features: Features, f: Features) -> Result<(), Error> {
    if features.contains(f) {
        Ok(())
    } else {
        Err(Error::NotNegotiated(f))
    }
}

fn domain(cfg: &IommuConfig, d: u32) -> Result<(), Error> {
    if cfg.contains_domain(d) {
        Ok(())
    } else {
        Err(Error::DomainOutOfRange)
    }
}

fn range(cfg: &IommuConfig, start: u64, last: u64) -> Result<(), Error> {
    if start > last {
        Err(Error::EmptyRange)
    } else if cfg.contains_range(start, last) {
        Ok(())
    } else {
        Err(Error::OutOfRange)
    }
}

/// Checks `req`; `Ok` means the driver may send it.
///
/// # Errors
/// The first rule the request breaks.
pub fn check(req: &Request, features: Features, cfg: &IommuConfig) -> Result<(), Error> {
    match req {
        Request::Attach(a) => {
            if a.flags.bits() & !AttachFlags::all().bits() != 0 {
                return Err(Error::UnknownFlags);
            }
            if a.flags.contains(AttachFlags::BYPASS) {
                need(features, Features::BYPASS_CONFIG)?;
            }
            domain(cfg, a.domain)
        }
        Request::Detach(d) => domain(cfg, d.domain),
        Request::Map(m) => {
            need(features, Features::MAP_UNMAP)?;
            if m.flags.bits() & !MapFlags::all().bits() != 0 {
                return Err(Error::UnknownFlags);
            }
            if m.flags.contains(MapFlags::MMIO) {
                need(features, Features::MMIO)?;
            }
            domain(cfg, m.domain)?;
            if m.virt_start > m.virt_end
                || m.phys_start
                    .checked_add(m.virt_end - m.virt_start)
                    .is_none()
            {
                return Err(Error::EmptyRange);
            }
            let mask = cfg.granule() - 1;
            // `virt_end + 1` is 2^64 for a mapping that ends at the top: aligned.
            let end_aligned = m.virt_end.checked_add(1).is_none_or(|e| e & mask == 0);
            if m.virt_start & mask != 0 || m.phys_start & mask != 0 || !end_aligned {
                return Err(Error::Unaligned);
            }
            range(cfg, m.virt_start, m.virt_end)
        }
        Request::Unmap(u) => {
            need(features, Features::MAP_UNMAP)?;
            domain(cfg, u.domain)?;
            range(cfg, u.virt_start, u.virt_end)
        }
        Request::Probe(_) => {
            need(features, Features::PROBE)?;
            if cfg.probe_size > MAX_PROBE_SIZE {
                return Err(Error::ProbeTooLarge(cfg.probe_size));
            }
            Ok(())
        }
        Request::AttachTable(a) => {
            need(features, Features::ATTACH_TABLE)?;
            domain(cfg, a.domain)
        }
        Request::Invalidate(i) => {
            need(features, Features::ATTACH_TABLE)?;
            if let InvalScope::Range { granule, .. } = i.scope {
                // log2 of a page size from 4 KiB up; the device rejects anything else.
                if !(12..=63).contains(&granule) {
                    return Err(Error::InvalidGranule);
                }
            }
            domain(cfg, i.domain)
        }
        Request::PageResp(_) => need(features, Features::PAGE_REQUEST),
    }
}
