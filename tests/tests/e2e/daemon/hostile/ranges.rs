//! Giant PASIDs, IDs and ranges at the edges of their fields: each gets the status
//! PROTOCOL.md gives it, DMA with them ends in the fault the tables give, nothing overflows.

use super::*;
use crate::driver::vm::{data_page, fault_json};
use serde_json::{json, Value};
use virtio_iommu_spec::ext::{
    InvalCaches, InvalScope, PageRespCode, VtdFlags, S1DSS_TERM, S1FMT_LINEAR,
};
use virtio_iommu_spec::Status;
use virtio_iommu_testkit::memory::{GLOBAL_BASE, GLOBAL_SIZE};

const TOP_PASID: u32 = (1 << 20) - 1;
const TOP_DOMAIN: u32 = u32::MAX;
const TOP_EP: u32 = 0xffff;
const ARM_EP: u32 = 0xfffe;
const ARM_OUTSIDE_EP: u32 = 0xfffd;
/// Past the end of guest RAM.
const PAST_RAM: u64 = GLOBAL_BASE + GLOBAL_SIZE;
const TOP_PAGE: u64 = u64::MAX - 0xfff;

fn read(vm: &mut Vm, endpoint: u32, pasid: Option<u32>, iova: u64, len: u64) -> Value {
    vm.ctl
        .cmd(
            "dma-read",
            json!({"endpoint": endpoint, "pasid": pasid, "iova": iova, "len": len}),
        )
        .expect("control reply")
}

fn range(start: u64, nr_pages: u64) -> InvalScope {
    InvalScope::Range {
        pasid: Some(TOP_PASID),
        start,
        nr_pages,
        granule: 12,
    }
}

