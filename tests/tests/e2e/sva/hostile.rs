//! A hostile guest through the real daemon and its socket: table pointers outside guest RAM,
//! self-referencing tables, and a flood of page requests nobody answers. Every DMA ends with
//! an exact, bounded outcome and the daemon keeps serving.

use std::thread;
use std::time::{Duration, Instant};

use super::guest::*;
use crate::driver::vm::*;
use serde_json::{json, Value};
use virtio_iommu_driver::sva::{PageRequestGroups, X86Levels};
use virtio_iommu_driver::{AttachFlags, Error, PageRespCode, TableDesc};
use virtio_iommu_spec::ext::{VtdFlags, S1DSS_TERM, S1FMT_4KL2, S1FMT_LINEAR};
use virtio_iommu_spec::formats::{aarch64, cd_table, x86};
use virtio_iommu_testkit::GuestMemory;

/// A guest-physical address below guest RAM (which starts at 1 GiB): nothing is there.
const OUTSIDE_RAM: u64 = 0x1000;

// Descriptor bits the tests write by hand (spec/PROTOCOL.md §9.6).
/// x86 table entry: P | R/W | U/S | A.
const X86_TABLE: u64 = x86::P | x86::RW | x86::US | x86::A;
/// AArch64 table descriptor (L0–L2) or page descriptor (L3): valid | table-or-page.
const ARM_TABLE_OR_PAGE: u64 = aarch64::VALID | aarch64::TABLE_OR_PAGE;
/// AArch64 leaf: access flag, and AP[1] (unprivileged access).
const ARM_AF_USER: u64 = aarch64::AF | aarch64::AP_EL0;
/// CD word 0: T0SZ 16 (48-bit input), V, AA64, ASID 1.
const CD_WORD0: u64 = 16 | cd_table::CD0_V | cd_table::CD0_AA64 | (1 << cd_table::CD0_ASID_SHIFT);

fn write_u64(gpa: u64, v: u64) {
    GuestMemory::global()
        .write(gpa, &v.to_le_bytes())
        .expect("guest write");
}

/// A linear CD table whose CD 1 points at `ttb0`.
fn cd_table_with_cd1(ttb0: u64) -> TableDesc {
    let cds = data_page(0);
    write_u64(cds + 64, CD_WORD0);
    write_u64(cds + 64 + 8, ttb0);
    TableDesc::ArmSmmuV3 {
        s1fmt: S1FMT_LINEAR,
        s1dss: S1DSS_TERM,
        s1contextptr: cds,
        s1cdmax: 4,
    }
}

fn vtd(pgd: u64, levels: X86Levels) -> TableDesc {
    TableDesc::Vtd {
        pasid: 1,
        addr_width: levels.addr_width(),
        pgd,
        flags: VtdFlags::empty(),
    }
}

fn assert_alive(vm: &mut Vm) {
    assert!(vm.daemon.try_wait().unwrap().is_none(), "daemon exited");
    assert_eq!(vm.ctl("stats", Value::Null)["ok"], json!(true));
}

#[test]
fn tables_outside_ram_fault_unknown() {
    let mut vm = Vm::start(&["--pasid-bits", "16"], true);
    let va = 0x7f00_0000u64;
    let unknown = |ep| fault_json("unknown", 2, ep, va, Some(1));

    // Each pointer of the chain outside RAM in turn. Binding is accepted (pointers are only
    // checked when DMA walks them); the DMA faults UNKNOWN, never a page request.
    vm.iommu.attach(1, 1, AttachFlags::empty()).unwrap();
    let top = !0xfffu64;
    let arm_tables = [
        TableDesc::ArmSmmuV3 {
            s1fmt: S1FMT_LINEAR,
            s1dss: S1DSS_TERM,
            s1contextptr: OUTSIDE_RAM,
            s1cdmax: 4,
        },
        TableDesc::ArmSmmuV3 {
            s1fmt: S1FMT_4KL2,
            s1dss: S1DSS_TERM,
            s1contextptr: top,
            s1cdmax: 16,
        },
        cd_table_with_cd1(OUTSIDE_RAM),
    ];
    for desc in arm_tables {
        vm.iommu.bind_table(1, 1, &desc).unwrap();
        let r = dma_write(&mut vm.control, 1, Some(1), va, b"x");
        assert_eq!(r, json!({"ok": true, "fault": unknown(1)}), "{desc:?}");
    }
    vm.iommu.attach(2, 2, AttachFlags::empty()).unwrap();
    for desc in [vtd(OUTSIDE_RAM, X86Levels::Four), vtd(top, X86Levels::Five)] {
        vm.iommu.bind_table(2, 2, &desc).unwrap();
        let r = dma_write(&mut vm.control, 2, Some(1), va, b"x");
        assert_eq!(r, json!({"ok": true, "fault": unknown(2)}), "{desc:?}");
    }

    // Tables in RAM whose leaf points outside it: stage 2 finds nothing there.
    for (i, fmt) in (3u32..).zip(FORMATS) {
        let mut sva = Sva::new(&mut vm.iommu, fmt, i, i);
        sva.add_pasid(&mut vm.iommu, 1);
        let va = fmt.va_base();
        sva.map_page(1, va, OUTSIDE_RAM);
        let r = dma_read(&mut vm.control, i, Some(1), va, 8);
        assert_eq!(
            r["fault"],
            fault_json("unknown", 1, i, va, Some(1)),
            "{fmt:?}"
        );
    }
    let stats = vm.stats();
    assert_eq!(stats["page_requests"]["raised"], json!(0));
    assert_alive(&mut vm);
}

