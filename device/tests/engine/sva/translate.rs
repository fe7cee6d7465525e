//! vSVA through the engine with both table formats (SMMUv3 + AArch64, VT-d 4- and 5-level):
//! DMA through a bound PASID table lands at the right guest-physical bytes, page requests are
//! raised, answered and retried, INVALID fails the DMA with the right record, the stage-1 IOTLB
//! serves stale translations until INVALIDATE, and PASIDs have separate tables.

use std::time::Instant;

use super::guest::*;
use crate::common::{attach, send};
use vhost_device_iommu::engine::{DmaAttrs, DmaOp, DmaOutcome, DmaRequest, DmaTicket, Engine};
use virtio_iommu_spec::event::{FaultFlags, FaultReason};
use virtio_iommu_spec::ext::{InvalCaches, InvalScope, PageRespCode, S1DSS_SSID0, S1FMT_LINEAR};
use virtio_iommu_spec::{FaultEvent, Status};

fn dma(v: &mut Engine, ep: u32, pasid: Option<u32>, iova: u64, op: DmaOp) -> DmaOutcome {
    v.device_dma().start(
        DmaRequest {
            endpoint: ep,
            pasid,
            iova,
            op,
            attrs: DmaAttrs::default(),
        },
        Instant::now(),
    )
}

fn write(v: &mut Engine, ep: u32, pasid: u32, iova: u64, data: &[u8]) -> DmaOutcome {
    dma(v, ep, Some(pasid), iova, DmaOp::Write(data.to_vec()))
}

fn pending(o: DmaOutcome) -> DmaTicket {
    match o {
        DmaOutcome::Pending(t) => t,
        other => panic!("expected Pending, got {other:?}"),
    }
}

/// The 48-byte page request the device must queue (built by hand, not with the encoder).
fn page_request_bytes(ep: u32, pasid: u32, addr: u64, gid: u16, flags: u32) -> Vec<u8> {
    let mut b = vec![2, 0, 0, 0];
    b.extend(flags.to_le_bytes());
    b.extend(ep.to_le_bytes());
    b.extend(pasid.to_le_bytes());
    b.extend(addr.to_le_bytes());
    b.extend(gid.to_le_bytes());
    b.extend([0u8; 22]);
    b
}

/// WRITE | LAST | PAGE_REQ | ADDRESS | PASID | GROUP_ID.
const PR_WRITE: u32 = 0x2 | 0x10 | 0x20 | 0x100 | 0x200 | 0x400;

#[test]
fn mapped_dma_lands_at_the_right_gpa() {
    for fmt in FORMATS {
        let mut s = Sva::new(fmt, 0);
        let pt = s.bind(1);
        let va = 0x7f12_3456_7000u64;
        pt.map(&mut s.g, va, 0x20_3000);
        pt.map(&mut s.g, va + 0x1000, 0x10_5000);
        let data: Vec<u8> = (0..0x300u32).map(|i| (i * 7).to_le_bytes()[0]).collect();
        assert_eq!(
            write(&mut s.v, 0, 1, va + 0xe80, &data),
            DmaOutcome::Done(vec![]),
            "{fmt:?}"
        );
        assert_eq!(s.g.read(0x20_3e80, 0x180), data[..0x180], "{fmt:?}");
        assert_eq!(s.g.read(0x10_5000, 0x180), data[0x180..], "{fmt:?}");
        assert_eq!(s.g.read(0x20_3e7f, 1), vec![0]);
        let back = dma(&mut s.v, 0, Some(1), va + 0xe80, DmaOp::Read(0x300));
        assert_eq!(back, DmaOutcome::Done(data), "{fmt:?}");
        assert!(!s.v.has_events());
        // The walk read guest memory, so a mapped-but-outside-RAM output faults UNKNOWN.
        pt.map(&mut s.g, va + 0x2000, RAM_SIZE);
        let f = write(&mut s.v, 0, 1, va + 0x2000, &[1]);
        let DmaOutcome::Fault(f) = f else {
            panic!("{f:?}")
        };
        assert_eq!(
            (f.reason, f.address),
            (FaultReason::Unknown, Some(va + 0x2000))
        );
    }
}

