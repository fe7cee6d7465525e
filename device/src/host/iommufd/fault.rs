//! The iommufd fault queue (`IOMMU_FAULT_QUEUE_ALLOC`): page requests read from its fd become
//! virtio-iommu page-request events, and PAGE_RESP is written back by cookie.
//!
//! The kernel identifies a page-request group by a cookie; the guest by (endpoint, PASID,
//! group ID). The table between the two is the only state. iommufd answers pending groups
//! with INVALID itself when a device's HWPT changes, so the table entries of an endpoint are
//! dropped on every attach change ([`FaultQueue::forget_endpoint`]).

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};

use iommufd_bindings as b;
use log::{debug, warn};
use virtio_iommu_spec::event::{FaultFlags, PageRequest};
use virtio_iommu_spec::ext::PageRespCode;
use virtio_iommu_spec::Event;

use crate::host::HostError;

/// Size of one `struct iommu_hwpt_pgfault` record.
pub const RECORD_SIZE: usize = 40;
/// Records read per `read()`.
const BATCH: usize = 32;
/// Bound on remembered groups (a hostile or stuck guest cannot grow the table without limit:
/// the kernel's own queue is bounded, this is a second guard).
const MAX_PENDING_GROUPS: usize = 4096;

/// One decoded `struct iommu_hwpt_pgfault`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgFault {
    /// `IOMMU_PGFAULT_FLAGS_*`.
    pub flags: u32,
    /// iommufd device ID.
    pub dev_id: u32,
    /// PASID (valid with `PASID_VALID`).
    pub pasid: u32,
    /// Page request group index.
    pub grpid: u32,
    /// `IOMMU_PGFAULT_PERM_*`.
    pub perm: u32,
    /// Faulting address.
    pub addr: u64,
    /// Group cookie for the response.
    pub cookie: u32,
}

fn ne32(b: &[u8; RECORD_SIZE], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(w)
}

impl PgFault {
    /// Decodes one record (native endianness, as the kernel writes it).
    #[must_use]
    pub fn decode(rec: &[u8; RECORD_SIZE]) -> Self {
        let mut a = [0u8; 8];
        a.copy_from_slice(&rec[24..32]);
        PgFault {
            flags: ne32(rec, 0),
            dev_id: ne32(rec, 4),
            pasid: ne32(rec, 8),
            grpid: ne32(rec, 12),
            perm: ne32(rec, 16),
            addr: u64::from_ne_bytes(a),
            cookie: ne32(rec, 36),
        }
    }

    /// The virtio-iommu page request for `endpoint`, or `None` if the group ID does not fit
    /// the 16-bit field (PCIe PRGIs are 9 bits; anything larger is not a PCI page request).
    #[must_use]
    pub fn to_page_request(&self, endpoint: u32) -> Option<PageRequest> {
        let group_id = u16::try_from(self.grpid).ok()?;
        let mut access = FaultFlags::empty();
        let perm = |bit| self.perm & bit != 0;
        access.set(
            FaultFlags::READ,
            perm(b::iommu_hwpt_pgfault_perm_IOMMU_PGFAULT_PERM_READ),
        );
        access.set(
            FaultFlags::WRITE,
            perm(b::iommu_hwpt_pgfault_perm_IOMMU_PGFAULT_PERM_WRITE),
        );
        access.set(
            FaultFlags::EXEC,
            perm(b::iommu_hwpt_pgfault_perm_IOMMU_PGFAULT_PERM_EXEC),
        );
        access.set(
            FaultFlags::PRIV,
            perm(b::iommu_hwpt_pgfault_perm_IOMMU_PGFAULT_PERM_PRIV),
        );
        let pasid_valid =
            self.flags & b::iommu_hwpt_pgfault_flags_IOMMU_PGFAULT_FLAGS_PASID_VALID != 0;
        Some(PageRequest {
            endpoint,
            pasid: pasid_valid.then_some(self.pasid),
            address: self.addr,
            access,
            group_id,
            last: self.flags & b::iommu_hwpt_pgfault_flags_IOMMU_PGFAULT_FLAGS_LAST_PAGE != 0,
            private_data: None,
        })
    }
}

/// Encodes a page response (`struct iommu_hwpt_page_response`). FAILURE cannot be expressed
/// by iommufd and is sent as INVALID.
#[must_use]
pub fn encode_response(cookie: u32, code: PageRespCode) -> [u8; 8] {
    let code = match code {
        PageRespCode::Success => b::iommufd_page_response_code_IOMMUFD_PAGE_RESP_SUCCESS,
        PageRespCode::Invalid | PageRespCode::Failure => {
            b::iommufd_page_response_code_IOMMUFD_PAGE_RESP_INVALID
        }
    };
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&cookie.to_ne_bytes());
    out[4..].copy_from_slice(&code.to_ne_bytes());
    out
}