#[test]
fn giant_ids_pasids_and_ranges() {
    let mut vm = Vm::start_logging("info", &["--pasid-bits", "20"]);
    // IDs: the top domain exists, endpoints past the configured ones do not.
    assert_eq!(vm.send(&attach(TOP_DOMAIN, TOP_EP)), Status::Ok);
    assert_eq!(vm.send(&attach(TOP_DOMAIN, ARM_EP)), Status::Ok);
    assert_eq!(vm.send(&attach(TOP_DOMAIN, ARM_OUTSIDE_EP)), Status::Ok);
    for ep in [0x1_0000, u32::MAX] {
        assert_eq!(vm.send(&attach(TOP_DOMAIN, ep)), Status::NoEnt);
        let r = page_resp(ep, None, 0, PageRespCode::Success);
        assert_eq!(vm.send(&r), Status::NoEnt);
    }

    // PASIDs: up to 2^20 − 1 (PROBE's PASID_SIZE), not beyond.
    let vtd = |pasid| vtd_table(pasid, 48, 0x1000, VtdFlags::empty());
    assert_eq!(
        vm.send(&attach_table(TOP_DOMAIN, TOP_EP, vtd(TOP_PASID))),
        Status::Ok
    );
    for pasid in [1 << 20, u32::MAX] {
        let r = attach_table(TOP_DOMAIN, TOP_EP, vtd(pasid));
        assert_eq!(vm.send(&r), Status::Inval, "PASID {pasid:#x}");
    }
    let arm = |ptr, s1cdmax| arm_table(S1FMT_LINEAR, S1DSS_TERM, ptr, s1cdmax);
    let cds = data_page(0);
    let r = attach_table(TOP_DOMAIN, ARM_EP, arm(cds, 21));
    assert_eq!(vm.send(&r), Status::Inval);
    for (ep, ptr) in [(ARM_EP, cds), (ARM_OUTSIDE_EP, PAST_RAM)] {
        assert_eq!(
            vm.send(&attach_table(TOP_DOMAIN, ep, arm(ptr, 20))),
            Status::Ok
        );
    }
    assert_eq!(vm.stats()["tables"], json!(3));
    // DMA with them: tables outside RAM fault UNKNOWN; a CD of zeros (the 2^20 CDs of a
    // table in RAM read as zeros where nothing was written) is no context (DOMAIN), and so is
    // a PASID past the table or an unbound one.
    let f = |reason, ep, pasid| json!({"ok": true, "fault": fault_json(reason, 1, ep, TOP_PAGE, pasid)});
    for (ep, pasid, reason) in [
        (TOP_EP, TOP_PASID, "unknown"),
        (TOP_EP, TOP_PASID - 1, "domain"),
        (ARM_OUTSIDE_EP, TOP_PASID, "unknown"),
        (ARM_OUTSIDE_EP, 0, "unknown"),
        (ARM_EP, 0, "domain"),
        (ARM_EP, 1 << 20, "domain"),
        (ARM_EP, u32::MAX, "domain"),
    ] {
        let r = read(&mut vm, ep, Some(pasid), TOP_PAGE, 8);
        assert_eq!(
            r,
            f(reason, ep, Some(pasid)),
            "endpoint {ep:#x} PASID {pasid:#x}"
        );
    }
    assert_eq!(vm.stats()["page_requests"]["raised"], json!(0));

    // INVALIDATE ranges: none, past 2^64, the last page.
    let inv = |scope| invalidate(TOP_DOMAIN, InvalCaches::IOTLB, scope);
    assert_eq!(vm.send(&inv(range(0, 0))), Status::Inval);
    assert_eq!(vm.send(&inv(range(0, u64::MAX))), Status::Range);
    assert_eq!(vm.send(&inv(range(TOP_PAGE, 2))), Status::Range);
    assert_eq!(vm.send(&inv(range(TOP_PAGE, 1))), Status::Ok);
    assert_eq!(vm.send(&inv(InvalScope::Pasid(u32::MAX))), Status::Ok);
    // PAGE_RESP for groups that never existed.
    for pasid in [None, Some(TOP_PASID), Some(u32::MAX)] {
        let r = page_resp(TOP_EP, pasid, u16::MAX, PageRespCode::Success);
        assert_eq!(vm.send(&r), Status::Inval);
    }

    // MAP and UNMAP at the top of the address spaces.
    let d = TOP_DOMAIN;
    assert_eq!(vm.send(&map(d, TOP_PAGE, u64::MAX, TOP_PAGE)), Status::Ok);
    assert_eq!(vm.send(&map(d, 0, 0xfff, TOP_PAGE)), Status::Ok);
    assert_eq!(vm.send(&map(d, 0x1000, 0x2fff, TOP_PAGE)), Status::Range);
    assert_eq!(vm.send(&map(d, 0x3000, 0x3fff, u64::MAX)), Status::Range);
    assert_eq!(vm.send(&map(d, 0x5000, 0x4fff, 0)), Status::Inval);
    assert_eq!(vm.send(&map(d, 0x5000, u64::MAX, 0)), Status::Inval);
    let t = vm.cmd(
        "translate",
        json!({"endpoint": TOP_EP, "iova": TOP_PAGE, "len": u64::MAX}),
    );
    assert_eq!(t["translation"], json!({"gpa": TOP_PAGE, "len": 0x1000}));
    // A read running off the top of the input space, and one of the top page (translated,
    // but past guest RAM).
    let r = read(&mut vm, TOP_EP, None, u64::MAX - 3, 8);
    assert_eq!(r["fault"]["reason"], json!("unknown"), "{r}");
    let r = read(&mut vm, TOP_EP, None, TOP_PAGE, 1 << 20);
    assert_eq!(r["fault"]["reason"], json!("unknown"), "{r}");
    let r = read(&mut vm, TOP_EP, None, 0, (1 << 20) + 1);
    assert_eq!(r["ok"], json!(false), "{r}");
    assert_eq!(vm.send(&unmap(d, 0, u64::MAX)), Status::Ok);
    assert_eq!(vm.stats()["mappings"], json!(0));
    vm.assert_alive();
}
