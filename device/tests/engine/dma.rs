//! DMA through the emulated host into real guest memory (`GuestRam`): mapped writes land
//! at the right guest-physical bytes, unmapped or forbidden accesses fault with the right
//! record, and the IOTLB never serves a stale translation.

use crate::common::*;
use vhost_device_iommu::engine::{Engine, EngineConfig};
use vhost_device_iommu::host::{Access, ReservedRegion};
use vhost_device_iommu::GuestRam;
use virtio_iommu_spec::event::{FaultFlags, FaultReason};
use virtio_iommu_spec::request::MapFlags;
use virtio_iommu_spec::{FaultEvent, Status};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic};

const RAM: u64 = 0x10_0000;
const RAM_SIZE: usize = 0x10_0000;
const RAM_END: u64 = RAM + 0x10_0000;

fn setup() -> (Engine, GuestMemoryAtomic<GuestRam>) {
    let cfg = EngineConfig {
        endpoints: vec![eps(
            0..=7,
            vec![resv(0x7000_0000, 0x7000_ffff), ReservedRegion::x86_msi()],
        )],
        ..small_config()
    };
    let mut v = dev(cfg);
    let mem = guest_memory(&[(RAM, RAM_SIZE)]);
    v.set_guest_memory(mem.clone());
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    (v, mem)
}

fn read_guest(mem: &GuestMemoryAtomic<GuestRam>, gpa: u64, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    mem.memory().read_slice(&mut b, GuestAddress(gpa)).unwrap();
    b
}

#[test]
fn mapped_write_lands_in_guest_memory_and_unmap_faults() {
    let (mut v, mem) = setup();
    assert_eq!(
        map(&mut v, 1, 0xabc0_0000, 0xabc0_1fff, RAM + 0x4000, RW),
        Status::Ok
    );
    let data: Vec<u8> = (0..=255u8).collect();
    v.device_dma().write(0, None, 0xabc0_0f80, &data).unwrap();
    assert_eq!(read_guest(&mem, RAM + 0x4f80, 256), data);
    let mut back = vec![0u8; 256];
    v.device_dma()
        .read(0, None, 0xabc0_0f80, &mut back)
        .unwrap();
    assert_eq!(back, data);
    assert!(!v.has_events());

    assert_eq!(unmap(&mut v, 1, 0xabc0_0000, 0xabc0_1fff), Status::Ok);
    let err = v
        .device_dma()
        .write(0, None, 0xabc0_0f80, &data)
        .unwrap_err();
    assert_eq!(
        err,
        FaultEvent {
            reason: FaultReason::Mapping,
            access: FaultFlags::WRITE,
            endpoint: 0,
            address: Some(0xabc0_0f80),
            pasid: None,
        }
    );
    let rec = v.pop_event(24).unwrap();
    assert_eq!(
        rec.as_bytes(),
        &[
            2, 0, 0, 0, // reason MAPPING, reserved
            0x02, 0x01, 0, 0, // flags WRITE | ADDRESS
            0, 0, 0, 0, // endpoint 0
            0, 0, 0, 0, // reserved1
            0x80, 0x0f, 0xc0, 0xab, 0, 0, 0, 0, // address
        ]
    );
    assert!(!v.has_events());
}

#[test]
fn dma_is_split_across_mappings() {
    let (mut v, mem) = setup();
    // IOVA-contiguous, guest-physically reversed.
    assert_eq!(map(&mut v, 1, 0x1000, 0x1fff, RAM + 0x9000, RW), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x2000, 0x2fff, RAM + 0x3000, RW), Status::Ok);
    let data = vec![0x5au8; 0x1800];
    v.device_dma().write(0, None, 0x1800, &data).unwrap();
    assert_eq!(read_guest(&mem, RAM + 0x9800, 0x800), vec![0x5a; 0x800]);
    assert_eq!(read_guest(&mem, RAM + 0x3000, 0x1000), vec![0x5a; 0x1000]);
    assert_eq!(read_guest(&mem, RAM + 0x97ff, 1), vec![0]);
    // Running past the last mapping faults at the first unmapped byte.
    let mut buf = vec![0u8; 0x1000];
    let f = v.device_dma().read(0, None, 0x2800, &mut buf).unwrap_err();
    assert_eq!((f.reason, f.address), (FaultReason::Mapping, Some(0x3000)));
    assert_eq!(f.access, FaultFlags::READ);
}

