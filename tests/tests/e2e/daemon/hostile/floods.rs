//! MAP floods to and past the device-wide budget, and identity MAPs of the whole 64-bit space
//! around reserved regions: exact statuses, the state intact, the daemon's heap bounded.

use super::*;
use serde_json::{json, Value};
use virtio_iommu_spec::Status;

/// Heap the daemon may spend per mapping, as RSS: twice what the engine test `footprint`
/// bounds a mapping at (malloc arenas and page granularity on top).
const RSS_PER_MAPPING: u64 = 400;
/// What refused requests may cost in all (nothing is kept for them; this is measuring noise).
const NOISE_KIB: u64 = 256;
/// What a `dump` may leave in the daemon's heap per mapping: the 32-byte snapshot it streams
/// from, with slack (a JSON tree of the dump would be about 700 B per mapping).
const DUMP_PER_MAPPING: u64 = 64;

fn translate(vm: &mut Vm, endpoint: u32, iova: u64) -> Value {
    vm.cmd("translate", json!({"endpoint": endpoint, "iova": iova}))
}

/// Mappings per domain in the dump.
fn mapping_counts(vm: &mut Vm) -> Vec<(u64, usize)> {
    vm.domains()
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["id"].as_u64().unwrap(),
                d["mappings"].as_array().unwrap().len(),
            )
        })
        .collect()
}

#[test]
fn map_flood_to_and_past_the_total_budget() {
    const PER_DOMAIN: u64 = 6_000;
    const TOTAL: u64 = 15_000;
    let mut vm = Vm::start_logging(
        "info",
        &["--max-mappings", "6000", "--max-total-mappings", "15000"],
    );
    let pid = vm.daemon.pid();
    for d in 1..=3 {
        assert_eq!(vm.send(&attach(d, d)), Status::Ok);
    }
    let heap0 = rss_anon_kib(pid);
    let phys = 0x4000_0000;
    // Domain 1 to its own bound and one past it, domain 2 to its bound, domain 3 into the total.
    let s = pipeline(&mut vm, &map_pages(1, 0..PER_DOMAIN + 1, phys));
    assert_eq!(count(&s, Status::Ok), 6_000);
    assert_eq!(s[6_000], Status::NoMem);
    let s = pipeline(&mut vm, &map_pages(2, 0..PER_DOMAIN, phys));
    assert_eq!(count(&s, Status::Ok), 6_000);
    let s = pipeline(&mut vm, &map_pages(3, 0..PER_DOMAIN, phys));
    assert!(s[..3_000].iter().all(|x| *x == Status::Ok));
    assert!(s[3_000..].iter().all(|x| *x == Status::NoMem));
    let heap1 = rss_anon_kib(pid);
    let per_mapping = (heap1.saturating_sub(heap0)) * 1024 / TOTAL;
    eprintln!(
        "daemon heap {heap0} → {heap1} KiB for {TOTAL} mappings: {per_mapping} B each; VmRSS {} KiB",
        vm_rss_kib(pid)
    );
    assert!(
        per_mapping <= RSS_PER_MAPPING,
        "{per_mapping} B per mapping"
    );

    let stats = vm.stats();
    assert_eq!(stats["mappings"], json!(TOTAL));
    assert_eq!(stats["map"]["nomem"], json!(3_001));
    let counts = vec![(1, 6_000), (2, 6_000), (3, 3_000)];
    assert_eq!(mapping_counts(&mut vm), counts);
    let dumped = rss_anon_kib(pid);
    let per_dumped = dumped.saturating_sub(heap1) * 1024 / TOTAL;
    eprintln!("after a dump: {dumped} KiB ({per_dumped} B per mapping)");
    assert!(
        per_dumped <= DUMP_PER_MAPPING,
        "a dump kept {per_dumped} B per mapping"
    );
    let heap1 = dumped;
    let last = translate(&mut vm, 3, 2_999 << 12);
    assert_eq!(
        last["translation"],
        json!({"gpa": phys + (2_999 << 12), "len": 1})
    );

    // Far past the budget, in every domain: all refused, nothing kept, nothing changed.
    let mut past = map_pages(1, PER_DOMAIN..PER_DOMAIN + 4_000, phys);
    past.extend(map_pages(2, PER_DOMAIN..PER_DOMAIN + 4_000, phys));
    past.extend(map_pages(3, 3_000..7_000, phys));
    let s = pipeline(&mut vm, &past);
    assert_eq!(count(&s, Status::NoMem), 12_000);
    let heap2 = rss_anon_kib(pid);
    assert!(heap2 <= heap1 + NOISE_KIB, "{heap1} → {heap2} KiB");
    assert_eq!(mapping_counts(&mut vm), counts);
    assert_eq!(translate(&mut vm, 3, 2_999 << 12), last);
    assert_eq!(
        translate(&mut vm, 3, 3_000 << 12)["fault"]["reason"],
        json!("mapping")
    );

    // One UNMAP of domain 1's whole space gives its 6000 back to the others.
    assert_eq!(vm.send(&unmap(1, 0, u64::MAX)), Status::Ok);
    let s = pipeline(&mut vm, &map_pages(3, 3_000..PER_DOMAIN + 1, phys));
    assert_eq!(count(&s, Status::Ok), 3_000);
    assert_eq!(s[3_000], Status::NoMem, "domain 3 at its own bound");
    assert_eq!(vm.stats()["mappings"], json!(12_000));
    vm.assert_alive();
}

