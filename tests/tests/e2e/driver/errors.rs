//! Every device status the daemon can produce, surfaced by the unmodified driver as its typed
//! `Error`, with the state left as the protocol says (checked through the control socket).

use super::vm::*;
use serde_json::json;
use virtio_iommu_driver::{AttachFlags, Error, MapFlags, Mapping, TableDesc};
use virtio_iommu_spec::ext::{S1DSS_TERM, S1FMT_64KL2};

fn mapping(domain: u32, iova: u64, paddr: u64, size: u64) -> Mapping {
    Mapping {
        domain,
        iova,
        paddr,
        size,
        flags: MapFlags::READ | MapFlags::WRITE,
    }
}

#[test]
fn statuses_become_typed_errors() {
    let mut vm = Vm::start(&["--endpoints", "0-0xff", "--max-mappings", "2"], false);
    let page = data_page(0);
    let (domain, ep) = (1, 8);

    // S_NOENT: an endpoint the device does not have; a domain that does not exist.
    assert_eq!(
        vm.iommu.attach(domain, 0x100, AttachFlags::empty()),
        Err(Error::NoEnt)
    );
    assert_eq!(
        vm.iommu.map(&mapping(7, 0, page, 0x1000)),
        Err(Error::NoEnt)
    );

    // S_INVAL: DETACH of an endpoint that is not attached there.
    assert_eq!(vm.iommu.detach(domain, ep), Err(Error::Inval));

    vm.iommu.attach(domain, ep, AttachFlags::empty()).unwrap();
    vm.iommu.map(&mapping(domain, 0, page, 0x2000)).unwrap();
    // S_INVAL: overlapping MAP; MAP over the endpoint's MSI window.
    assert_eq!(
        vm.iommu.map(&mapping(domain, 0x1000, page, 0x1000)),
        Err(Error::Inval)
    );
    assert_eq!(
        vm.iommu.map(&mapping(domain, 0xfee0_0000, page, 0x1000)),
        Err(Error::Inval)
    );
    // S_INVAL: the domain exists as a normal domain, ATTACH asks for a bypass one.
    assert_eq!(
        vm.iommu.attach(domain, 9, AttachFlags::BYPASS),
        Err(Error::Inval)
    );
    // S_RANGE: UNMAP that would split a mapping; nothing is removed.
    assert_eq!(vm.iommu.unmap(domain, 0, 0x1000), Err(Error::Range));
    assert_eq!(
        vm.translate(ep, 0x1000, "read")["translation"],
        json!({"gpa": page + 0x1000, "len": 1})
    );
    // S_NOMEM: the third mapping of a domain limited to two.
    vm.iommu
        .map(&mapping(domain, 0x10_0000, page, 0x1000))
        .unwrap();
    assert_eq!(
        vm.iommu.map(&mapping(domain, 0x20_0000, page, 0x1000)),
        Err(Error::NoMem)
    );
    assert_eq!(vm.stats()["mappings"], json!(2));

    // Per-request errors of a batch come back in order; the good ones are applied.
    vm.iommu.unmap(domain, 0x10_0000, 0x1000).unwrap();
    let results = vm
        .iommu
        .map_batch(&[
            mapping(domain, 0x1000, page, 0x1000), // overlaps
            mapping(domain, 0x30_0000, page, 0x1000),
            mapping(domain, 0x40_0000, page, 0x1000), // third mapping
            mapping(99, 0, page, 0x1000),             // no such domain
        ])
        .unwrap();
    assert_eq!(
        results,
        [
            Err(Error::Inval),
            Ok(()),
            Err(Error::NoMem),
            Err(Error::NoEnt)
        ]
    );

    let stats = vm.stats();
    assert_eq!(stats["attach"]["noent"], json!(1));
    assert_eq!(stats["attach"]["inval"], json!(1));
    assert_eq!(stats["detach"]["inval"], json!(1));
    assert_eq!(stats["map"]["noent"], json!(2));
    assert_eq!(stats["map"]["inval"], json!(3));
    assert_eq!(stats["map"]["nomem"], json!(2));
    assert_eq!(stats["unmap"]["range"], json!(1));
    assert_eq!(stats["mappings"], json!(2));
}

#[test]
fn unsupported_table_format_is_unsupported() {
    let mut vm = Vm::start(&["--pasid-bits", "8"], true);
    vm.iommu.attach(1, 4, AttachFlags::empty()).unwrap();
    let table = data_page(0);
    // A 64 KiB-leaf CD table decodes but is not implemented: S_UNSUPP.
    let desc = TableDesc::ArmSmmuV3 {
        s1fmt: S1FMT_64KL2,
        s1dss: S1DSS_TERM,
        s1contextptr: table,
        s1cdmax: 8,
    };
    assert_eq!(vm.iommu.attach_table(1, 4, desc), Err(Error::Unsupported));
    // ATTACH_TABLE of an endpoint not attached to the domain: S_INVAL.
    let desc = TableDesc::ArmSmmuV3 {
        s1fmt: 0,
        s1dss: S1DSS_TERM,
        s1contextptr: table,
        s1cdmax: 8,
    };
    assert_eq!(vm.iommu.attach_table(2, 4, desc), Err(Error::Inval));
    assert_eq!(vm.stats()["attach_table"]["unsupp"], json!(1));
}
