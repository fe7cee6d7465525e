//! The typed device configuration and how it is read from the transport.

use virtio_drivers::transport::Transport;
use virtio_iommu_spec::config::BYPASS_OFFSET;
use virtio_iommu_spec::{Config, Features};
use zerocopy::FromBytes;

use crate::error::Error;

/// The device configuration as the driver uses it, with the defaults the specification gives
/// for fields whose feature was not negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IommuConfig {
    /// Supported page sizes; never zero (the driver refuses such a device).
    pub page_size_mask: u64,
    /// First valid input address (0 without `F_INPUT_RANGE`).
    pub input_start: u64,
    /// Last valid input address, inclusive (`u64::MAX` without `F_INPUT_RANGE`).
    pub input_last: u64,
    /// First valid domain ID (0 without `F_DOMAIN_RANGE`).
    pub domain_start: u32,
    /// Last valid domain ID, inclusive (`u32::MAX` without `F_DOMAIN_RANGE`).
    pub domain_last: u32,
    /// Size of the PROBE properties area (0 without `F_PROBE`).
    pub probe_size: u32,
    /// Whether unattached endpoints bypass the IOMMU (`None` without `F_BYPASS_CONFIG`).
    pub bypass: Option<bool>,
}

impl IommuConfig {
    /// Applies the negotiated features to the raw config space.
    #[must_use]
    pub fn from_raw(raw: &Config, features: Features) -> Self {
        let input = features.contains(Features::INPUT_RANGE);
        let domain = features.contains(Features::DOMAIN_RANGE);
        IommuConfig {
            page_size_mask: raw.page_size_mask.get(),
            input_start: if input {
                raw.input_range_start.get()
            } else {
                0
            },
            input_last: if input {
                raw.input_range_end.get()
            } else {
                u64::MAX
            },
            domain_start: if domain {
                raw.domain_range_start.get()
            } else {
                0
            },
            domain_last: if domain {
                raw.domain_range_end.get()
            } else {
                u32::MAX
            },
            probe_size: if features.contains(Features::PROBE) {
                raw.probe_size.get()
            } else {
                0
            },
            // Only bit 0 has a meaning; the driver ignores the others.
            bypass: features
                .contains(Features::BYPASS_CONFIG)
                .then_some(raw.bypass & 1 == 1),
        }
    }

    /// Rejects values no device may report: a zero page-size mask, or an input or domain
    /// range whose last value is below its start.
    ///
    /// # Errors
    /// [`Error::ZeroPageSizeMask`], [`Error::BadInputRange`] or [`Error::BadDomainRange`].
    pub fn check(&self) -> Result<(), Error> {
        if self.page_size_mask == 0 {
            return Err(Error::ZeroPageSizeMask);
        }
        if self.input_last < self.input_start {
            return Err(Error::BadInputRange {
                start: self.input_start,
                last: self.input_last,
            });
        }
        if self.domain_last < self.domain_start {
            return Err(Error::BadDomainRange {
                start: self.domain_start,
                last: self.domain_last,
            });
        }
        Ok(())
    }

    /// The mapping granule: the smallest page size in `page_size_mask`.
    #[must_use]
    pub fn granule(&self) -> u64 {
        // `page_size_mask` is never zero once the driver accepted the device; fall back to one
        // byte for a config built by hand.
        virtio_iommu_spec::config::granule(self.page_size_mask).unwrap_or(1)
    }

    /// Whether `[start, end]` lies inside the input range.
    #[must_use]
    pub fn contains_range(&self, start: u64, last: u64) -> bool {
        start >= self.input_start && last <= self.input_last && start <= last
    }

    /// Whether `domain` lies inside the domain range.
    #[must_use]
    pub fn contains_domain(&self, domain: u32) -> bool {
        domain >= self.domain_start && domain <= self.domain_last
    }
}

/// How many times the config space is re-read while the device keeps changing it.
const CONFIG_READ_ATTEMPTS: usize = 64;

/// Reads the 40-byte config space with the generation counter held stable.
///
/// Fields are read as aligned 32-bit words (64-bit fields as two halves, which the generation
/// counter makes consistent) and the `bypass` byte as a byte: the access widths virtio allows.
/// Unlike `Transport::read_consistent`, gives up after a bounded number of attempts.
pub(crate) fn read_raw<T: Transport>(transport: &T) -> Result<Config, Error> {
    for _ in 0..CONFIG_READ_ATTEMPTS {
        let before = transport.read_config_generation();
        let mut bytes = [0u8; core::mem::size_of::<Config>()];
        for (i, word) in bytes[..BYPASS_OFFSET].chunks_exact_mut(4).enumerate() {
            let v: u32 = transport.read_config_space(i * 4)?;
            // The register holds little-endian bytes; reading it natively and taking the native
            // bytes gives them back in memory order on any host.
            word.copy_from_slice(&v.to_ne_bytes());
        }
        bytes[BYPASS_OFFSET] = transport.read_config_space::<u8>(BYPASS_OFFSET)?;
        if transport.read_config_generation() == before {
            return Config::read_from_bytes(&bytes).map_err(|_| Error::ConfigUnstable);
        }
    }
    Err(Error::ConfigUnstable)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(mask: u64) -> IommuConfig {
        IommuConfig {
            page_size_mask: mask,
            input_start: 0x1000,
            input_last: 0x1fff,
            domain_start: 2,
            domain_last: 4,
            probe_size: 0,
            bypass: None,
        }
    }

    #[test]
    fn granule_and_ranges() {
        assert_eq!(cfg(0xffff_f000).granule(), 0x1000);
        assert_eq!(cfg(1 << 63).granule(), 1 << 63);
        assert_eq!(cfg(0).granule(), 1);
        let c = cfg(0x1000);
        assert!(c.contains_range(0x1000, 0x1fff));
        assert!(!c.contains_range(0xfff, 0x1fff));
        assert!(!c.contains_range(0x1000, 0x2000));
        assert!(!c.contains_range(0x1800, 0x17ff));
        assert!(c.contains_domain(2) && c.contains_domain(4));
        assert!(!c.contains_domain(1) && !c.contains_domain(5));
    }

    #[test]
    fn check_rejects_impossible_values() {
        assert_eq!(cfg(0x1000).check(), Ok(()));
        assert_eq!(cfg(0).check(), Err(Error::ZeroPageSizeMask));
        let mut c = cfg(0x1000);
        c.input_last = 0xfff;
        assert_eq!(
            c.check(),
            Err(Error::BadInputRange {
                start: 0x1000,
                last: 0xfff
            })
        );
        let mut c = cfg(0x1000);
        c.domain_last = 1;
        assert_eq!(c.check(), Err(Error::BadDomainRange { start: 2, last: 1 }));
    }
}