/// The gaps between `--reserved` regions that an identity MAP of everything else covers.
const RESERVED: [&str; 6] = [
    "--reserved",
    "reserved:0x0-0xfff",
    "--reserved",
    "msi:0xfee00000-0xfeefffff",
    "--reserved",
    "reserved:0xffff000000000000-0xffff0000ffffffff",
];
const GAPS: [(u64, u64); 3] = [
    (0x1000, 0xfedf_ffff),
    (0xfef0_0000, 0xfffe_ffff_ffff_ffff),
    (0xffff_0001_0000_0000, u64::MAX),
];

fn identity_maps(domain: u32) -> Vec<virtio_iommu_spec::Request> {
    GAPS.iter().map(|&(a, l)| map(domain, a, l, a)).collect()
}

#[test]
fn identity_map_of_the_whole_space_and_one_unmap() {
    let mut vm = Vm::start_logging("info", &RESERVED);
    let pid = vm.daemon.pid();
    assert_eq!(vm.send(&attach(1, 1)), Status::Ok);
    // Touching a reserved region is refused, whole or in part.
    for (a, l) in [
        (0, u64::MAX),
        (0, 0xfff),
        (0xfee0_0000, 0xfee0_0fff),
        (0x1000, 0xfee0_0fff),
    ] {
        assert_eq!(vm.send(&map(1, a, l, a)), Status::Inval, "{a:#x}-{l:#x}");
    }
    let heap0 = rss_anon_kib(pid);
    let ticks0 = cpu_ticks(pid);
    // Map the gaps and unmap everything, many times over: each costs O(1).
    let mut reqs = Vec::new();
    for _ in 0..300 {
        reqs.extend(identity_maps(1));
        reqs.push(unmap(1, 0, u64::MAX));
    }
    reqs.extend(identity_maps(1));
    let s = pipeline(&mut vm, &reqs);
    assert_eq!(count(&s, Status::Ok), reqs.len());
    let heap1 = rss_anon_kib(pid);
    assert!(heap1 <= heap0 + NOISE_KIB, "{heap0} → {heap1} KiB");
    // 1 504 requests: at the debug daemon's pace about 0.1 s of CPU; a walk over the pages
    // mapped (2^52 of them) would never end.
    let ticks = cpu_ticks(pid) - ticks0;
    assert!(ticks < 300, "{ticks} ticks");
    assert_eq!(vm.stats()["mappings"], json!(3));

    let expected: Vec<Value> = GAPS.iter().map(|&(a, l)| mapping(a, l, a, 3)).collect();
    assert_eq!(vm.domains(), json!([domain(1, &[1], &expected)]));
    for iova in [0x1000, 0xfedf_f000, 0xfef0_0000, 1 << 63, u64::MAX - 0xfff] {
        let t = translate(&mut vm, 1, iova);
        assert_eq!(
            t["translation"],
            json!({"gpa": iova, "len": 1}),
            "{iova:#x}"
        );
    }
    // The MSI window passes through; the other reserved regions fault.
    assert_eq!(
        translate(&mut vm, 1, 0xfee0_0000)["translation"]["gpa"],
        json!(0xfee0_0000u64)
    );
    for iova in [0, 0xffff_0000_8000_0000] {
        assert_eq!(
            translate(&mut vm, 1, iova)["fault"]["reason"],
            json!("mapping")
        );
    }

    assert_eq!(vm.send(&unmap(1, 0, u64::MAX)), Status::Ok);
    assert_eq!(vm.domains(), json!([domain(1, &[1], &[])]));
    assert_eq!(
        translate(&mut vm, 1, 1 << 63)["fault"]["reason"],
        json!("mapping")
    );
    vm.assert_alive();
}