/// Key of a pending group: (endpoint, PASID, group ID).
type GroupKey = (u32, Option<u32>, u16);

/// A fault queue object and the groups waiting for the guest's answer.
#[derive(Debug)]
pub struct FaultQueue {
    id: u32,
    file: File,
    cookies: BTreeMap<GroupKey, u32>,
    ready: VecDeque<Event>,
}

impl FaultQueue {
    /// Wraps a queue allocated with `IOMMU_FAULT_QUEUE_ALLOC` (fd already non-blocking).
    #[must_use]
    pub fn new(id: u32, file: File) -> Self {
        FaultQueue {
            id,
            file,
            cookies: BTreeMap::new(),
            ready: VecDeque::new(),
        }
    }

    /// The iommufd object ID (for `IOMMU_HWPT_ALLOC`'s `fault_id`).
    #[must_use]
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The pollable fd (EPOLLIN when page requests are pending).
    #[must_use]
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The next page request, reading the fd when nothing is buffered. `endpoint_of` maps an
    /// iommufd device ID to its endpoint.
    pub fn next_event(&mut self, endpoint_of: impl Fn(u32) -> Option<u32>) -> Option<Event> {
        if self.ready.is_empty() {
            self.fill(&endpoint_of);
        }
        self.ready.pop_front()
    }

