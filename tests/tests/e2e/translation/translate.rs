//! TRANSLATE answered from the engine: whole mappings with their permissions, identity for
//! bypass and MSI, faults (queued for the guest unless NO_FAULT), INVAL and UNSUPP.

use super::Tvm;
use crate::daemon::vm::*;
use serde_json::json;
use virtio_iommu_spec::event::{FaultFlags, FaultReason};
use virtio_iommu_spec::request::MapFlags;
use virtio_iommu_spec::translation::{
    ClientMessage, Endpoints, HelloReplyFlags, Pasids, Translate, TranslateFault, TranslateFlags,
    TranslateReply, TranslateStatus, TranslatedRange, TranslatedRanges,
};
use virtio_iommu_spec::Status;

const R: TranslateFlags = TranslateFlags::READ;
const W: TranslateFlags = TranslateFlags::WRITE;
const RW: MapFlags = MapFlags::READ.union(MapFlags::WRITE);

fn ok(tag: u64, ranges: &[(u64, u64, u64, MapFlags)]) -> TranslateReply {
    let mut r = TranslatedRanges::new();
    for &(iova, last, paddr, perm) in ranges {
        assert!(r.push(TranslatedRange {
            iova,
            last,
            paddr,
            perm
        }));
    }
    TranslateReply::ok(tag, r)
}

fn fault(tag: u64, reason: FaultReason, flags: FaultFlags, address: u64) -> TranslateReply {
    TranslateReply::fault(
        tag,
        TranslateFault {
            reason,
            flags: flags | FaultFlags::ADDRESS,
            address,
        },
    )
}

/// The 24-byte fault record the guest gets.
fn record(reason: u8, flags: u32, endpoint: u32, address: u64) -> Vec<u8> {
    let mut r = vec![reason, 0, 0, 0];
    r.extend_from_slice(&flags.to_le_bytes());
    r.extend_from_slice(&endpoint.to_le_bytes());
    r.extend_from_slice(&[0; 4]);
    r.extend_from_slice(&address.to_le_bytes());
    r
}

