//! The SMMUv3-style nested path: a guest CD table (ATTACH_TABLE `PSTF_ARM_SMMU_V3`) becomes a
//! nested HWPT allocated on a vIOMMU (`pt_id` = vIOMMU), whose vSTE points at the table.
//!
//! Objects: one vIOMMU per parent IOAS (over that IOAS's NEST_PARENT HWPT), with one vEVENTQ;
//! one vDEVICE per endpoint on it (virt_id = vSID = the endpoint ID); one nested HWPT per table.
//! Users are counted: a vDEVICE lives while its endpoint has tables and is destroyed before the
//! endpoint's device goes; the vIOMMU (vEVENTQ fd closed first, then the vEVENTQ) and its
//! reference on the parent go with the last vDEVICE and table.
//!
//! Flavours: real SMMUv3 (GET_HW_INFO type ARM_SMMUV3) uses the Arm types with the vSTE and
//! CMDQ commands; the kernel's selftest mock (type 0xfeedbeef) uses its own types so the same
//! lifecycle runs in CI. Every other IOMMU has no vIOMMU: `Unsupported`.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{ErrorKind, Read};

use iommufd_bindings as b;
use log::{info, warn};
use virtio_iommu_spec::event::{FaultEvent, FaultFlags, FaultReason};
use virtio_iommu_spec::ext::InvalScope;
use virtio_iommu_spec::request::{Invalidate, TableDesc};
use virtio_iommu_spec::Event;

use super::error::host_err;
use super::nesting::Nested;
use super::smmuv3_encode::{self, SteCfg};
use super::sys::{self, HwInfo};
use super::IommufdHost;
use crate::host::{HostError, SpaceId, TableId};

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
/// vEVENTQ depth: events beyond it are lost (and reported as such) until the guest catches up.
const VEVENTQ_DEPTH: u32 = 64;
/// Records read per `read()`.
const READ_BATCH: usize = 32;

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

    fn viommu_type(self) -> u32 {
        match self {
            Flavour::ArmSmmuV3 { .. } => b::iommu_viommu_type_IOMMU_VIOMMU_TYPE_ARM_SMMUV3,
            Flavour::Selftest => VIOMMU_TYPE_SELFTEST,
        }
    }

    fn veventq(self) -> (u32, usize) {
        match self {
            Flavour::ArmSmmuV3 { .. } => (
                b::iommu_veventq_type_IOMMU_VEVENTQ_TYPE_ARM_SMMUV3,
                smmuv3_encode::EVENT_SIZE,
            ),
            Flavour::Selftest => (VEVENTQ_TYPE_SELFTEST, 4),
        }
    }

    /// Nested HWPT data type and bytes for a CD table.
    fn table_data(self, desc: &TableDesc) -> Result<(u32, Vec<u8>), HostError> {
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
    fn decode(self, rec: &[u8]) -> Option<(u32, FaultEvent)> {
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

/// A vEVENTQ: its object, fd and the sequence number expected next.
#[derive(Debug)]
struct EventQueue {
    id: u32,
    file: File,
    next_seq: Option<u32>,
}

/// One vEVENTQ record after the header checks.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum VEvent<'a> {
    /// An event payload.
    Record(&'a [u8]),
    /// `n` events were lost (a sequence gap, or the queue's LOST_EVENTS marker with `None`).
    Lost(Option<u32>),
}

/// Splits what `read()` returned into records: header `{flags, sequence}` + `rec_len` bytes,
/// checking the sequence against `next_seq` (updated). A trailing partial record is dropped.
pub(super) fn parse_vevents<'a>(
    buf: &'a [u8],
    rec_len: usize,
    next_seq: &mut Option<u32>,
) -> Vec<VEvent<'a>> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(hdr) = buf.get(at..at + 8) {
        let flags = u32::from_ne_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let seq = u32::from_ne_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
        at += 8;
        if flags & b::iommu_veventq_flag_IOMMU_VEVENTQ_FLAG_LOST_EVENTS != 0 {
            out.push(VEvent::Lost(None));
            *next_seq = None;
            continue;
        }
        let Some(rec) = buf.get(at..at + rec_len) else {
            break;
        };
        at += rec_len;
        if let Some(want) = *next_seq {
            // Sequences run 0..=i32::MAX and wrap to 0.
            let gap = seq.wrapping_sub(want) & 0x7fff_ffff;
            if gap != 0 {
                out.push(VEvent::Lost(Some(gap)));
            }
        }
        *next_seq = Some(if seq >= 0x7fff_ffff { 0 } else { seq + 1 });
        out.push(VEvent::Record(rec));
    }
    out
}

#[derive(Debug)]
struct VDevice {
    id: u32,
    tables: usize,
}

