//! Requests through the daemon's request queue with exact statuses, and the device state after
//! each step as the control socket's `dump` shows it: ATTACH / DETACH / MAP / UNMAP / PROBE,
//! the seven UNMAP examples of the specification, reserved fields, type gating and limits.

use super::vm::*;
use serde_json::json;
use virtio_iommu_spec::request::{MapFlags, RequestType};
use virtio_iommu_spec::{Features, Status};
use virtio_iommu_testkit::rawq::POISON;
use virtio_iommu_testkit::Chain;

/// The default MSI window every endpoint reports.
const MSI_START: u64 = 0xfee0_0000;
const MSI_END: u64 = 0xfeef_ffff;
const RW: u32 = 3;

#[test]
fn attach_detach_map_unmap() {
    let mut vm = Vm::start(&[]);
    assert_eq!(vm.dump(), json!({"bypass": true, "domains": []}));

    assert_eq!(vm.send(&attach(1, 10)), Status::Ok);
    assert_eq!(vm.domains(), json!([domain(1, &[10], &[])]));
    assert_eq!(vm.send(&attach(1, 11)), Status::Ok);
    // Attaching again to the same domain changes nothing.
    assert_eq!(vm.send(&attach(1, 11)), Status::Ok);
    assert_eq!(vm.domains(), json!([domain(1, &[10, 11], &[])]));

    assert_eq!(vm.send(&map(1, 0x1000, 0x2fff, 0x8000_0000)), Status::Ok);
    let m1 = mapping(0x1000, 0x2fff, 0x8000_0000, RW);
    assert_eq!(
        vm.domains(),
        json!([domain(1, &[10, 11], std::slice::from_ref(&m1))])
    );
    let ro = map_flags(1, 0x10_0000, 0x10_0fff, 0x9000_0000, MapFlags::READ);
    assert_eq!(vm.send(&ro), Status::Ok);
    let m2 = mapping(0x10_0000, 0x10_0fff, 0x9000_0000, 1);
    let both = json!([domain(1, &[10, 11], &[m1.clone(), m2.clone()])]);
    assert_eq!(vm.domains(), both);

    // Refused MAPs leave the state unchanged.
    let refused = [
        (map(1, 0x2000, 0x3fff, 0), Status::Inval, "overlap"),
        (map(1, 0x0, 0x1fff, 0), Status::Inval, "overlap by one page"),
        (
            map(1, 0x5800, 0x6fff, 0),
            Status::Range,
            "virt_start misaligned",
        ),
        (
            map(1, 0x5000, 0x5fff, 0x10),
            Status::Range,
            "phys_start misaligned",
        ),
        (
            map(1, 0x5000, 0x57ff, 0),
            Status::Range,
            "virt_end + 1 misaligned",
        ),
        (
            map(1, 0x6000, 0x4fff, 0),
            Status::Inval,
            "virt_end < virt_start",
        ),
        (map(2, 0x5000, 0x5fff, 0), Status::NoEnt, "unknown domain"),
        (
            map(1, MSI_START, MSI_END, 0),
            Status::Inval,
            "on the MSI window",
        ),
        (
            map_flags(1, 0x5000, 0x5fff, 0, MapFlags::MMIO),
            Status::Inval,
            "MMIO not offered",
        ),
        (
            map(1, 0x5000, 0x6fff, u64::MAX - 0xfff),
            Status::Range,
            "output past 2^64",
        ),
        (
            unmap(2, 0, 0xfff),
            Status::NoEnt,
            "unmap of an unknown domain",
        ),
        (
            unmap(1, 0x1000, 0x1fff),
            Status::Range,
            "unmap splitting a mapping",
        ),
        (
            unmap(1, 0x2000, 0x1fff),
            Status::Inval,
            "unmap virt_end < virt_start",
        ),
        (
            detach(1, 12),
            Status::Inval,
            "detach of an unattached endpoint",
        ),
        (detach(2, 10), Status::Inval, "detach from the wrong domain"),
    ];
    for (req, status, why) in &refused {
        assert_eq!(vm.send(req), *status, "{why}");
        assert_eq!(vm.domains(), both, "state unchanged after: {why}");
    }

    // Bypass domains: no MAP/UNMAP, and they do not mix with translated ones.
    assert_eq!(vm.send(&attach_bypass(3, 12)), Status::Ok);
    assert_eq!(vm.send(&map(3, 0x1000, 0x1fff, 0)), Status::Inval);
    assert_eq!(vm.send(&unmap(3, 0x1000, 0x1fff)), Status::Inval);
    assert_eq!(vm.send(&attach(3, 13)), Status::Inval);
    assert_eq!(vm.send(&attach_bypass(1, 13)), Status::Inval);
    let bypass3 = json!({"id": 3, "bypass": true, "endpoints": [12], "mappings": []});
    assert_eq!(
        vm.domains(),
        json!([domain(1, &[10, 11], &[m1.clone(), m2.clone()]), bypass3])
    );

    // Moving the only endpoint of domain 3 elsewhere destroys domain 3.
    assert_eq!(vm.send(&attach(4, 12)), Status::Ok);
    assert_eq!(
        vm.domains(),
        json!([
            domain(1, &[10, 11], &[m1.clone(), m2.clone()]),
            domain(4, &[12], &[])
        ])
    );

    // UNMAP of a range covering whole mappings and holes.
    assert_eq!(vm.send(&unmap(1, 0, 0xf_ffff)), Status::Ok);
    assert_eq!(vm.domains().as_array().unwrap()[0]["mappings"], json!([m2]));
    assert_eq!(vm.send(&detach(1, 10)), Status::Ok);
    assert_eq!(vm.send(&detach(1, 10)), Status::Inval);
    assert_eq!(
        vm.domains(),
        json!([domain(1, &[11], &[m2]), domain(4, &[12], &[])])
    );
    // The last endpoint leaving takes the domain and its mappings with it.
    assert_eq!(vm.send(&detach(1, 11)), Status::Ok);
    assert_eq!(vm.domains(), json!([domain(4, &[12], &[])]));
    assert_eq!(vm.send(&attach(1, 11)), Status::Ok);
    assert_eq!(
        vm.domains(),
        json!([domain(1, &[11], &[]), domain(4, &[12], &[])])
    );
}

