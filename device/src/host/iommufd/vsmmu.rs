//! The SMMUv3-style nested path: a guest CD table (ATTACH_TABLE `PSTF_ARM_SMMU_V3`) becomes a
//! nested HWPT allocated on a vIOMMU (`pt_id` = vIOMMU), whose vSTE points at the table.
//!
//! Objects: one vIOMMU per parent IOAS (over that IOAS's NEST_PARENT HWPT), with one vEVENTQ;
//! one vDEVICE per endpoint on it (virt_id = vSID = the endpoint ID); one nested HWPT per table.
//! Users are counted: a vDEVICE lives while its endpoint has tables and is destroyed before the
//! endpoint's device goes; the vIOMMU (vEVENTQ fd closed first, then the vEVENTQ) and its
//! reference on the parent go with the last vDEVICE and table.
//!
//! The uAPI types of each host IOMMU kind are in `vsmmu_flavour.rs`; every IOMMU other than
//! SMMUv3 and the selftest mock has no vIOMMU: `Unsupported`.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{ErrorKind, Read};

use iommufd_bindings as b;
use log::{info, warn};
use virtio_iommu_spec::request::{Invalidate, TableDesc};
use virtio_iommu_spec::Event;

use super::bound_device::BoundDevice;
use super::error::host_err;
use super::nesting::Nesting;
use super::sys;
use super::vsmmu_flavour::Flavour;
use super::watch_events;
use crate::host::{HostError, TableId};