#[test]
fn page_request_then_success_completes_the_dma() {
    for fmt in FORMATS {
        let mut s = Sva::new(fmt, 2);
        let pt = s.bind(1);
        let va = 0x1234_5010;
        let t = pending(write(&mut s.v, 2, 1, va, &[1, 2, 3, 4]));
        let ev = s.v.pop_event(48).unwrap();
        assert_eq!(
            ev.as_bytes(),
            &page_request_bytes(2, 1, 0x1234_5000, 0, PR_WRITE)[..],
            "{fmt:?}"
        );
        assert_eq!(s.v.outstanding_page_requests(2), 1);
        // Nothing answered yet: still waiting.
        assert_eq!(
            s.v.device_dma().resume(t, Instant::now()),
            Some(DmaOutcome::Pending(t))
        );
        // The guest maps the page, invalidates and answers.
        pt.map(&mut s.g, va, 0x30_0000);
        assert_eq!(s.flush_page(1, va), Status::Ok);
        assert_eq!(
            page_resp(&mut s.v, 2, Some(1), 0, PageRespCode::Success),
            Status::Ok
        );
        assert_eq!(s.v.outstanding_page_requests(2), 0);
        assert_eq!(
            s.v.device_dma().resume(t, Instant::now()),
            Some(DmaOutcome::Done(vec![]))
        );
        assert_eq!(s.g.read(0x30_0010, 4), vec![1, 2, 3, 4], "{fmt:?}");
        assert_eq!(s.v.device_dma().resume(t, Instant::now()), None);
        // The group is complete: answering again is stale.
        assert_eq!(
            page_resp(&mut s.v, 2, Some(1), 0, PageRespCode::Success),
            Status::Inval
        );
        let c = s.v.stats().page_requests;
        assert_eq!((c.raised, c.success, c.outstanding), (1, 1, 0));
        assert!(!s.v.has_events());
    }
}

#[test]
fn success_without_a_fix_raises_a_new_request() {
    for fmt in FORMATS {
        let mut s = Sva::new(fmt, 0);
        let pt = s.bind(3);
        // Read-only page: the write asks for write permission.
        pt.map_bits(&mut s.g, 0x5000, 0x30_0000, fmt.page_bits(false));
        let t = pending(write(&mut s.v, 0, 3, 0x5008, &[9]));
        let ev = s.v.pop_event(48).unwrap();
        assert_eq!(
            ev.as_bytes(),
            &page_request_bytes(0, 3, 0x5000, 0, PR_WRITE)[..]
        );
        assert_eq!(
            page_resp(&mut s.v, 0, None, 0, PageRespCode::Success),
            Status::Ok
        );
        // Still read-only: a new group.
        let t2 = pending(s.v.device_dma().resume(t, Instant::now()).unwrap());
        let ev = s.v.pop_event(48).unwrap();
        assert_eq!(
            ev.as_bytes(),
            &page_request_bytes(0, 3, 0x5000, 1, PR_WRITE)[..]
        );
        // Now writable (a permission upgrade needs no invalidation: faults are not cached).
        pt.map(&mut s.g, 0x5000, 0x30_0000);
        assert_eq!(
            page_resp(&mut s.v, 0, Some(3), 1, PageRespCode::Success),
            Status::Ok
        );
        assert_eq!(
            s.v.device_dma().resume(t2, Instant::now()),
            Some(DmaOutcome::Done(vec![]))
        );
        assert_eq!(s.g.read(0x30_0008, 1), vec![9], "{fmt:?}");
    }
}

#[test]
fn invalid_response_fails_the_dma_with_its_fault_record() {
    for fmt in FORMATS {
        let mut s = Sva::new(fmt, 1);
        s.bind(5);
        let va = 0x4000_0123;
        let t = pending(write(&mut s.v, 1, 5, va, &[1]));
        s.v.pop_event(48).unwrap();
        assert_eq!(
            page_resp(&mut s.v, 1, Some(5), 0, PageRespCode::Invalid),
            Status::Ok
        );
        let want = FaultEvent {
            reason: FaultReason::Mapping,
            access: FaultFlags::WRITE,
            endpoint: 1,
            address: Some(va),
            pasid: Some(5),
        };
        assert_eq!(
            s.v.device_dma().resume(t, Instant::now()),
            Some(DmaOutcome::Fault(want))
        );
        let mut rec = vec![2, 0, 0, 0];
        rec.extend(0x302u32.to_le_bytes()); // WRITE | ADDRESS | PASID
        rec.extend(1u32.to_le_bytes());
        rec.extend(5u32.to_le_bytes());
        rec.extend(va.to_le_bytes());
        rec.extend([0u8; 24]);
        assert_eq!(s.v.pop_event(48).unwrap().as_bytes(), &rec[..], "{fmt:?}");
        // The same fault on a 24-byte buffer is the upstream record (no PASID).
        let t = pending(write(&mut s.v, 1, 5, va, &[1]));
        s.v.pop_event(48).unwrap();
        assert_eq!(
            page_resp(&mut s.v, 1, Some(5), 1, PageRespCode::Invalid),
            Status::Ok
        );
        s.v.device_dma().resume(t, Instant::now()).unwrap();
        let legacy = s.v.pop_event(24).unwrap();
        assert_eq!(legacy.as_bytes(), &want.encode_legacy()[..]);
        assert_eq!(s.v.stats().page_requests.invalid, 2);
    }
}