#[test]
fn ranges_and_unknown_endpoints() {
    let mut vm = Vm::start(&[
        "--domain-range",
        "5-10",
        "--input-range",
        "0x10000-0xfffff",
        "--endpoints",
        "0-15",
    ]);
    assert_eq!(vm.send(&attach(4, 1)), Status::Range);
    assert_eq!(vm.send(&attach(11, 1)), Status::Range);
    assert_eq!(vm.send(&attach(5, 16)), Status::NoEnt);
    assert_eq!(vm.send(&detach(11, 1)), Status::Range);
    assert_eq!(vm.send(&detach(5, 16)), Status::NoEnt);
    assert_eq!(vm.probe(16).0, Status::NoEnt);
    assert_eq!(vm.domains(), json!([]));

    assert_eq!(vm.send(&attach(5, 1)), Status::Ok);
    assert_eq!(vm.send(&map(5, 0xf000, 0x10fff, 0)), Status::Range);
    assert_eq!(vm.send(&map(5, 0xff000, 0x100fff, 0)), Status::Range);
    assert_eq!(vm.send(&map(4, 0x10000, 0x10fff, 0)), Status::Range);
    assert_eq!(vm.send(&unmap(5, 0, 0xffff)), Status::Range);
    assert_eq!(vm.send(&unmap(11, 0x10000, 0x10fff)), Status::Range);
    assert_eq!(vm.send(&map(5, 0x10000, 0xfffff, 0)), Status::Ok);
    assert_eq!(
        vm.domains(),
        json!([domain(5, &[1], &[mapping(0x10000, 0xfffff, 0, RW)])])
    );
}