#[test]
fn translations_of_every_kind_of_endpoint() {
    let mut t = Tvm::start(&["--endpoints", "0-0xff"]);
    let gpa = memory().alloc_pages(32).unwrap();
    let ro = memory().alloc_pages(1).unwrap();
    // Set up before any client connects: nothing to invalidate yet.
    for req in [
        attach(1, 8),
        map(1, 0x10000, 0x1ffff, gpa),
        map(1, 0x20000, 0x20fff, gpa + 0x10000),
        map_flags(1, 0x40000, 0x40fff, ro, MapFlags::READ),
        attach_bypass(2, 10),
    ] {
        assert_eq!(t.vm.send(&req), Status::Ok, "{req:?}");
    }
    let mut c = t.raw_client();
    let hello = c.hello(&[(0, 0xffff)]).unwrap();
    assert_eq!(hello.page_size_mask, 0xffff_ffff_ffff_f000);
    assert_eq!(hello.flags, HelloReplyFlags::empty());

    // A whole mapping, with its permissions.
    let r = c.translate(8, None, 0x10000, 0x1000, R).unwrap();
    assert_eq!(r, ok(r.tag, &[(0x10000, 0x1ffff, gpa, RW)]));
    // An access across two mappings: two contiguous ranges.
    let r = c.translate(8, None, 0x1f000, 0x2000, W).unwrap();
    assert_eq!(
        r,
        ok(
            r.tag,
            &[
                (0x10000, 0x1ffff, gpa, RW),
                (0x20000, 0x20fff, gpa + 0x10000, RW)
            ]
        )
    );
    // Past the second mapping: the first ranges, the client asks again for the rest.
    let r = c.translate(8, None, 0x20000, 0x2000, R).unwrap();
    assert_eq!(r, ok(r.tag, &[(0x20000, 0x20fff, gpa + 0x10000, RW)]));

    // Unmapped: MAPPING, and the same fault in the guest's event buffer.
    t.vm.post_event_buffer(24);
    let r = c.translate(8, None, 0x30008, 4, R).unwrap();
    assert_eq!(
        r,
        fault(r.tag, FaultReason::Mapping, FaultFlags::READ, 0x30008)
    );
    let ev = t.vm.eq.wait_used(WAIT).unwrap();
    assert_eq!(ev.written, record(2, 0x101, 8, 0x30008));
    // NO_FAULT: the same answer, nothing for the guest.
    t.vm.post_event_buffer(24);
    let r = c
        .translate(8, None, 0x30008, 4, R | TranslateFlags::NO_FAULT)
        .unwrap();
    assert_eq!(
        r,
        fault(r.tag, FaultReason::Mapping, FaultFlags::READ, 0x30008)
    );
    t.vm.eq.expect_no_used(QUIET).unwrap();

    // Read-only mapping: a write faults (the record goes to the buffer still posted), a read
    // is translated with READ only.
    let r = c.translate(8, None, 0x40000, 8, W).unwrap();
    assert_eq!(
        r,
        fault(r.tag, FaultReason::Mapping, FaultFlags::WRITE, 0x40000)
    );
    assert_eq!(
        t.vm.eq.wait_used(WAIT).unwrap().written,
        record(2, 0x102, 8, 0x40000)
    );
    let r = c.translate(8, None, 0x40000, 8, R).unwrap();
    assert_eq!(r, ok(r.tag, &[(0x40000, 0x40fff, ro, MapFlags::READ)]));

    // The MSI window passes untranslated.
    let r = c.translate(8, None, 0xfee0_0000, 4, W).unwrap();
    assert_eq!(r, ok(r.tag, &[(0xfee0_0000, 0xfeef_ffff, 0xfee0_0000, RW)]));
    // A bypass domain and an unattached endpoint while bypass is on: identity.
    for ep in [10, 9] {
        let r = c.translate(ep, None, 0x1234_5000, 8, R | W).unwrap();
        assert_eq!(r, ok(r.tag, &[(0, u64::MAX, 0, RW)]), "endpoint {ep}");
    }
    // Bypass off: every client drops everything, unattached endpoints fault with DOMAIN.
    t.vm.fe.set_config(36, &[0]).unwrap();
    let inv = c.next_invalidate().unwrap();
    assert_eq!(
        (inv.seq, inv.endpoints, inv.pasids, inv.first, inv.last),
        (1, Endpoints::All, Pasids::All, 0, u64::MAX)
    );
    c.ack(1).unwrap();
    let r = c.translate(9, None, 0x5000, 1, W).unwrap();
    assert_eq!(
        r,
        fault(r.tag, FaultReason::Domain, FaultFlags::WRITE, 0x5000)
    );

    // An endpoint that is not behind this IOMMU: UNSUPP.
    let r = c.translate(0x100, None, 0, 1, R).unwrap();
    assert_eq!(r, TranslateReply::refused(r.tag, TranslateStatus::Unsupp));
    // Malformed: INVAL, whatever the state.
    let inval = |c: &mut virtio_iommu_e2e::TranslationClient, t: Translate| {
        c.send(&ClientMessage::Translate(t)).unwrap();
        assert_eq!(
            c.reply(t.tag).unwrap(),
            TranslateReply::refused(t.tag, TranslateStatus::Inval),
            "{t:?}"
        );
    };
    let good = Translate {
        tag: 100,
        iova: 0x10000,
        len: 1,
        endpoint: 8,
        pasid: 0,
        flags: R,
    };
    inval(&mut c, Translate { len: 0, ..good });
    inval(
        &mut c,
        Translate {
            tag: 101,
            iova: u64::MAX,
            len: 2,
            ..good
        },
    );
    inval(
        &mut c,
        Translate {
            tag: 102,
            flags: TranslateFlags::EXEC,
            ..good
        },
    );
    inval(
        &mut c,
        Translate {
            tag: 103,
            flags: TranslateFlags::from_bits_retain(R.bits() | 1 << 6),
            ..good
        },
    );
    // Outside the client's HELLO ranges.
    let mut narrow = t.client(8, 8);
    inval(
        &mut narrow,
        Translate {
            tag: 104,
            endpoint: 9,
            ..good
        },
    );
    let r = narrow.translate(8, None, 0x10000, 1, R).unwrap();
    assert_eq!(r.status, TranslateStatus::Ok);

    let s = t.tstats();
    assert_eq!(s["translate_ok"], json!(8), "{s}");
    // The config write invalidated, but nothing waited for it.
    assert_eq!(
        (&s["invalidates"], &s["held"]),
        (&json!(1), &json!(0)),
        "{s}"
    );
    assert_eq!(s["translate_fault"], json!(4), "{s}");
    assert_eq!(s["translate_inval"], json!(5), "{s}");
    assert_eq!(s["translate_unsupp"], json!(1), "{s}");
    assert_eq!(s["clients"], json!(2), "{s}");
}