    fn fill(&mut self, endpoint_of: &impl Fn(u32) -> Option<u32>) {
        let mut buf = [0u8; RECORD_SIZE * BATCH];
        let n = match self.file.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                warn!("reading the iommufd fault queue failed: {e}");
                return;
            }
        };
        for chunk in buf[..n].chunks_exact(RECORD_SIZE) {
            let mut rec = [0u8; RECORD_SIZE];
            rec.copy_from_slice(chunk);
            let f = PgFault::decode(&rec);
            let req = endpoint_of(f.dev_id).and_then(|ep| f.to_page_request(ep));
            let Some(req) = req else {
                warn!("page request {f:?} from an unknown device or with a wide group ID: answering INVALID");
                self.write_response(f.cookie, PageRespCode::Invalid);
                continue;
            };
            let key = (req.endpoint, req.pasid, req.group_id);
            if self.cookies.len() >= MAX_PENDING_GROUPS && !self.cookies.contains_key(&key) {
                warn!("too many pending page-request groups: answering {f:?} INVALID");
                self.write_response(f.cookie, PageRespCode::Invalid);
                continue;
            }
            if let Some(old) = self.cookies.insert(key, f.cookie) {
                if old != f.cookie {
                    debug!(
                        "group {key:?} reused: cookie {old} replaced by {}",
                        f.cookie
                    );
                }
            }
            self.ready.push_back(Event::PageRequest(req));
        }
    }

    fn write_response(&mut self, cookie: u32, code: PageRespCode) -> bool {
        match self.file.write(&encode_response(cookie, code)) {
            Ok(8) => true,
            Ok(n) => {
                warn!("short page-response write ({n} bytes) for cookie {cookie}");
                false
            }
            Err(e) => {
                warn!("page response for cookie {cookie} refused: {e}");
                false
            }
        }
    }

    /// Answers the group (endpoint, PASID, group ID) and forgets it.
    ///
    /// # Errors
    /// `Invalid` for an unknown (or stale) group, `Failed` if the kernel refused the response.
    pub fn respond(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        group_id: u16,
        code: PageRespCode,
    ) -> Result<(), HostError> {
        let cookie = self
            .cookies
            .remove(&(endpoint, pasid, group_id))
            .ok_or(HostError::Invalid)?;
        if code == PageRespCode::Failure {
            warn!("PAGE_RESP FAILURE for endpoint {endpoint} group {group_id}: iommufd cannot send Response Failure, sending INVALID");
        }
        if self.write_response(cookie, code) {
            Ok(())
        } else {
            Err(HostError::Failed)
        }
    }

    /// Drops the pending groups (and undelivered requests) of `endpoint`: the kernel has
    /// answered them itself because the endpoint's translation changed.
    pub fn forget_endpoint(&mut self, endpoint: u32) {
        self.cookies.retain(|k, _| k.0 != endpoint);
        self.ready
            .retain(|e| !matches!(e, Event::PageRequest(p) if p.endpoint == endpoint));
    }

    /// Number of groups waiting for an answer.
    #[must_use]
    pub fn pending_groups(&self) -> usize {
        self.cookies.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(
        flags: u32,
        dev: u32,
        pasid: u32,
        grp: u32,
        perm: u32,
        addr: u64,
        cookie: u32,
    ) -> [u8; 40] {
        let mut r = [0u8; 40];
        for (at, v) in [
            (0, flags),
            (4, dev),
            (8, pasid),
            (12, grp),
            (16, perm),
            (36, cookie),
        ] {
            r[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        }
        r[24..32].copy_from_slice(&addr.to_ne_bytes());
        r
    }

    #[test]
    fn decodes_a_kernel_record() {
        // The record the 7.2 selftest mock produced for TRIGGER_IOPF(pasid 1, grpid 2, R|W).
        let f = PgFault::decode(&record(3, 5, 1, 2, 3, 0xdead_beaf, 1));
        assert_eq!(
            f,
            PgFault {
                flags: 3,
                dev_id: 5,
                pasid: 1,
                grpid: 2,
                perm: 3,
                addr: 0xdead_beaf,
                cookie: 1
            }
        );
        let p = f.to_page_request(9).unwrap();
        assert_eq!(
            p,
            PageRequest {
                endpoint: 9,
                pasid: Some(1),
                address: 0xdead_beaf,
                access: FaultFlags::READ | FaultFlags::WRITE,
                group_id: 2,
                last: true,
                private_data: None,
            }
        );
    }

    #[test]
    fn no_pasid_exec_priv_and_wide_groups() {
        let p = PgFault::decode(&record(0, 1, 77, 0x1ff, 4 | 8, 0x1000, 3))
            .to_page_request(1)
            .unwrap();
        assert_eq!(p.pasid, None);
        assert!(!p.last);
        assert_eq!(p.access, FaultFlags::EXEC | FaultFlags::PRIV);
        assert_eq!(p.group_id, 0x1ff);
        assert!(PgFault::decode(&record(2, 1, 0, 0x1_0000, 1, 0, 3))
            .to_page_request(1)
            .is_none());
    }

    #[test]
    fn responses_encode_failure_as_invalid() {
        let le = |c: u32, code: u32| {
            let mut o = [0u8; 8];
            o[..4].copy_from_slice(&c.to_ne_bytes());
            o[4..].copy_from_slice(&code.to_ne_bytes());
            o
        };
        assert_eq!(encode_response(7, PageRespCode::Success), le(7, 0));
        assert_eq!(encode_response(7, PageRespCode::Invalid), le(7, 1));
        assert_eq!(encode_response(7, PageRespCode::Failure), le(7, 1));
    }

    /// The queue logic against a socket pair standing in for the (bidirectional) fault fd.
    #[test]
    fn queue_reads_maps_and_answers() {
        let (ours, mut kernel) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut q = FaultQueue::new(4, File::from(std::os::fd::OwnedFd::from(ours)));
        assert!(
            q.next_event(|_| Some(1)).is_none(),
            "empty non-blocking queue"
        );
        kernel
            .write_all(&record(2, 5, 0, 6, 1, 0x2000, 11))
            .unwrap();
        kernel
            .write_all(&record(2, 99, 0, 6, 1, 0x3000, 12))
            .unwrap();
        let ev = q.next_event(|d| (d == 5).then_some(40)).unwrap();
        let Event::PageRequest(p) = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(
            (p.endpoint, p.group_id, p.address, p.last),
            (40, 6, 0x2000, true)
        );
        assert_eq!(
            q.pending_groups(),
            1,
            "the unknown device's group was not remembered"
        );
        assert!(q.next_event(|_| None).is_none());
        q.respond(40, None, 6, PageRespCode::Failure).unwrap();
        assert_eq!(
            q.respond(40, None, 6, PageRespCode::Success),
            Err(HostError::Invalid)
        );
        // The unknown device's group was answered INVALID at once, then the FAILURE as INVALID.
        let mut got = [0u8; 16];
        kernel.read_exact(&mut got).unwrap();
        assert_eq!(got[..8], encode_response(12, PageRespCode::Invalid));
        assert_eq!(got[8..], encode_response(11, PageRespCode::Invalid));
        q.cookies.insert((40, None, 1), 3);
        q.cookies.insert((41, None, 1), 4);
        q.forget_endpoint(40);
        assert_eq!(
            q.cookies.keys().copied().collect::<Vec<_>>(),
            vec![(41, None, 1)]
        );
    }
}