/// The seven UNMAP examples of the virtio specification (PROTOCOL.md §6.4), each in a fresh
/// domain, with a 1-byte granule.
#[test]
fn unmap_examples_of_the_specification() {
    let mut vm = Vm::start(&["--page-size-mask", "1"]);
    type Range = (u64, u64);
    let examples: [(&[Range], Range, Status, &[Range]); 7] = [
        (&[], (0, 4), Status::Ok, &[]),
        (&[(0, 9)], (0, 9), Status::Ok, &[]),
        (&[(0, 4), (5, 9)], (0, 9), Status::Ok, &[]),
        (&[(0, 9)], (0, 4), Status::Range, &[(0, 9)]),
        (&[(0, 4), (5, 9)], (0, 4), Status::Ok, &[(5, 9)]),
        (&[(0, 4)], (0, 9), Status::Ok, &[]),
        (&[(0, 4), (10, 14)], (0, 14), Status::Ok, &[]),
    ];
    for (i, (before, (a, b), status, after)) in examples.iter().enumerate() {
        let dom = 100 + u32::try_from(i).unwrap();
        assert_eq!(vm.send(&attach(dom, dom)), Status::Ok);
        for &(s, e) in *before {
            assert_eq!(vm.send(&map(dom, s, e, 0x1000 + s)), Status::Ok);
        }
        assert_eq!(vm.send(&unmap(dom, *a, *b)), *status, "example {}", i + 1);
        let want: Vec<_> = after
            .iter()
            .map(|&(s, e)| mapping(s, e, 0x1000 + s, RW))
            .collect();
        let d = vm.domains();
        let got = d
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == json!(dom))
            .unwrap();
        assert_eq!(got["mappings"], json!(want), "example {}", i + 1);
    }
}

fn resv_mem(subtype: u8, start: u64, end: u64) -> Vec<u8> {
    let mut p = vec![1, 0, 20, 0, subtype, 0, 0, 0];
    p.extend_from_slice(&start.to_le_bytes());
    p.extend_from_slice(&end.to_le_bytes());
    p
}

#[test]
fn probe_properties() {
    let mut vm = Vm::start(&[]);
    let (status, area) = vm.probe(7);
    assert_eq!(status, Status::Ok);
    assert_eq!(area.len(), 512);
    let mut want = resv_mem(1, MSI_START, MSI_END);
    want.resize(512, 0);
    assert_eq!(area, want);

    // A larger area: the same properties, zeros after, the tail still last.
    let c = vm.submit(&Chain::request(&bytes(&probe(7)), 600 + 4));
    let (status, area) = probe_reply(&c);
    assert_eq!(status, Status::Ok);
    want.resize(600, 0);
    assert_eq!(area, want);

    // A smaller area: S_INVAL and nothing but zeros.
    let c = vm.submit(&Chain::request(&bytes(&probe(7)), 100));
    assert_eq!(reply_status(&c, 100), Status::Inval);

    // The reserved bytes of PROBE and of every head are ignored.
    let mut b = bytes(&probe(7));
    b[1..4].copy_from_slice(&[0xff; 3]);
    b[8..72].fill(0xee);
    let (status, area) = probe_reply(&vm.submit(&Chain::request(&b, 516)));
    assert_eq!(status, Status::Ok);
    assert_eq!(area[..24], resv_mem(1, MSI_START, MSI_END));

    // Configured regions, in order.
    let mut vm = Vm::start(&[
        "--reserved",
        "reserved:0x1000-0x1fff",
        "--reserved",
        "msi:0x8000000-0x80fffff",
    ]);
    let (status, area) = vm.probe(0);
    assert_eq!(status, Status::Ok);
    let mut want = resv_mem(0, 0x1000, 0x1fff);
    want.extend(resv_mem(1, 0x800_0000, 0x80f_ffff));
    want.resize(512, 0);
    assert_eq!(area, want);
    // MAP on a RESERVED region of an attached endpoint is refused.
    assert_eq!(vm.send(&attach(1, 0)), Status::Ok);
    assert_eq!(vm.send(&map(1, 0x1000, 0x1fff, 0)), Status::Inval);
    assert_eq!(vm.send(&map(1, 0x2000, 0x2fff, 0)), Status::Ok);
}

