//! The uAPI flavour of a host vIOMMU: which object, HWPT, invalidation and vEVENTQ types it
//! speaks, and the bytes of each. Real SMMUv3 (GET_HW_INFO type ARM_SMMUV3) uses the Arm types
//! with the vSTE and CMDQ commands; the kernel's selftest mock (type 0xfeedbeef) uses its own
//! types so the same lifecycle runs in CI.

use iommufd_bindings as b;
use virtio_iommu_spec::event::{FaultEvent, FaultFlags, FaultReason};
use virtio_iommu_spec::ext::InvalScope;
use virtio_iommu_spec::request::{Invalidate, TableDesc};

use super::smmuv3_encode::{self, SteCfg};
use super::sys::HwInfo;
use crate::host::HostError;

/// `IOMMU_HW_INFO_TYPE_SELFTEST` (iommufd_test.h).
const HW_INFO_SELFTEST: u32 = 0xfeed_beef;
/// Selftest types (7.2 iommufd_test.h): vIOMMU, nested HWPT data, vIOMMU invalidation, vEVENTQ.
const VIOMMU_TYPE_SELFTEST: u32 = 0xdead_beef;
const HWPT_DATA_SELFTEST: u32 = 0xdead;
const VIOMMU_INVALIDATE_SELFTEST: u32 = 0xdead_beef;
const VEVENTQ_TYPE_SELFTEST: u32 = 0xbeef_beef;
/// `IOMMU_TEST_IOTLB_DEFAULT`, the initial mock IOTLB value.
const SELFTEST_IOTLB_DEFAULT: u32 = 0x0bad_beef;
/// Mock device caches (`MOCK_DEV_CACHE_NUM`).
const SELFTEST_CACHES: u64 = 4;

/// Which uAPI types the host's vIOMMU speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flavour {
    /// A real SMMUv3: vSTE tables, CMDQ invalidation, 32-byte event records.
    ArmSmmuV3 {
        /// IDR3.RIL: range invalidation.
        range_inv: bool,
        /// IDR0.STALL_MODEL = 0 (stalls optional): disable them, they are not forwarded.
        stall_disable: bool,
    },
    /// The iommufd selftest mock.
    Selftest,
}