/// A vIOMMU over one parent IOAS.
#[derive(Debug)]
struct VIommu {
    id: u32,
    flavour: Flavour,
    eventq: Option<EventQueue>,
    vdevs: BTreeMap<u32, VDevice>,
    tables: usize,
}

/// Object IDs of an endpoint's SMMUv3 nesting (for tests and diagnostics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmmuIds {
    /// The vIOMMU.
    pub viommu: u32,
    /// The endpoint's vDEVICE.
    pub vdevice: u32,
    /// The vEVENTQ, if the kernel has them (6.15+).
    pub veventq: Option<u32>,
}

/// All vIOMMU state of the backend.
#[derive(Debug, Default)]
pub(super) struct VsmmuObjects {
    by_ioas: BTreeMap<u32, VIommu>,
    /// Nested HWPT → (parent IOAS, endpoint).
    tables: BTreeMap<u32, (u32, u32)>,
    ready: VecDeque<Event>,
}

impl VsmmuObjects {
    /// Whether `hwpt` is a table of this path.
    pub(super) fn owns(&self, hwpt: u32) -> bool {
        self.tables.contains_key(&hwpt)
    }
}

impl IommufdHost {
    /// ATTACH_TABLE `PSTF_ARM_SMMU_V3`: vIOMMU (first time for this IOAS), vDEVICE (first
    /// table of the endpoint), then the nested HWPT on the vIOMMU.
    pub(super) fn alloc_smmu_table(
        &mut self,
        endpoint: u32,
        parent: Option<SpaceId>,
        desc: &TableDesc,
    ) -> Result<TableId, HostError> {
        let dev = self.devices.get(&endpoint).ok_or(HostError::Invalid)?;
        let dev_id = dev.dev_id;
        let flavour = match (Flavour::of(dev.hw_info.as_ref()), dev.no_nesting.clone()) {
            (Ok(f), None) => f,
            (Err(why), _) | (Ok(_), Some(why)) => {
                info!("endpoint {endpoint}: ATTACH_TABLE PSTF_ARM_SMMU_V3 unsupported: {why}");
                return Err(HostError::Unsupported);
            }
        };
        let ioas = self.parent_ioas(parent)?;
        let (data_type, data) = flavour.table_data(desc)?;
        self.viommu_for(dev_id, ioas, flavour)?;
        self.vdevice_for(dev_id, ioas, endpoint)?;
        let viommu = self.smmu.by_ioas.get(&ioas).map_or(0, |v| v.id);
        match sys::hwpt_alloc(&self.fd, 0, dev_id, viommu, data_type, &data, None) {
            Ok(hwpt) => {
                self.tables.insert(
                    hwpt,
                    Nested {
                        parent_ioas: ioas,
                        data_type,
                    },
                );
                self.smmu.tables.insert(hwpt, (ioas, endpoint));
                if let Some(v) = self.smmu.by_ioas.get_mut(&ioas) {
                    v.tables += 1;
                    if let Some(d) = v.vdevs.get_mut(&endpoint) {
                        d.tables += 1;
                    }
                }
                Ok(TableId(hwpt))
            }
            Err(e) => {
                self.put_vdevice(ioas, endpoint);
                Err(host_err("IOMMU_HWPT_ALLOC(nested on vIOMMU)", &e))
            }
        }
    }