/// The default MSI window makes a whole-space identity MAP overlap a reserved region;
/// `--reserved none` removes it, and then the MAP and one UNMAP of everything succeed.
#[test]
fn whole_space_identity_map_with_reserved_none() {
    let mut vm = Vm::start(&[]);
    assert_eq!(vm.send(&attach(1, 5)), Status::Ok);
    assert_eq!(vm.send(&map(1, 0, u64::MAX, 0)), Status::Inval);
    assert_eq!(vm.domains(), json!([domain(1, &[5], &[])]));

    let mut vm = Vm::start(&["--reserved", "none"]);
    let (status, area) = vm.probe(5);
    assert_eq!(status, Status::Ok);
    assert_eq!(area, vec![0; 512], "no RESV_MEM property");
    assert_eq!(vm.send(&attach(1, 5)), Status::Ok);
    assert_eq!(vm.send(&map(1, 0, u64::MAX, 0)), Status::Ok);
    assert_eq!(
        vm.domains(),
        json!([domain(1, &[5], &[mapping(0, u64::MAX, 0, 3)])])
    );
    for iova in [0, MSI_START, MSI_END, u64::MAX] {
        let r = vm.cmd("translate", json!({"endpoint": 5, "iova": iova}));
        assert_eq!(r["translation"]["gpa"], json!(iova), "{r}");
    }
    assert_eq!(vm.send(&unmap(1, 0, u64::MAX)), Status::Ok);
    assert_eq!(vm.domains(), json!([domain(1, &[5], &[])]));
    let r = vm.cmd("translate", json!({"endpoint": 5, "iova": MSI_START}));
    assert_eq!(r["fault"]["reason"], "mapping", "{r}");
}

#[test]
fn reserved_fields_and_unknown_types() {
    let mut vm = Vm::start(&[]);
    // ATTACH: reserved must be zero, undefined flags refused.
    let mut b = bytes(&attach(1, 1));
    b[16] = 1;
    assert_eq!(
        reply_status(&vm.submit(&Chain::request(&b, 4)), 4),
        Status::Inval
    );
    let mut b = bytes(&attach(1, 1));
    b[12] = 2;
    assert_eq!(
        reply_status(&vm.submit(&Chain::request(&b, 4)), 4),
        Status::Inval
    );
    assert_eq!(vm.domains(), json!([]));
    // Head reserved bytes are ignored.
    let mut b = bytes(&attach(1, 1));
    b[1..4].copy_from_slice(&[1, 2, 3]);
    assert_eq!(
        reply_status(&vm.submit(&Chain::request(&b, 4)), 4),
        Status::Ok
    );
    // MAP: undefined flag bits refused.
    let mut b = bytes(&map(1, 0x1000, 0x1fff, 0));
    b[32] = 8;
    assert_eq!(
        reply_status(&vm.submit(&Chain::request(&b, 4)), 4),
        Status::Inval
    );
    assert_eq!(vm.send(&map(1, 0x1000, 0x1fff, 0)), Status::Ok);
    // UNMAP: reserved must be zero (nothing removed).
    let mut b = bytes(&unmap(1, 0, u64::MAX));
    b[27] = 1;
    assert_eq!(
        reply_status(&vm.submit(&Chain::request(&b, 4)), 4),
        Status::Inval
    );
    assert_eq!(
        vm.domains(),
        json!([domain(1, &[1], &[mapping(0x1000, 0x1fff, 0, RW)])])
    );
    // DETACH: reserved is ignored.
    let mut b = bytes(&detach(1, 1));
    b[12..20].fill(0xff);
    assert_eq!(
        reply_status(&vm.submit(&Chain::request(&b, 4)), 4),
        Status::Ok
    );
    assert_eq!(vm.domains(), json!([]));

    // Unknown types: returned with used length 0, nothing written.
    for t in [0u8, 9, 0x7f, 0xff] {
        let mut b = vec![0u8; 20];
        b[0] = t;
        let c = vm.submit(&Chain::request(&b, 8));
        assert_eq!((c.len, c.written), (0, vec![POISON; 8]), "type {t}");
    }
    // ATTACH_TABLE without --pasid-bits is not offered, so never negotiated: used length 0.
    let mut b = vec![0u8; RequestType::AttachTable.readable_len()];
    b[0] = RequestType::AttachTable as u8;
    let c = vm.submit(&Chain::request(&b, 4));
    assert_eq!((c.len, c.written), (0, vec![POISON; 4]));
    let s = vm.stats();
    assert_eq!(s["unknown_type"], json!(4));
    assert_eq!(s["attach_table"]["no_reply"], json!(1));
    vm.assert_alive();
}