#[test]
fn failure_stops_page_requests_until_reset() {
    for fmt in FORMATS {
        let mut s = Sva::new(fmt, 0);
        s.bind(1);
        let t = pending(write(&mut s.v, 0, 1, 0x9000, &[1]));
        s.v.pop_event(48).unwrap();
        assert_eq!(
            page_resp(&mut s.v, 0, Some(1), 0, PageRespCode::Failure),
            Status::Ok
        );
        assert!(matches!(
            s.v.device_dma().resume(t, Instant::now()),
            Some(DmaOutcome::Fault(f)) if f.reason == FaultReason::Mapping
        ));
        s.v.pop_event(48).unwrap();
        // No more page requests from this endpoint: an immediate fault.
        let f = write(&mut s.v, 0, 1, 0x9000, &[1]);
        assert!(matches!(f, DmaOutcome::Fault(f) if f.address == Some(0x9000)));
        assert_eq!(s.v.stats().page_requests.refused, 1);
        // A device reset re-enables it (and drops the tables: bind again).
        s.v.reset();
        assert_eq!(attach(&mut s.v, 1, 0), Status::Ok);
        if fmt == Fmt::Arm {
            let d = arm_table(S1FMT_LINEAR, S1DSS_SSID0, s.cds, 8);
            assert_eq!(attach_table(&mut s.v, 1, 0, d), Status::Ok);
        } else {
            s.bind(1);
        }
        pending(write(&mut s.v, 0, 1, 0x9000, &[1]));
    }
}

#[test]
fn endpoints_without_page_requests_fault_at_once() {
    for fmt in FORMATS {
        let mut s = Sva::new(fmt, 4);
        s.bind(1);
        let f = write(&mut s.v, 4, 1, 0x9000, &[1]);
        let want = FaultEvent {
            reason: FaultReason::Mapping,
            access: FaultFlags::WRITE,
            endpoint: 4,
            address: Some(0x9000),
            pasid: Some(1),
        };
        assert_eq!(f, DmaOutcome::Fault(want));
        assert_eq!(
            s.v.pop_event(48).unwrap().as_bytes(),
            &want.encode_ext()[..]
        );
        assert_eq!(s.v.stats().page_requests.raised, 0);
    }
}

#[test]
fn stale_iotlb_until_invalidate() {
    for fmt in FORMATS {
        let mut s = Sva::new(fmt, 0);
        let pt = s.bind(1);
        let pt2 = s.bind(2);
        let va = 0x6000;
        pt.map(&mut s.g, va, 0x30_0000);
        pt2.map(&mut s.g, va, 0x31_0000);
        assert_eq!(write(&mut s.v, 0, 1, va, &[0xaa]), DmaOutcome::Done(vec![]));
        // The guest moves the page and does not invalidate: the old translation stays.
        pt.map(&mut s.g, va, 0x32_0000);
        assert_eq!(write(&mut s.v, 0, 1, va, &[0xbb]), DmaOutcome::Done(vec![]));
        assert_eq!(s.g.read(0x30_0000, 1), vec![0xbb], "{fmt:?}");
        assert_eq!(s.g.read(0x32_0000, 1), vec![0]);
        // Invalidating another PASID, another range or only the PASID cache of another PASID
        // does not help.
        assert_eq!(s.flush_page(2, va), Status::Ok);
        assert_eq!(s.flush_page(1, va + 0x1000), Status::Ok);
        assert_eq!(
            invalidate(&mut s.v, 1, InvalCaches::empty(), InvalScope::Domain),
            Status::Ok
        );
        assert_eq!(write(&mut s.v, 0, 1, va, &[0xcc]), DmaOutcome::Done(vec![]));
        assert_eq!(s.g.read(0x30_0000, 1), vec![0xcc], "{fmt:?}");
        // The right range: the new page.
        assert_eq!(s.flush_page(1, va), Status::Ok);
        assert_eq!(write(&mut s.v, 0, 1, va, &[0xdd]), DmaOutcome::Done(vec![]));
        assert_eq!(s.g.read(0x32_0000, 1), vec![0xdd], "{fmt:?}");
        // Unmapping without invalidation still translates; a domain-wide one ends it.
        let leaf = pt.leaf(&mut s.g, va);
        s.g.put(leaf, 0);
        assert_eq!(write(&mut s.v, 0, 1, va, &[0xee]), DmaOutcome::Done(vec![]));
        assert_eq!(
            invalidate(&mut s.v, 1, InvalCaches::IOTLB, InvalScope::Domain),
            Status::Ok
        );
        pending(write(&mut s.v, 0, 1, va, &[0xff]));
        assert_eq!(s.g.read(0x32_0000, 1), vec![0xee]);
        // PASID 2 was never disturbed.
        assert_eq!(write(&mut s.v, 0, 2, va, &[0x11]), DmaOutcome::Done(vec![]));
        assert_eq!(s.g.read(0x31_0000, 1), vec![0x11]);
    }
}

