//! Isolation: an endpoint reaches only the mappings of the domain it is attached to, through
//! the control socket's `dma-read` (which goes through the emulated IOMMU and its IOTLB),
//! whatever moves, detaches, domain-ID reuse, UNMAP or PASID tables came before.

use super::*;
use crate::driver::vm::{data_page, fault_json, hex};
use serde_json::{json, Value};
use virtio_iommu_spec::ext::VtdFlags;
use virtio_iommu_spec::formats::x86;
use virtio_iommu_spec::Status;
use virtio_iommu_testkit::GuestMemory;

/// The IOVA every domain maps (outside guest RAM, which starts at 1 GiB: an identity
/// translation of it reaches nothing).
const X: u64 = 0x10_0000;

fn read(vm: &mut Vm, endpoint: u32, pasid: Option<u32>, iova: u64) -> Value {
    vm.cmd(
        "dma-read",
        json!({"endpoint": endpoint, "pasid": pasid, "iova": iova, "len": 4}),
    )
}

fn bytes_of(fill: u8) -> Value {
    json!({"ok": true, "data": hex(&[fill; 4])})
}

fn fault(vm: &mut Vm, endpoint: u32, pasid: Option<u32>, iova: u64) -> String {
    let r = read(vm, endpoint, pasid, iova);
    let f = &r["fault"];
    assert_eq!(
        *f,
        fault_json(
            f["reason"].as_str().unwrap_or("?"),
            1,
            endpoint,
            iova,
            pasid
        ),
        "{r}"
    );
    f["reason"].as_str().unwrap().to_owned()
}

fn map_x(domain: u32, gpa: u64) -> virtio_iommu_spec::Request {
    map(domain, X, X | 0xfff, gpa)
}

#[test]
fn endpoints_reach_only_their_domains_mappings() {
    let mut vm = Vm::start_logging("info", &["--boot-bypass", "off"]);
    let (p, q) = (data_page(0x11), data_page(0x22));
    assert_eq!(vm.send(&attach(1, 1)), Status::Ok);
    assert_eq!(vm.send(&attach(2, 2)), Status::Ok);
    assert_eq!(vm.send(&map_x(1, p)), Status::Ok);
    assert_eq!(read(&mut vm, 1, None, X), bytes_of(0x11));
    // Another domain's endpoint, an unattached one, and a PASID the domain has no table for.
    assert_eq!(fault(&mut vm, 2, None, X), "mapping");
    assert_eq!(fault(&mut vm, 3, None, X), "domain");
    assert_eq!(fault(&mut vm, 1, Some(1), X), "domain");
    assert_eq!(vm.send(&map_x(2, q)), Status::Ok);
    assert_eq!(read(&mut vm, 2, None, X), bytes_of(0x22));
    assert_eq!(read(&mut vm, 1, None, X), bytes_of(0x11));

    // 64 endpoints in 64 domains map the same IOVA to pages of their own; twice over, so the
    // second round is served from the IOTLB, whose slots they share.
    let pages: Vec<u64> = (0..64u8).map(data_page).collect();
    for (i, page) in (10u32..).zip(&pages) {
        assert_eq!(vm.send(&attach(i, i)), Status::Ok);
        assert_eq!(vm.send(&map_x(i, *page)), Status::Ok);
    }
    for _ in 0..2 {
        for (i, fill) in (10u32..74).zip(0u8..) {
            assert_eq!(read(&mut vm, i, None, X), bytes_of(fill), "endpoint {i}");
        }
    }

    // Endpoint 1 moves to domain 2 (domain 1 dies): it now sees domain 2's page.
    assert_eq!(vm.send(&attach(2, 1)), Status::Ok);
    assert_eq!(read(&mut vm, 1, None, X), bytes_of(0x22));
    // Domain 1 again, new and empty: nothing of the old one is reachable.
    assert_eq!(vm.send(&attach(1, 3)), Status::Ok);
    assert_eq!(fault(&mut vm, 3, None, X), "mapping");
    // Detached: nothing at all (bypass is off).
    assert_eq!(vm.send(&detach(2, 1)), Status::Ok);
    assert_eq!(fault(&mut vm, 1, None, X), "domain");
    assert_eq!(read(&mut vm, 2, None, X), bytes_of(0x22));
    // UNMAP after the IOTLB cached the translation.
    assert_eq!(vm.send(&unmap(2, 0, u64::MAX)), Status::Ok);
    assert_eq!(fault(&mut vm, 2, None, X), "mapping");
    // A bypass domain is the identity, not anybody's mappings.
    assert_eq!(vm.send(&attach_bypass(5, 4)), Status::Ok);
    assert_eq!(fault(&mut vm, 4, None, X), "unknown");
    assert_eq!(read(&mut vm, 4, None, p), bytes_of(0x11));
    vm.assert_alive();
}

/// A 4-level x86 first-stage table translating VA 0 to `gpa` (user, read-write).
fn x86_table(gpa: u64) -> u64 {
    let mem = GuestMemory::global();
    let table = x86::P | x86::RW | x86::US;
    let levels: Vec<u64> = (0..4).map(|_| data_page(0)).collect();
    for w in levels.windows(2) {
        mem.write(w[0], &(w[1] | table).to_le_bytes()).unwrap();
    }
    mem.write(levels[3], &(gpa | table | x86::A).to_le_bytes())
        .unwrap();
    levels[0]
}

#[test]
fn pasid_tables_belong_to_their_endpoint() {
    let mut vm = Vm::start_logging("info", &["--boot-bypass", "off", "--pasid-bits", "8"]);
    let (p, q) = (data_page(0x33), data_page(0x44));
    let pgd = x86_table(p);
    for ep in [5, 6] {
        assert_eq!(vm.send(&attach(6, ep)), Status::Ok);
    }
    assert_eq!(vm.send(&map_x(6, q)), Status::Ok);
    let t = vtd_table(1, 48, pgd, VtdFlags::empty());
    assert_eq!(vm.send(&attach_table(6, 5, t)), Status::Ok);
    assert_eq!(read(&mut vm, 5, Some(1), 0), bytes_of(0x33));
    // The domain's other endpoint, the same endpoint's other PASID: no table.
    assert_eq!(fault(&mut vm, 6, Some(1), 0), "domain");
    assert_eq!(fault(&mut vm, 5, Some(2), 0), "domain");
    // Without PASID both use the domain's mappings.
    for ep in [5, 6] {
        assert_eq!(read(&mut vm, ep, None, X), bytes_of(0x44));
    }
    // Endpoint 5 leaves and comes back: its table went with it.
    assert_eq!(vm.send(&detach(6, 5)), Status::Ok);
    assert_eq!(vm.send(&attach(6, 5)), Status::Ok);
    assert_eq!(fault(&mut vm, 5, Some(1), 0), "domain");
    assert_eq!(vm.stats()["tables"], json!(0));
    vm.assert_alive();
}