#[test]
fn types_without_their_feature_get_no_reply() {
    let no_map_probe = !(Features::MAP_UNMAP | Features::PROBE | Features::BYPASS_CONFIG).bits();
    let mut vm = Vm::start_with(&[], |f| f & no_map_probe);
    for req in [map(1, 0x1000, 0x1fff, 0), unmap(1, 0, 0xfff), probe(1)] {
        let c = vm.submit(&chain_of(&req));
        let n = req.writable_len(PROBE_SIZE);
        assert_eq!((c.len, c.written), (0, vec![POISON; n]), "{req:?}");
    }
    // ATTACH and DETACH need no feature; a bypass ATTACH needs BYPASS_CONFIG.
    assert_eq!(vm.send(&attach(1, 1)), Status::Ok);
    assert_eq!(vm.send(&attach_bypass(2, 2)), Status::Inval);
    assert_eq!(vm.domains(), json!([domain(1, &[1], &[])]));
    let s = vm.stats();
    assert_eq!(s["map"]["no_reply"], json!(1));
    assert_eq!(s["unmap"]["no_reply"], json!(1));
    assert_eq!(s["probe"]["no_reply"], json!(1));
    assert_eq!(s["attach"]["ok"], json!(1));
    assert_eq!(s["attach"]["inval"], json!(1));
}

#[test]
fn mapping_and_domain_limits() {
    let mut vm = Vm::start(&["--max-mappings", "3", "--max-domains", "2"]);
    assert_eq!(vm.send(&attach(1, 1)), Status::Ok);
    let mut maps = Vec::new();
    for i in 0..3u64 {
        let va = 0x1000 * (i + 1);
        assert_eq!(vm.send(&map(1, va, va + 0xfff, va)), Status::Ok);
        maps.push(mapping(va, va + 0xfff, va, RW));
    }
    let full = json!([domain(1, &[1], &maps)]);
    assert_eq!(vm.send(&map(1, 0x8000, 0x8fff, 0x8000)), Status::NoMem);
    assert_eq!(vm.domains(), full);
    // The limit is per domain and a freed slot can be reused.
    assert_eq!(vm.send(&unmap(1, 0x1000, 0x1fff)), Status::Ok);
    assert_eq!(vm.send(&map(1, 0x8000, 0x8fff, 0x8000)), Status::Ok);
    assert_eq!(vm.send(&map(1, 0x9000, 0x9fff, 0x9000)), Status::NoMem);

    assert_eq!(vm.send(&attach(2, 2)), Status::Ok);
    assert_eq!(vm.send(&map(2, 0x1000, 0x1fff, 0)), Status::Ok);
    assert_eq!(vm.send(&attach(3, 3)), Status::NoMem);
    // Joining an existing domain is fine; moving the only endpoint of a domain to a new one
    // frees the slot it needs.
    assert_eq!(vm.send(&attach(2, 3)), Status::Ok);
    assert_eq!(vm.send(&detach(2, 3)), Status::Ok);
    let before = vm.domains();
    assert_eq!(vm.send(&attach(3, 3)), Status::NoMem);
    assert_eq!(vm.domains(), before);
    assert_eq!(vm.send(&attach(4, 2)), Status::Ok);
    let d = vm.domains();
    let ids: Vec<_> = d
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].clone())
        .collect();
    assert_eq!(ids, [json!(1), json!(4)]);
    let s = vm.stats();
    assert_eq!(s["map"]["nomem"], json!(2));
    assert_eq!(s["attach"]["nomem"], json!(2));
    assert_eq!(s["domains"], json!(2));
    assert_eq!(s["mappings"], json!(3));
}