    fn viommu_for(&mut self, dev_id: u32, ioas: u32, flavour: Flavour) -> Result<(), HostError> {
        if let Some(v) = self.smmu.by_ioas.get(&ioas) {
            // A second IOMMU kind on the same IOAS would need its own vIOMMU; not supported.
            return if v.flavour == flavour {
                Ok(())
            } else {
                Err(HostError::Unsupported)
            };
        }
        let parent = self.parent_for(dev_id, ioas)?;
        let id = match sys::viommu_alloc(&self.fd, flavour.viommu_type(), dev_id, parent) {
            Ok(id) => id,
            Err(e) => {
                self.put_parent(ioas);
                if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOTTY)) {
                    warn!("IOMMU_VIOMMU_ALLOC refused ({e}): no SMMUv3 nesting on this host (kernel < 6.13, or no S2FWB/CANWBS)");
                    return Err(HostError::Unsupported);
                }
                return Err(host_err("IOMMU_VIOMMU_ALLOC", &e));
            }
        };
        let (ty, _) = flavour.veventq();
        let eventq = match sys::veventq_alloc(&self.fd, id, ty, VEVENTQ_DEPTH) {
            Ok((qid, file)) => {
                self.watch_events(&file, "vEVENTQ");
                Some(EventQueue {
                    id: qid,
                    file,
                    next_seq: None,
                })
            }
            Err(e) => {
                warn!(
                    "vIOMMU {id}: no vEVENTQ ({e}): guest faults from this IOMMU are not reported"
                );
                None
            }
        };
        info!(
            "vIOMMU {id} on parent HWPT {parent} (IOAS {ioas}), vEVENTQ {:?}",
            eventq.as_ref().map(|q| q.id)
        );
        self.smmu.by_ioas.insert(
            ioas,
            VIommu {
                id,
                flavour,
                eventq,
                vdevs: BTreeMap::new(),
                tables: 0,
            },
        );
        Ok(())
    }

    fn vdevice_for(&mut self, dev_id: u32, ioas: u32, endpoint: u32) -> Result<(), HostError> {
        let Some(v) = self.smmu.by_ioas.get_mut(&ioas) else {
            return Err(HostError::Invalid);
        };
        if v.vdevs.contains_key(&endpoint) {
            return Ok(());
        }
        match sys::vdevice_alloc(&self.fd, v.id, dev_id, u64::from(endpoint)) {
            Ok(id) => {
                v.vdevs.insert(endpoint, VDevice { id, tables: 0 });
                Ok(())
            }
            Err(e) => {
                self.put_viommu(ioas);
                Err(host_err("IOMMU_VDEVICE_ALLOC", &e))
            }
        }
    }

    /// Destroys `endpoint`'s vDEVICE on `ioas`'s vIOMMU if no table uses it, then the vIOMMU
    /// if nothing does.
    fn put_vdevice(&mut self, ioas: u32, endpoint: u32) {
        let Some(v) = self.smmu.by_ioas.get_mut(&ioas) else {
            return;
        };
        if let Some(d) = v.vdevs.get(&endpoint).filter(|d| d.tables == 0) {
            if let Err(e) = sys::destroy(&self.fd, d.id) {
                warn!("destroying vDEVICE {}: {e}", d.id);
            }
            v.vdevs.remove(&endpoint);
        }
        self.put_viommu(ioas);
    }

    fn put_viommu(&mut self, ioas: u32) {
        if !self
            .smmu
            .by_ioas
            .get(&ioas)
            .is_some_and(|v| v.tables == 0 && v.vdevs.is_empty())
        {
            return;
        }
        if let Some(v) = self.smmu.by_ioas.remove(&ioas) {
            self.destroy_viommu(v);
            self.put_parent(ioas);
        }
    }

    /// vEVENTQ (fd closed first: it holds the object), vDEVICEs, then the vIOMMU itself.
    fn destroy_viommu(&self, v: VIommu) {
        if let Some(q) = v.eventq {
            let id = q.id;
            drop(q.file);
            if let Err(e) = sys::destroy(&self.fd, id) {
                warn!("destroying vEVENTQ {id}: {e}");
            }
        }
        for d in v.vdevs.into_values() {
            if let Err(e) = sys::destroy(&self.fd, d.id) {
                warn!("destroying vDEVICE {}: {e}", d.id);
            }
        }
        if let Err(e) = sys::destroy(&self.fd, v.id) {
            warn!("destroying vIOMMU {}: {e}", v.id);
        }
    }

    /// `destroy_table` of a table on a vIOMMU.
    pub(super) fn destroy_smmu_table(&mut self, table: TableId) -> Result<(), HostError> {
        let Some(&(ioas, endpoint)) = self.smmu.tables.get(&table.0) else {
            return Err(HostError::Invalid);
        };
        sys::destroy(&self.fd, table.0).map_err(|e| host_err("IOMMU_DESTROY(nested HWPT)", &e))?;
        self.tables.remove(&table.0);
        self.smmu.tables.remove(&table.0);
        if let Some(v) = self.smmu.by_ioas.get_mut(&ioas) {
            v.tables = v.tables.saturating_sub(1);
            if let Some(d) = v.vdevs.get_mut(&endpoint) {
                d.tables = d.tables.saturating_sub(1);
            }
        }
        self.put_vdevice(ioas, endpoint);
        Ok(())
    }

    /// INVALIDATE of a table on a vIOMMU: every command of the request in one
    /// `IOMMU_HWPT_INVALIDATE` on the vIOMMU.
    pub(super) fn invalidate_smmu(
        &mut self,
        table: TableId,
        inval: &Invalidate,
    ) -> Result<(), HostError> {
        let &(ioas, endpoint) = self.smmu.tables.get(&table.0).ok_or(HostError::Invalid)?;
        let v = self.smmu.by_ioas.get(&ioas).ok_or(HostError::Invalid)?;
        let (ty, len, entries) = v.flavour.inval_entries(inval, endpoint);
        if entries.is_empty() {
            return Ok(());
        }
        sys::hwpt_invalidate(&self.fd, v.id, ty, len, &entries)
            .map(|_| ())
            .map_err(|(e, n)| {
                warn!(
                    "IOMMU_HWPT_INVALIDATE on vIOMMU {}: {e} after {n} entries",
                    v.id
                );
                host_err("IOMMU_HWPT_INVALIDATE(vIOMMU)", &e)
            })
    }

    /// Removal of `endpoint`: its vDEVICEs go before its device does.
    pub(super) fn release_vdevices(&mut self, endpoint: u32) {
        let ioases: Vec<u32> = self.smmu.by_ioas.keys().copied().collect();
        for ioas in ioases {
            if let Some(v) = self.smmu.by_ioas.get_mut(&ioas) {
                if let Some(d) = v.vdevs.remove(&endpoint) {
                    if let Err(e) = sys::destroy(&self.fd, d.id) {
                        warn!("destroying vDEVICE {}: {e}", d.id);
                    }
                }
            }
            self.put_viommu(ioas);
        }
    }

    /// At drop, after the tables: every vIOMMU and its parent reference.
    pub(super) fn drop_viommus(&mut self) {
        self.smmu.tables.clear();
        for (ioas, v) in std::mem::take(&mut self.smmu.by_ioas) {
            self.destroy_viommu(v);
            self.put_parent(ioas);
        }
    }

    /// The next fault from a vEVENTQ, reading the queues when nothing is buffered.
    pub(super) fn poll_vevent(&mut self) -> Option<Event> {
        if self.smmu.ready.is_empty() {
            self.fill_vevents();
        }
        self.smmu.ready.pop_front()
    }

    fn fill_vevents(&mut self) {
        let VsmmuObjects { by_ioas, ready, .. } = &mut self.smmu;
        for v in by_ioas.values_mut() {
            let flavour = v.flavour;
            let (_, rec_len) = flavour.veventq();
            let Some(q) = &mut v.eventq else { continue };
            let mut buf = vec![0u8; (8 + rec_len) * READ_BATCH];
            let n = match q.file.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                Err(e) => {
                    warn!("vEVENTQ {}: read: {e}", q.id);
                    continue;
                }
            };
            for ev in parse_vevents(&buf[..n], rec_len, &mut q.next_seq) {
                match ev {
                    VEvent::Lost(n) => warn!(
                        "vEVENTQ {}: {} event(s) lost (queue overflow)",
                        q.id,
                        n.map_or("some".into(), |n| n.to_string())
                    ),
                    VEvent::Record(rec) => match flavour.decode(rec) {
                        Some((vsid, f)) if v.vdevs.contains_key(&vsid) => {
                            ready.push_back(Event::Fault(f));
                        }
                        other => warn!(
                            "vEVENTQ {}: event for an unknown vSID dropped: {other:?}",
                            q.id
                        ),
                    },
                }
            }
        }
    }

    /// The vIOMMU objects behind `endpoint`'s SMMUv3 tables.
    #[must_use]
    pub fn smmu_ids(&self, endpoint: u32) -> Option<SmmuIds> {
        self.smmu.by_ioas.values().find_map(|v| {
            v.vdevs.get(&endpoint).map(|d| SmmuIds {
                viommu: v.id,
                vdevice: d.id,
                veventq: v.eventq.as_ref().map(|q| q.id),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_iommu_spec::ext::InvalCaches;

    fn hdr(flags: u32, seq: u32) -> Vec<u8> {
        let mut h = flags.to_ne_bytes().to_vec();
        h.extend_from_slice(&seq.to_ne_bytes());
        h
    }

    #[test]
    fn vevent_records_and_losses() {
        let mut buf = hdr(0, 5);
        buf.extend_from_slice(&7u32.to_ne_bytes());
        buf.extend(hdr(0, 8));
        buf.extend_from_slice(&9u32.to_ne_bytes());
        buf.extend(hdr(1, 9));
        buf.extend(hdr(0, 3)); // truncated record
        buf.extend_from_slice(&[1, 2]);
        let mut next = None;
        let got = parse_vevents(&buf, 4, &mut next);
        assert_eq!(
            got,
            vec![
                VEvent::Record(&7u32.to_ne_bytes()),
                VEvent::Lost(Some(2)),
                VEvent::Record(&9u32.to_ne_bytes()),
                VEvent::Lost(None),
            ]
        );
        assert_eq!(next, None);
        // Wrap-around after i32::MAX is no loss.
        let mut next = Some(0x7fff_ffff);
        let mut buf = hdr(0, 0x7fff_ffff);
        buf.extend_from_slice(&[0; 4]);
        buf.extend(hdr(0, 0));
        buf.extend_from_slice(&[0; 4]);
        assert_eq!(parse_vevents(&buf, 4, &mut next).len(), 2);
        assert_eq!(next, Some(1));
        assert!(parse_vevents(&[0; 7], 4, &mut next).is_empty());
    }

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
