//! The unmodified guest driver over vhost-user against the real daemon: PROBE, ATTACH, MAP,
//! translations and DMA seen through the control socket, UNMAP, the fault event delivered to
//! `poll_event`, and a batch of 1000 MAPs with one notification per ring-full.

use super::vm::*;
use serde_json::json;
use virtio_iommu_driver::{
    AttachFlags, Event, FaultEvent, FaultReason, MapFlags, Mapping, ReservedRegion, ResvMemSubtype,
    MAX_REQUESTS_IN_FLIGHT,
};
use virtio_iommu_spec::event::FaultFlags;
use virtio_iommu_spec::REQUEST_QUEUE;

#[test]
fn probe_map_translate_unmap_fault() {
    let mut vm = Vm::start(&[], false);
    let (domain, ep) = (1, 8);

    // PROBE: the daemon's default x86 MSI window, nothing else without the extensions.
    let info = vm.iommu.probe(ep).unwrap();
    let msi = ReservedRegion {
        kind: ResvMemSubtype::Msi,
        raw_subtype: 1,
        start: 0xfee0_0000,
        last: 0xfeef_ffff,
    };
    assert_eq!(info.reserved_regions, [msi]);
    assert_eq!(info.msi_region(), Some(&msi));
    assert_eq!((info.pasid_bits, info.page_request), (None, None));

    vm.iommu.attach(domain, ep, AttachFlags::empty()).unwrap();
    let page = data_page(0);
    let iova = 0x10_0000;
    vm.iommu
        .map(&Mapping {
            domain,
            iova,
            paddr: page,
            size: 0x1000,
            flags: MapFlags::READ | MapFlags::WRITE,
        })
        .unwrap();

    // The device translates with the driver's mapping, and its DMA lands in that page.
    let r = vm.ctl(
        "translate",
        json!({"endpoint": ep, "iova": iova + 0x123, "len": 0x2000, "access": "write"}),
    );
    assert_eq!(
        r["translation"],
        json!({"gpa": page + 0x123, "len": 0x1000 - 0x123})
    );
    dma_write(&mut vm.control, ep, None, iova + 0x10, b"driver e2e");
    assert_eq!(read_guest(page + 0x10, 10), b"driver e2e");
    assert_eq!(
        dma_read(&mut vm.control, ep, None, iova + 0x10, 10),
        read_ok(b"driver e2e")
    );
    assert_eq!(vm.stats()["mappings"], json!(1));

    // After UNMAP the same access faults, and the fault reaches the driver's event queue.
    vm.iommu.unmap(domain, iova, 0x1000).unwrap();
    let r = vm.translate(ep, iova + 0x123, "read");
    assert_eq!(
        r,
        json!({"ok": true, "fault": fault_json("mapping", 1, ep, iova + 0x123, None)})
    );
    assert_eq!(
        vm.wait_event(),
        Event::Fault(FaultEvent {
            reason: FaultReason::Mapping,
            access: FaultFlags::READ,
            endpoint: ep,
            address: Some(iova + 0x123),
            pasid: None,
        })
    );

    // A read-only mapping refuses writes: the fault says WRITE.
    vm.iommu
        .map(&Mapping {
            domain,
            iova,
            paddr: page,
            size: 0x1000,
            flags: MapFlags::READ,
        })
        .unwrap();
    assert_eq!(
        vm.translate(ep, iova, "read")["translation"],
        json!({"gpa": page, "len": 1})
    );
    let r = vm.translate(ep, iova + 8, "write");
    assert_eq!(r["fault"], fault_json("mapping", 2, ep, iova + 8, None));
    assert_eq!(
        vm.wait_event(),
        Event::Fault(FaultEvent {
            reason: FaultReason::Mapping,
            access: FaultFlags::WRITE,
            endpoint: ep,
            address: Some(iova + 8),
            pasid: None,
        })
    );
    vm.expect_no_event(std::time::Duration::from_millis(50));
    assert_eq!(vm.iommu.dropped_events(), 0);
}

#[test]
fn batch_of_1000_maps_notifies_once_per_ring_full() {
    let mut vm = Vm::start(&[], false);
    let (domain, ep) = (2, 9);
    vm.iommu.attach(domain, ep, AttachFlags::empty()).unwrap();
    let page = data_page(0x5a);
    let base = 0x1000_0000u64;
    let mappings: Vec<Mapping> = (0..1000u64)
        .map(|i| Mapping {
            domain,
            iova: base + i * 0x2000,
            paddr: page,
            size: 0x1000,
            flags: MapFlags::READ | MapFlags::WRITE,
        })
        .collect();

    let kicks_before = vm.kicks.of(REQUEST_QUEUE);
    let results = vm.iommu.map_batch(&mappings).unwrap();
    assert_eq!(results.len(), 1000);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    // The device never suppresses notifications (no EVENT_IDX): exactly one per chunk.
    assert_eq!(MAX_REQUESTS_IN_FLIGHT, 32);
    assert_eq!(
        vm.kicks.of(REQUEST_QUEUE) - kicks_before,
        1000u64.div_ceil(32)
    );

    let stats = vm.stats();
    assert_eq!(stats["map"]["ok"], json!(1000));
    assert_eq!(stats["mappings"], json!(1000));
    let dump = vm.ctl("dump", serde_json::Value::Null)["dump"].clone();
    let d = &dump["domains"][0];
    assert_eq!(
        (d["id"].clone(), d["endpoints"].clone()),
        (json!(domain), json!([ep]))
    );
    let maps = d["mappings"].as_array().unwrap();
    assert_eq!(maps.len(), 1000);
    assert_eq!(
        maps[999],
        json!({"virt_start": base + 999 * 0x2000, "virt_last": base + 999 * 0x2000 + 0xfff,
               "phys_start": page, "flags": 3})
    );
    assert_eq!(
        vm.translate(ep, base + 500 * 0x2000 + 7, "write")["translation"],
        json!({"gpa": page + 7, "len": 1})
    );
    // The gaps between the mappings stay unmapped.
    let r = vm.translate(ep, base + 0x1000, "read");
    assert_eq!(r["fault"]["reason"], json!("mapping"));
}