// ---- Corner cases of PROTOCOL.md's ordering rules -----------------------------------------

/// PROTOCOL.md §5.2 rule 2: an empty readable part has no type byte, so the request cannot be
/// recognised: nothing is written and the used length is 0.
#[test]
fn empty_readable_part_is_not_answered() {
    let mut vm = Vm::start(&[]);
    let c = vm.submit(&Chain::new().writable(4));
    assert_eq!(c.len, 0);
    vm.assert_alive();
}

/// PROTOCOL.md §6.1–6.3 list the checks in the order the device makes them: the endpoint before
/// the domain range (ATTACH, DETACH), the domain before MMIO and the inverted range (MAP).
#[test]
fn first_condition_in_table_order() {
    let mut vm = Vm::start(&["--domain-range", "1-10", "--endpoints", "0-15"]);
    // Unknown endpoint and domain outside the range: S_NOENT comes first.
    assert_eq!(vm.send(&attach(11, 16)), Status::NoEnt);
    assert_eq!(vm.send(&detach(11, 16)), Status::NoEnt);
    // Known endpoint, domain outside the range: S_RANGE.
    assert_eq!(vm.send(&attach(11, 1)), Status::Range);
    assert_eq!(vm.send(&detach(11, 1)), Status::Range);
    // MAP: the domain is checked before MMIO without F_MMIO and an inverted range.
    let mmio = map_flags(2, 0x1000, 0x1fff, 0, MapFlags::MMIO);
    assert_eq!(vm.send(&mmio), Status::NoEnt);
    assert_eq!(vm.send(&map(11, 0x2000, 0x1fff, 0)), Status::Range);
    assert_eq!(vm.send(&attach(2, 1)), Status::Ok);
    assert_eq!(vm.send(&mmio), Status::Inval);
    assert_eq!(vm.send(&map(2, 0x2000, 0x1fff, 0)), Status::Inval);
}

/// The daemon's request lines: `(level, message)` of every line the engine logged with a
/// status at the end.
fn request_lines(stderr: &str) -> Vec<(String, String)> {
    stderr
        .lines()
        .filter_map(|l| {
            let (head, msg) = l.split_once("vhost_device_iommu::engine] ")?;
            let level = head.split_whitespace().nth(1)?.to_owned();
            msg.contains(": S_").then(|| (level, msg.to_owned()))
        })
        .collect()
}

/// At `RUST_LOG=debug` every request gets exactly one line with its type, domain, endpoint,
/// range and status; at info no request is logged.
#[test]
fn one_debug_line_per_request_and_none_at_info() {
    let requests = [
        (attach(1, 8), "ATTACH domain 1 endpoint 0x8: S_OK"),
        (
            map(1, 0x10000, 0x10fff, 0x20000),
            "MAP domain 1 [0x10000, 0x10fff] -> 0x20000 RW: S_OK",
        ),
        (
            map(1, 0x10000, 0x10fff, 0x20000),
            "MAP domain 1 [0x10000, 0x10fff] -> 0x20000 RW: S_INVAL",
        ),
        (
            unmap(1, 0, u64::MAX),
            "UNMAP domain 1 [0x0, 0xffffffffffffffff]: S_OK",
        ),
        (probe(0x1_0000), "PROBE endpoint 0x10000: S_NOENT"),
        (detach(1, 8), "DETACH domain 1 endpoint 0x8: S_OK"),
    ];
    let mut vm = Vm::start_logging("debug", &[]);
    for (r, _) in &requests {
        vm.send(r);
    }
    let lines = request_lines(&vm.daemon.stderr());
    let want: Vec<(String, String)> = requests
        .iter()
        .map(|(_, l)| ("DEBUG".to_owned(), (*l).to_owned()))
        .collect();
    assert_eq!(lines, want);

    let mut vm = Vm::start_logging("info", &[]);
    for (r, _) in &requests {
        vm.send(r);
    }
    let log = vm.daemon.stderr();
    assert!(request_lines(&log).is_empty(), "{log}");
    assert!(!log.contains("domain 1"), "{log}");
}