/// vEVENTQ depth: events beyond it are lost (and reported as such) until the guest catches up.
const VEVENTQ_DEPTH: u32 = 64;
/// Records read per `read()`.
const READ_BATCH: usize = 32;

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

    /// ATTACH_TABLE `PSTF_ARM_SMMU_V3` for `endpoint` (its device `dev`) over `ioas` (checked
    /// after the host's support): vIOMMU (first time for this IOAS), vDEVICE (first table of
    /// the endpoint), then the nested HWPT on the vIOMMU, recorded in `nesting`. vEVENTQ fds
    /// join `epoll`.
    pub(super) fn alloc_table(
        &mut self,
        fd: &File,
        epoll: &File,
        nesting: &mut Nesting,
        (endpoint, dev): (u32, &BoundDevice),
        ioas: Result<u32, HostError>,
        desc: &TableDesc,
    ) -> Result<TableId, HostError> {
        let dev_id = dev.dev_id;
        let flavour = match (Flavour::of(dev.hw_info.as_ref()), dev.no_nesting.clone()) {
            (Ok(f), None) => f,
            (Err(why), _) | (Ok(_), Some(why)) => {
                info!("endpoint {endpoint}: ATTACH_TABLE PSTF_ARM_SMMU_V3 unsupported: {why}");
                return Err(HostError::Unsupported);
            }
        };
        let ioas = ioas?;
        let (data_type, data) = flavour.table_data(desc)?;
        self.viommu_for(fd, epoll, nesting, dev_id, ioas, flavour)?;
        self.vdevice_for(fd, nesting, dev_id, ioas, endpoint)?;
        let viommu = self.by_ioas.get(&ioas).map_or(0, |v| v.id);
        match sys::hwpt_alloc(fd, 0, dev_id, viommu, data_type, &data, None) {
            Ok(hwpt) => {
                nesting.insert(hwpt, ioas, data_type);
                self.tables.insert(hwpt, (ioas, endpoint));
                if let Some(v) = self.by_ioas.get_mut(&ioas) {
                    v.tables += 1;
                    if let Some(d) = v.vdevs.get_mut(&endpoint) {
                        d.tables += 1;
                    }
                }
                Ok(TableId(hwpt))
            }
            Err(e) => {
                self.put_vdevice(fd, nesting, ioas, endpoint);
                Err(host_err("IOMMU_HWPT_ALLOC(nested on vIOMMU)", &e))
            }
        }
    }

    fn viommu_for(
        &mut self,
        fd: &File,
        epoll: &File,
        nesting: &mut Nesting,
        dev_id: u32,
        ioas: u32,
        flavour: Flavour,
    ) -> Result<(), HostError> {
        if let Some(v) = self.by_ioas.get(&ioas) {
            // A second IOMMU kind on the same IOAS would need its own vIOMMU; not supported.
            return if v.flavour == flavour {
                Ok(())
            } else {
                Err(HostError::Unsupported)
            };
        }
        let parent = nesting.parent_for(fd, dev_id, ioas)?;
        let id = match sys::viommu_alloc(fd, flavour.viommu_type(), dev_id, parent) {
            Ok(id) => id,
            Err(e) => {
                nesting.put_parent(fd, ioas);
                if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOTTY)) {
                    warn!("IOMMU_VIOMMU_ALLOC refused ({e}): no SMMUv3 nesting on this host (kernel < 6.13, or no S2FWB/CANWBS)");
                    return Err(HostError::Unsupported);
                }
                return Err(host_err("IOMMU_VIOMMU_ALLOC", &e));
            }
        };
        let (ty, _) = flavour.veventq();
        let eventq = match sys::veventq_alloc(fd, id, ty, VEVENTQ_DEPTH) {
            Ok((qid, file)) => {
                watch_events(epoll, &file, "vEVENTQ");
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
        self.by_ioas.insert(
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

    fn vdevice_for(
        &mut self,
        fd: &File,
        nesting: &mut Nesting,
        dev_id: u32,
        ioas: u32,
        endpoint: u32,
    ) -> Result<(), HostError> {
        let Some(v) = self.by_ioas.get_mut(&ioas) else {
            return Err(HostError::Invalid);
        };
        if v.vdevs.contains_key(&endpoint) {
            return Ok(());
        }
        match sys::vdevice_alloc(fd, v.id, dev_id, u64::from(endpoint)) {
            Ok(id) => {
                v.vdevs.insert(endpoint, VDevice { id, tables: 0 });
                Ok(())
            }
            Err(e) => {
                self.put_viommu(fd, nesting, ioas);
                Err(host_err("IOMMU_VDEVICE_ALLOC", &e))
            }
        }
    }

    /// Destroys `endpoint`'s vDEVICE on `ioas`'s vIOMMU if no table uses it, then the vIOMMU
    /// if nothing does.
    fn put_vdevice(&mut self, fd: &File, nesting: &mut Nesting, ioas: u32, endpoint: u32) {
        let Some(v) = self.by_ioas.get_mut(&ioas) else {
            return;
        };
        if let Some(d) = v.vdevs.get(&endpoint).filter(|d| d.tables == 0) {
            if let Err(e) = sys::destroy(fd, d.id) {
                warn!("destroying vDEVICE {}: {e}", d.id);
            }
            v.vdevs.remove(&endpoint);
        }
        self.put_viommu(fd, nesting, ioas);
    }

    fn put_viommu(&mut self, fd: &File, nesting: &mut Nesting, ioas: u32) {
        if !self
            .by_ioas
            .get(&ioas)
            .is_some_and(|v| v.tables == 0 && v.vdevs.is_empty())
        {
            return;
        }
        if let Some(v) = self.by_ioas.remove(&ioas) {
            Self::destroy_viommu(fd, v);
            nesting.put_parent(fd, ioas);
        }
    }

    /// vEVENTQ (fd closed first: it holds the object), vDEVICEs, then the vIOMMU itself.
    fn destroy_viommu(fd: &File, v: VIommu) {
        if let Some(q) = v.eventq {
            let id = q.id;
            drop(q.file);
            if let Err(e) = sys::destroy(fd, id) {
                warn!("destroying vEVENTQ {id}: {e}");
            }
        }
        for d in v.vdevs.into_values() {
            if let Err(e) = sys::destroy(fd, d.id) {
                warn!("destroying vDEVICE {}: {e}", d.id);
            }
        }
        if let Err(e) = sys::destroy(fd, v.id) {
            warn!("destroying vIOMMU {}: {e}", v.id);
        }
    }

    /// `destroy_table` of a table on a vIOMMU.
    pub(super) fn destroy_table(
        &mut self,
        fd: &File,
        nesting: &mut Nesting,
        table: TableId,
    ) -> Result<(), HostError> {
        let Some(&(ioas, endpoint)) = self.tables.get(&table.0) else {
            return Err(HostError::Invalid);
        };
        sys::destroy(fd, table.0).map_err(|e| host_err("IOMMU_DESTROY(nested HWPT)", &e))?;
        nesting.remove(table.0);
        self.tables.remove(&table.0);
        if let Some(v) = self.by_ioas.get_mut(&ioas) {
            v.tables = v.tables.saturating_sub(1);
            if let Some(d) = v.vdevs.get_mut(&endpoint) {
                d.tables = d.tables.saturating_sub(1);
            }
        }
        self.put_vdevice(fd, nesting, ioas, endpoint);
        Ok(())
    }

    /// INVALIDATE of a table on a vIOMMU: every command of the request in one
    /// `IOMMU_HWPT_INVALIDATE` on the vIOMMU.
    pub(super) fn invalidate(
        &self,
        fd: &File,
        table: TableId,
        inval: &Invalidate,
    ) -> Result<(), HostError> {
        let &(ioas, endpoint) = self.tables.get(&table.0).ok_or(HostError::Invalid)?;
        let v = self.by_ioas.get(&ioas).ok_or(HostError::Invalid)?;
        let (ty, len, entries) = v.flavour.inval_entries(inval, endpoint);
        if entries.is_empty() {
            return Ok(());
        }
        sys::hwpt_invalidate(fd, v.id, ty, len, &entries)
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
    pub(super) fn release_endpoint(&mut self, fd: &File, nesting: &mut Nesting, endpoint: u32) {
        let ioases: Vec<u32> = self.by_ioas.keys().copied().collect();
        for ioas in ioases {
            if let Some(v) = self.by_ioas.get_mut(&ioas) {
                if let Some(d) = v.vdevs.remove(&endpoint) {
                    if let Err(e) = sys::destroy(fd, d.id) {
                        warn!("destroying vDEVICE {}: {e}", d.id);
                    }
                }
            }
            self.put_viommu(fd, nesting, ioas);
        }
    }

    /// At drop, after the tables: every vIOMMU and its parent reference.
    pub(super) fn destroy_all(&mut self, fd: &File, nesting: &mut Nesting) {
        self.tables.clear();
        for (ioas, v) in std::mem::take(&mut self.by_ioas) {
            Self::destroy_viommu(fd, v);
            nesting.put_parent(fd, ioas);
        }
    }

    /// The next fault from a vEVENTQ, reading the queues when nothing is buffered.
    pub(super) fn poll_event(&mut self) -> Option<Event> {
        if self.ready.is_empty() {
            self.fill();
        }
        self.ready.pop_front()
    }

    fn fill(&mut self) {
        let VsmmuObjects { by_ioas, ready, .. } = self;
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
    pub(super) fn ids(&self, endpoint: u32) -> Option<SmmuIds> {
        self.by_ioas.values().find_map(|v| {
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
}