#[test]
fn permissions_are_enforced() {
    let (mut v, mem) = setup();
    assert_eq!(
        map(&mut v, 1, 0x1000, 0x1fff, RAM, MapFlags::READ),
        Status::Ok
    );
    let f = v
        .device_dma()
        .write(0, None, 0x1000, &[1, 2, 3])
        .unwrap_err();
    assert_eq!(
        (f.reason, f.access),
        (FaultReason::Mapping, FaultFlags::WRITE)
    );
    assert_eq!(read_guest(&mem, RAM, 3), vec![0, 0, 0]);
    let mut b = [0u8; 3];
    v.device_dma().read(0, None, 0x1000, &mut b).unwrap();
}

#[test]
fn bypass_and_unattached_endpoints() {
    let (mut v, mem) = setup();
    // Unattached, bypass off: DOMAIN.
    let f = v.device_dma().write(1, None, RAM, &[1]).unwrap_err();
    assert_eq!(f.reason, FaultReason::Domain);
    // Bypass domain: 1:1.
    assert_eq!(attach_bypass(&mut v, 2, 1), Status::Ok);
    v.device_dma().write(1, None, RAM + 0x10, &[7, 8]).unwrap();
    assert_eq!(read_guest(&mem, RAM + 0x10, 2), vec![7, 8]);
    // Global bypass: unattached endpoints 1:1.
    v.write_config(36, &[1]).unwrap();
    v.device_dma().write(3, None, RAM + 0x20, &[9]).unwrap();
    assert_eq!(read_guest(&mem, RAM + 0x20, 1), vec![9]);
}

#[test]
fn reserved_regions_of_translated_endpoints() {
    let (mut v, _) = setup();
    // MSI window: passed through untranslated.
    let t = v
        .device_dma()
        .translate(0, None, 0xfee0_1000, 4, Access::Write)
        .unwrap();
    assert_eq!((t.gpa, t.len), (0xfee0_1000, 4));
    // RESERVED region: MAPPING fault, as QEMU.
    let f = v
        .device_dma()
        .translate(0, None, 0x7000_0010, 4, Access::Read)
        .unwrap_err();
    assert_eq!(
        (f.reason, f.address),
        (FaultReason::Mapping, Some(0x7000_0010))
    );
}

#[test]
fn translated_outside_guest_ram_faults_unknown() {
    let (mut v, _) = setup();
    assert_eq!(
        map(&mut v, 1, 0x1000, 0x2fff, RAM_END - 0x1000, RW),
        Status::Ok
    );
    let f = v
        .device_dma()
        .write(0, None, 0x1ff0, &[0u8; 0x20])
        .unwrap_err();
    assert_eq!((f.reason, f.address), (FaultReason::Unknown, Some(0x2000)));
    assert!(v.pop_event(24).is_some());
}

#[test]
fn iotlb_never_serves_stale_translations() {
    let (mut v, mem) = setup();
    assert_eq!(map(&mut v, 1, 0x1000, 0x1fff, RAM, RW), Status::Ok);
    for _ in 0..3 {
        v.device_dma().write(0, None, 0x1000, &[1]).unwrap();
    }
    // Remap the same IOVA elsewhere: the next DMA must follow the new mapping.
    assert_eq!(unmap(&mut v, 1, 0x1000, 0x1fff), Status::Ok);
    assert!(v.device_dma().write(0, None, 0x1000, &[2]).is_err());
    assert_eq!(map(&mut v, 1, 0x1000, 0x1fff, RAM + 0x8000, RW), Status::Ok);
    v.device_dma().write(0, None, 0x1000, &[3]).unwrap();
    assert_eq!(read_guest(&mem, RAM, 1), vec![1]);
    assert_eq!(read_guest(&mem, RAM + 0x8000, 1), vec![3]);
    // Moving the endpoint to another domain drops its cached translations too.
    assert_eq!(attach(&mut v, 2, 0), Status::Ok);
    let f = v.device_dma().write(0, None, 0x1000, &[4]).unwrap_err();
    assert_eq!(f.reason, FaultReason::Mapping);
    // And a detach.
    assert_eq!(map(&mut v, 2, 0x1000, 0x1fff, RAM, RW), Status::Ok);
    v.device_dma().write(0, None, 0x1000, &[5]).unwrap();
    assert_eq!(detach(&mut v, 2, 0), Status::Ok);
    assert_eq!(
        v.device_dma()
            .write(0, None, 0x1000, &[6])
            .unwrap_err()
            .reason,
        FaultReason::Domain
    );
    assert_eq!(read_guest(&mem, RAM, 1), vec![5]);
}