#[test]
fn pasid_scope_invalidation() {
    for fmt in FORMATS {
        let mut s = Sva::new(fmt, 0);
        let pt = s.bind(7);
        pt.map(&mut s.g, 0x1000, 0x30_0000);
        assert_eq!(
            write(&mut s.v, 0, 7, 0x1000, &[1]),
            DmaOutcome::Done(vec![])
        );
        pt.map(&mut s.g, 0x1000, 0x33_0000);
        assert_eq!(
            invalidate(&mut s.v, 1, InvalCaches::DEV_IOTLB, InvalScope::Pasid(6)),
            Status::Ok
        );
        assert_eq!(
            write(&mut s.v, 0, 7, 0x1000, &[2]),
            DmaOutcome::Done(vec![])
        );
        assert_eq!(s.g.read(0x30_0000, 1), vec![2]);
        // DEV_IOTLB (ATS) is treated as the IOTLB.
        assert_eq!(
            invalidate(&mut s.v, 1, InvalCaches::DEV_IOTLB, InvalScope::Pasid(7)),
            Status::Ok
        );
        assert_eq!(
            write(&mut s.v, 0, 7, 0x1000, &[3]),
            DmaOutcome::Done(vec![])
        );
        assert_eq!(s.g.read(0x33_0000, 1), vec![3], "{fmt:?}");
    }
}

#[test]
fn two_pasids_have_their_own_tables() {
    for fmt in FORMATS {
        let mut s = Sva::new(fmt, 3);
        let a = s.bind(1);
        let b = s.bind(2);
        a.map(&mut s.g, 0x10_0000, 0x40_0000);
        b.map(&mut s.g, 0x10_0000, 0x41_0000);
        b.map(&mut s.g, 0x20_0000, 0x42_0000);
        assert_eq!(
            write(&mut s.v, 3, 1, 0x10_0004, b"one"),
            DmaOutcome::Done(vec![])
        );
        assert_eq!(
            write(&mut s.v, 3, 2, 0x10_0004, b"two"),
            DmaOutcome::Done(vec![])
        );
        assert_eq!(s.g.read(0x40_0004, 3), b"one");
        assert_eq!(s.g.read(0x41_0004, 3), b"two");
        // PASID 1 has no 0x200000; unbound PASIDs fault DOMAIN (VT-d) / no CD (Arm).
        pending(write(&mut s.v, 3, 1, 0x20_0000, b"x"));
        let f = write(&mut s.v, 3, 9, 0x10_0000, b"x");
        assert!(
            matches!(f, DmaOutcome::Fault(f) if f.reason == FaultReason::Domain),
            "{fmt:?}: {f:?}"
        );
    }
}

#[test]
fn dma_without_pasid_keeps_the_domain_mappings() {
    // VT-d binds per PASID: requests without PASID still use the MAP mappings. (Arm: see the
    // s1dss tests.)
    for fmt in [Fmt::Vtd(48), Fmt::Vtd(57)] {
        let mut s = Sva::new(fmt, 0);
        let pt = s.bind(1);
        pt.map(&mut s.g, 0x1000, 0x30_0000);
        let st = send(
            &mut s.v,
            virtio_iommu_spec::Request::Map(virtio_iommu_spec::request::Map {
                domain: 1,
                virt_start: 0x1000,
                virt_end: 0x1fff,
                phys_start: 0x50_0000,
                flags: virtio_iommu_spec::request::MapFlags::WRITE,
            }),
        );
        assert_eq!(st, Status::Ok);
        assert_eq!(
            dma(&mut s.v, 0, None, 0x1000, DmaOp::Write(vec![5])),
            DmaOutcome::Done(vec![])
        );
        assert_eq!(
            write(&mut s.v, 0, 1, 0x1000, &[6]),
            DmaOutcome::Done(vec![])
        );
        assert_eq!(s.g.read(0x50_0000, 1), vec![5]);
        assert_eq!(s.g.read(0x30_0000, 1), vec![6]);
    }
}
