//! Bypass through the unmodified driver and the real daemon: the boot value, a bypass domain,
//! `set_bypass` with config read-back, and an unattached endpoint faulting with DOMAIN once
//! bypass is off.

use super::vm::*;
use serde_json::json;
use virtio_iommu_driver::{
    AttachFlags, Error, Event, FaultEvent, FaultReason, Features, MapFlags, Mapping,
};
use virtio_iommu_spec::event::FaultFlags;

#[test]
fn bypass_domain_and_config_byte() {
    let mut vm = Vm::start(&[], false);
    assert!(vm.iommu.features().contains(Features::BYPASS_CONFIG));
    assert_eq!(vm.iommu.config().bypass, Some(true), "boot bypass is on");
    let (unattached, bypassed) = (20, 21);

    // Boot bypass: an unattached endpoint's DMA is identity-mapped.
    let page = data_page(0);
    assert_eq!(
        vm.translate(unattached, page + 0x40, "write")["translation"],
        json!({"gpa": page + 0x40, "len": 1})
    );

    // A bypass domain: identity too, and it takes no mappings.
    vm.iommu.attach(3, bypassed, AttachFlags::BYPASS).unwrap();
    let m = Mapping {
        domain: 3,
        iova: 0x1000,
        paddr: page,
        size: 0x1000,
        flags: MapFlags::READ,
    };
    assert_eq!(vm.iommu.map(&m), Err(Error::Inval));
    let dump = vm.ctl("dump", serde_json::Value::Null)["dump"].clone();
    assert_eq!(
        dump,
        json!({"bypass": true, "domains": [
            {"id": 3, "bypass": true, "endpoints": [bypassed], "mappings": []}
        ]})
    );

    // Bypass off: the driver writes the byte and reads it back from the device.
    vm.iommu.set_bypass(false).unwrap();
    assert_eq!(vm.iommu.config().bypass, Some(false));
    assert_eq!(vm.iommu.read_config().unwrap().bypass, Some(false));
    assert_eq!(
        vm.ctl("dump", serde_json::Value::Null)["dump"]["bypass"],
        json!(false)
    );

    // The unattached endpoint is now blocked: DOMAIN fault, delivered to the driver.
    let r = vm.translate(unattached, page + 0x40, "write");
    assert_eq!(
        r,
        json!({"ok": true, "fault": fault_json("domain", 2, unattached, page + 0x40, None)})
    );
    assert_eq!(
        vm.wait_event(),
        Event::Fault(FaultEvent {
            reason: FaultReason::Domain,
            access: FaultFlags::WRITE,
            endpoint: unattached,
            address: Some(page + 0x40),
            pasid: None,
        })
    );
    // The bypass domain is not affected by the config byte.
    dma_write(&mut vm.control, bypassed, None, page + 0x80, b"identity");
    assert_eq!(read_guest(page + 0x80, 8), b"identity");

    // Back on: the unattached endpoint passes again; no further event.
    vm.iommu.set_bypass(true).unwrap();
    assert_eq!(vm.iommu.read_config().unwrap().bypass, Some(true));
    assert_eq!(
        vm.translate(unattached, page, "read")["translation"],
        json!({"gpa": page, "len": 1})
    );
    vm.expect_no_event(std::time::Duration::from_millis(50));
}

#[test]
fn boot_bypass_off_blocks_until_attached() {
    let mut vm = Vm::start(&["--boot-bypass", "off"], false);
    assert_eq!(vm.iommu.config().bypass, Some(false));
    let r = vm.translate(5, 0x4000_0000, "read");
    assert_eq!(r["fault"], fault_json("domain", 1, 5, 0x4000_0000, None));
    assert!(matches!(
        vm.wait_event(),
        Event::Fault(FaultEvent {
            reason: FaultReason::Domain,
            endpoint: 5,
            ..
        })
    ));
    // Attached to a bypass domain it passes although the config byte says block.
    vm.iommu.attach(1, 5, AttachFlags::BYPASS).unwrap();
    assert_eq!(
        vm.translate(5, 0x4000_0000, "read")["translation"],
        json!({"gpa": 0x4000_0000u64, "len": 1})
    );
    // Detached again: blocked again.
    vm.iommu.detach(1, 5).unwrap();
    assert_eq!(
        vm.translate(5, 0x4000_0000, "read")["fault"]["reason"],
        json!("domain")
    );
}