#[test]
fn self_referencing_tables_end_the_walk() {
    let mut vm = Vm::start(
        &["--pasid-bits", "16", "--page-request-timeout-ms", "200"],
        true,
    );
    // x86: PML4[0] points to the PML4 itself, at every level of the walk.
    let mut eps = Vec::new();
    for (ep, levels) in [(1u32, X86Levels::Four), (2, X86Levels::Five)] {
        let pgd = data_page(0);
        let entry = pgd | X86_TABLE;
        write_u64(pgd, entry);
        vm.iommu.attach(ep, ep, AttachFlags::empty()).unwrap();
        vm.iommu.bind_table(ep, ep, &vtd(pgd, levels)).unwrap();
        eps.push((ep, entry));
    }
    // Arm: L0[0] is a table descriptor to itself; read as an L3 page it is a user page.
    let t = data_page(0);
    let entry = t | ARM_TABLE_OR_PAGE | ARM_AF_USER;
    write_u64(t, entry);
    vm.iommu.attach(3, 3, AttachFlags::empty()).unwrap();
    vm.iommu.bind_table(3, 3, &cd_table_with_cd1(t)).unwrap();
    eps.push((3, entry));

    for (ep, entry) in eps {
        // VA 0 ends on the table page itself (the recursive-mapping trick): no loop.
        let r = dma_read(&mut vm.control, ep, Some(1), 0, 8);
        assert_eq!(r, read_ok(&entry.to_le_bytes()), "endpoint {ep}");
        // VA 0x1000 reaches an empty entry of that page: a page request that nobody
        // answers, so the DMA fails when the device times it out.
        let start = Instant::now();
        let r = dma_read(&mut vm.control, ep, Some(1), 0x1000, 8);
        assert_eq!(r["fault"], fault_json("mapping", 1, ep, 0x1000, Some(1)));
        assert!(start.elapsed() >= Duration::from_millis(200));
    }
    assert_eq!(vm.stats()["page_requests"]["timed_out"], json!(3));
    assert_alive(&mut vm);
}

#[test]
fn page_request_flood_is_bounded() {
    const LIMIT: usize = 4;
    const DMAS: usize = 12;
    const TIMEOUT: Duration = Duration::from_millis(2000);
    let mut vm = Vm::start(
        &[
            "--pasid-bits",
            "16",
            "--max-page-request-groups",
            "4",
            "--page-request-timeout-ms",
            "2000",
        ],
        true,
    );
    let fmt = FORMATS[1];
    let mut sva = Sva::new(&mut vm.iommu, fmt, 1, 1);
    sva.add_pasid(&mut vm.iommu, 1);
    let va = fmt.va_base();

    // Many concurrent DMAs to unmapped pages; the guest does not answer.
    let dmas: Vec<_> = (0..DMAS as u64)
        .map(|i| {
            let mut client = vm.new_control();
            let iova = va + i * 0x1000;
            thread::spawn(move || {
                let start = Instant::now();
                let req = json!({"endpoint": 1, "pasid": 1, "iova": iova, "data": "00"});
                let r = client.cmd("dma-write", req).expect("dma-write reply");
                (iova, r, start.elapsed())
            })
        })
        .collect();

    // While they wait: never more than LIMIT outstanding, and the daemon keeps answering (the
    // control client's reads are bounded, so a stuck daemon fails the test).
    let deadline = Instant::now() + WAIT;
    let mut peak = 0;
    while !dmas.iter().all(thread::JoinHandle::is_finished) {
        assert!(Instant::now() < deadline, "the flood did not drain");
        let stats = vm.stats();
        let outstanding = stats["page_requests"]["outstanding"].as_u64().unwrap();
        assert!(outstanding <= LIMIT as u64, "{outstanding} outstanding");
        peak = peak.max(outstanding);
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(peak, LIMIT as u64);

    let mut timed_out = 0;
    for dma in dmas {
        let (iova, r, elapsed) = dma.join().unwrap();
        assert_eq!(r["fault"], fault_json("mapping", 2, 1, iova, Some(1)));
        // A timed-out DMA cannot end before its deadline; the refused ones fail at once (their
        // count is checked through the daemon's counters below, not through timing).
        if elapsed >= TIMEOUT {
            timed_out += 1;
        }
    }
    assert_eq!(timed_out, LIMIT);
    let stats = vm.stats();
    let prq = &stats["page_requests"];
    assert_eq!(prq["raised"], json!(LIMIT));
    assert_eq!(prq["timed_out"], json!(LIMIT));
    assert_eq!(prq["refused"], json!(DMAS - LIMIT));
    assert_eq!(prq["outstanding"], json!(0));

    // The guest finally looks: LIMIT page requests (answers now stale) and a fault per DMA.
    let mut groups = PageRequestGroups::new();
    let (mut requests, mut faults, mut refused) = (0, 0, Vec::new());
    let deadline = Instant::now() + WAIT;
    while requests + faults < LIMIT + DMAS {
        assert!(
            Instant::now() < deadline,
            "{requests} requests, {faults} faults"
        );
        let d = vm
            .iommu
            .handle_page_requests(&mut groups, |_, _| {
                requests += 1;
                PageRespCode::Success
            })
            .unwrap();
        faults += d.faults.len();
        assert!(d.responses.is_empty(), "{:?}", d.responses);
        refused.extend(d.failed_responses);
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!((requests, faults), (LIMIT, DMAS));
    assert_eq!(refused.len(), LIMIT);
    assert!(
        refused.iter().all(|(_, e)| *e == Error::Inval),
        "{refused:?}"
    );
    assert_eq!(vm.iommu.dropped_events(), 0);
    assert_eq!(vm.stats()["events"]["dropped"], json!(0));
    assert_alive(&mut vm);
}
