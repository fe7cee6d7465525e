//! Binding a table to an endpoint: the PROBE checks, then ATTACH_TABLE.

use virtio_drivers::transport::Transport;
use virtio_drivers::Hal;
use virtio_iommu_spec::ext::{TableFormat, S1DSS_SSID0, S1FMT_4KL2, S1FMT_LINEAR};
use virtio_iommu_spec::request::TableDesc;
use virtio_iommu_spec::Features;

use super::cd_table::MAX_TWO_LEVEL_CDMAX;
use super::error::SvaError;
use crate::device::VirtIOIommu;
use crate::error::Error;
use crate::probe::EndpointInfo;

/// Checks that `info` (the endpoint's PROBE reply) advertises `table`'s format and enough
/// PASID bits, and that `table` holds values the device accepts: `s1fmt` linear or 4KL2,
/// `s1cdmax` ≤ 20, a 64-byte aligned `s1contextptr`; `addr_width` 48 or 57 and a 4 KiB
/// aligned `pgd`.
///
/// PASID bits needed: `s1cdmax` for an SMMUv3 CD table, the bit length of `pasid` for a VT-d
/// table (PASID 0 needs none). An endpoint that advertised no PASID size has 0 bits.
///
/// # Errors
/// [`SvaError::FormatNotAdvertised`], [`SvaError::PasidBitsTooFew`],
/// [`SvaError::BadTableDesc`].
pub fn check_table(info: &EndpointInfo, table: &TableDesc) -> Result<(), SvaError> {
    let needed = match *table {
        TableDesc::ArmSmmuV3 {
            s1fmt,
            s1dss,
            s1contextptr,
            s1cdmax,
        } => {
            let fmt_ok = s1fmt == S1FMT_LINEAR || s1fmt == S1FMT_4KL2;
            if !fmt_ok || s1dss > S1DSS_SSID0 || s1cdmax > MAX_TWO_LEVEL_CDMAX {
                return Err(SvaError::BadTableDesc);
            }
            if s1contextptr == 0 || s1contextptr % 64 != 0 {
                return Err(SvaError::BadTableDesc);
            }
            s1cdmax
        }
        TableDesc::Vtd {
            pasid,
            addr_width,
            pgd,
            ..
        } => {
            if !matches!(addr_width, 48 | 57) || pgd == 0 || pgd % 4096 != 0 {
                return Err(SvaError::BadTableDesc);
            }
            u32::BITS - pasid.leading_zeros()
        }
    };
    let format = table.format();
    let advertised = match format {
        TableFormat::ArmSmmuV3 => &info.pasid_table_formats,
        TableFormat::Vtd => &info.page_table_formats,
    };
    if !advertised.contains(&format.code()) {
        return Err(SvaError::FormatNotAdvertised(format));
    }
    let supported = info.pasid_bits.unwrap_or(0);
    if needed > u32::from(supported) {
        return Err(SvaError::PasidBitsTooFew { needed, supported });
    }
    Ok(())
}

impl<H: Hal, T: Transport> VirtIOIommu<H, T> {
    /// PROBEs `endpoint`, checks `table` against the reply ([`check_table`]) and sends
    /// ATTACH_TABLE.
    ///
    /// The device contract: `endpoint` must already be ATTACHed to `domain` (whose mappings
    /// translate the table's guest-physical output), or the device refuses the request.
    ///
    /// # Errors
    /// [`Error::NotNegotiated`] without `F_ATTACH_TABLE` or `F_PROBE` (nothing sent), the
    /// errors of [`check_table`] (only the PROBE sent), or the device's status.
    pub fn bind_table(
        &mut self,
        domain: u32,
        endpoint: u32,
        table: &TableDesc,
    ) -> Result<(), SvaError> {
        if !self.features().contains(Features::ATTACH_TABLE) {
            return Err(Error::NotNegotiated(Features::ATTACH_TABLE).into());
        }
        let info = self.probe(endpoint)?;
        self.bind_table_with(domain, endpoint, &info, table)
    }

    /// [`bind_table`](Self::bind_table) with a PROBE reply the caller already has.
    ///
    /// # Errors
    /// As [`bind_table`](Self::bind_table).
    pub fn bind_table_with(
        &mut self,
        domain: u32,
        endpoint: u32,
        info: &EndpointInfo,
        table: &TableDesc,
    ) -> Result<(), SvaError> {
        check_table(info, table)?;
        self.attach_table(domain, endpoint, *table)?;
        log::debug!("bound {table:?} to endpoint {endpoint} in domain {domain}");
        Ok(())
    }
}