fn le32(d: &[u8], at: usize) -> u32 {
    d.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

impl Flavour {
    /// The flavour of the IOMMU behind `hw`, or why it has no vIOMMU.
    pub(super) fn of(hw: Option<&HwInfo>) -> Result<Self, String> {
        match hw.map(|h| h.data_type) {
            Some(b::iommu_hw_info_type_IOMMU_HW_INFO_TYPE_ARM_SMMUV3) => {
                let d = &hw.map_or(&[][..], |h| &h.data[..]);
                // iommu_hw_info_arm_smmuv3: flags, reserved, idr[0..6] from offset 8.
                let (idr0, idr3) = (le32(d, 8), le32(d, 20));
                Ok(Flavour::ArmSmmuV3 {
                    range_inv: idr3 & (1 << 10) != 0,
                    stall_disable: (idr0 >> 24) & 3 == 0,
                })
            }
            Some(HW_INFO_SELFTEST) => Ok(Flavour::Selftest),
            Some(t) => Err(format!(
                "host IOMMU type {t:#x} has no vIOMMU (only SMMUv3 does)"
            )),
            None => Err("no IOMMU_GET_HW_INFO for this device".into()),
        }
    }

    pub(super) fn viommu_type(self) -> u32 {
        match self {
            Flavour::ArmSmmuV3 { .. } => b::iommu_viommu_type_IOMMU_VIOMMU_TYPE_ARM_SMMUV3,
            Flavour::Selftest => VIOMMU_TYPE_SELFTEST,
        }
    }

    pub(super) fn veventq(self) -> (u32, usize) {
        match self {
            Flavour::ArmSmmuV3 { .. } => (
                b::iommu_veventq_type_IOMMU_VEVENTQ_TYPE_ARM_SMMUV3,
                smmuv3_encode::EVENT_SIZE,
            ),
            Flavour::Selftest => (VEVENTQ_TYPE_SELFTEST, 4),
        }
    }

    /// Nested HWPT data type and bytes for a CD table.
    pub(super) fn table_data(self, desc: &TableDesc) -> Result<(u32, Vec<u8>), HostError> {
        let TableDesc::ArmSmmuV3 {
            s1fmt,
            s1dss,
            s1contextptr,
            s1cdmax,
        } = *desc
        else {
            return Err(HostError::Invalid);
        };
        match self {
            Flavour::ArmSmmuV3 { stall_disable, .. } => {
                let ste = smmuv3_encode::vste(
                    SteCfg::S1Translate,
                    s1fmt,
                    s1dss,
                    s1contextptr,
                    s1cdmax,
                    stall_disable,
                )?;
                Ok((
                    b::iommu_hwpt_data_type_IOMMU_HWPT_DATA_ARM_SMMUV3,
                    smmuv3_encode::le_bytes(&ste),
                ))
            }
            // struct iommu_hwpt_selftest {iotlb, pagetable_type}: the mock walks no table.
            Flavour::Selftest => {
                let mut d = SELFTEST_IOTLB_DEFAULT.to_ne_bytes().to_vec();
                d.extend_from_slice(&0u32.to_ne_bytes());
                Ok((HWPT_DATA_SELFTEST, d))
            }
        }
    }

    /// `(data_type, entry_len, entries)` of one guest INVALIDATE, as one batch.
    pub(super) fn inval_entries(self, inval: &Invalidate, vsid: u32) -> (u32, u32, Vec<u8>) {
        match self {
            Flavour::ArmSmmuV3 { range_inv, .. } => {
                let cmds = smmuv3_encode::commands(inval, vsid, range_inv);
                let words: Vec<u64> = cmds.iter().flatten().copied().collect();
                (
                    b::iommu_hwpt_invalidate_data_type_IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3,
                    16,
                    smmuv3_encode::le_bytes(&words),
                )
            }
            // iommu_viommu_invalidate_selftest {flags, vdev_id, cache_id}: the mock device's
            // four caches stand in for the IOTLB: a range clears the entries of its first
            // pages (page number mod 4), anything wider all of them (FLAG_ALL).
            Flavour::Selftest => {
                let entry = |flags: u32, cache: u64| {
                    let mut e = flags.to_ne_bytes().to_vec();
                    e.extend_from_slice(&vsid.to_ne_bytes());
                    e.extend_from_slice(&u32::try_from(cache).unwrap_or(0).to_ne_bytes());
                    e
                };
                let pages = match inval.scope {
                    InvalScope::Range {
                        start,
                        nr_pages,
                        granule,
                        ..
                    } if granule < 64 && nr_pages < SELFTEST_CACHES => {
                        Some((start >> granule, nr_pages))
                    }
                    _ => None,
                };
                let bytes = match pages {
                    Some((first, n)) => (0..n)
                        .flat_map(|i| entry(0, first.wrapping_add(i) % SELFTEST_CACHES))
                        .collect(),
                    None => entry(1, 0),
                };
                (VIOMMU_INVALIDATE_SELFTEST, 12, bytes)
            }
        }
    }

    /// The fault of one vEVENTQ record; `None` if it names no vSID.
    pub(super) fn decode(self, rec: &[u8]) -> Option<(u32, FaultEvent)> {
        match self {
            Flavour::ArmSmmuV3 { .. } => {
                let r: &[u8; smmuv3_encode::EVENT_SIZE] = rec.try_into().ok()?;
                let vsid = smmuv3_encode::event_sid(r);
                Some((vsid, smmuv3_encode::event_to_fault(r, vsid)))
            }
            // iommu_viommu_event_selftest {virt_id}: no reason or address.
            Flavour::Selftest => {
                let vsid = u32::from_ne_bytes(rec.try_into().ok()?);
                Some((
                    vsid,
                    FaultEvent {
                        reason: FaultReason::Unknown,
                        access: FaultFlags::empty(),
                        endpoint: vsid,
                        address: None,
                        pasid: None,
                    },
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_iommu_spec::ext::InvalCaches;

    #[test]
    fn flavours_from_hw_info() {
        let hw = |data_type, data: Vec<u8>| HwInfo {
            data_type,
            data,
            max_pasid_log2: 0,
            capabilities: 0,
        };
        assert_eq!(
            Flavour::of(Some(&hw(0xfeed_beef, vec![]))),
            Ok(Flavour::Selftest)
        );
        let mut d = vec![0u8; 40];
        d[20..24].copy_from_slice(&(1u32 << 10).to_le_bytes());
        d[8..12].copy_from_slice(&(1u32 << 24).to_le_bytes());
        assert_eq!(
            Flavour::of(Some(&hw(2, d))),
            Ok(Flavour::ArmSmmuV3 {
                range_inv: true,
                stall_disable: false
            })
        );
        assert_eq!(
            Flavour::of(Some(&hw(2, vec![]))),
            Ok(Flavour::ArmSmmuV3 {
                range_inv: false,
                stall_disable: true
            })
        );
        assert!(Flavour::of(Some(&hw(1, vec![])))
            .unwrap_err()
            .contains("no vIOMMU"));
        assert!(Flavour::of(None).is_err());
    }

    #[test]
    fn selftest_flavour_data() {
        let desc = TableDesc::ArmSmmuV3 {
            s1fmt: 0,
            s1dss: 0,
            s1contextptr: 0x1000,
            s1cdmax: 0,
        };
        let (ty, d) = Flavour::Selftest.table_data(&desc).unwrap();
        assert_eq!(ty, 0xdead);
        assert_eq!(d, [0x0bad_beefu32.to_ne_bytes(), [0; 4]].concat());
        let inv = |scope| Invalidate {
            domain: 1,
            caches: InvalCaches::IOTLB,
            scope,
            archid: None,
            leaf: false,
        };
        let e = |f: u32, c: u32| [f.to_ne_bytes(), 9u32.to_ne_bytes(), c.to_ne_bytes()].concat();
        let (ty, len, b) = Flavour::Selftest.inval_entries(&inv(InvalScope::Domain), 9);
        assert_eq!((ty, len, b), (0xdead_beef, 12, e(1, 0)));
        let r = InvalScope::Range {
            pasid: None,
            start: 0x3000,
            nr_pages: 2,
            granule: 12,
        };
        let (_, _, b) = Flavour::Selftest.inval_entries(&inv(r), 9);
        assert_eq!(b, [e(0, 3), e(0, 0)].concat());
        let (ty, len, b) = Flavour::ArmSmmuV3 {
            range_inv: false,
            stall_disable: true,
        }
        .inval_entries(&inv(InvalScope::Domain), 9);
        assert_eq!((ty, len), (1, 16));
        assert_eq!(b, [0x10u64.to_le_bytes(), [0; 8]].concat());
        let (v, f) = Flavour::Selftest.decode(&9u32.to_ne_bytes()).unwrap();
        assert_eq!((v, f.endpoint, f.reason), (9, 9, FaultReason::Unknown));
        assert!(Flavour::Selftest.decode(&[1, 2]).is_none());
    }
}
