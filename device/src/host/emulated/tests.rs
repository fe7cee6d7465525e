//! Unit tests of the emulated host: translation rules, reserved regions, the IOTLB, DMA
//! copies, and the reference counts of spaces.

use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic};

use crate::GuestRam;

use super::EmulatedHost;
use crate::host::{
    Access, AttachTarget, Fault, GuestRange, HostError, HostIommu, Perm, ReservedRegion, SpaceId,
};
use virtio_iommu_spec::event::FaultReason;
use virtio_iommu_spec::probe::ResvMemSubtype;

/// Read-write.
const RW: Perm = Perm::READ.union(Perm::WRITE);

fn mem() -> GuestMemoryAtomic<GuestRam> {
    // 64 KiB of RAM at 0x10000 and 64 KiB at 0x30000, with a hole in between.
    GuestMemoryAtomic::new(
        GuestRam::from_ranges(&[
            (GuestAddress(0x1_0000), 0x1_0000),
            (GuestAddress(0x3_0000), 0x1_0000),
        ])
        .unwrap(),
    )
}

/// A host over [`mem`] with endpoint 7 attached to a fresh, empty space.
fn host() -> (EmulatedHost, SpaceId) {
    let mut h = EmulatedHost::default();
    h.set_guest_memory(mem());
    let s = h.alloc_space().unwrap();
    h.attach(7, None, AttachTarget::Space(s)).unwrap();
    (h, s)
}

#[test]
fn translate_rules() {
    let (mut h, s) = host();
    h.map(s, 0x1000, 0x2fff, 0x1_0000, RW).unwrap();
    h.map(s, 0x3000, 0x3fff, 0x3_0000, Perm::READ).unwrap();
    assert_eq!(
        h.translate(7, None, 0x1800, 0x10_0000, Access::Write),
        Ok(GuestRange {
            gpa: 0x1_0800,
            len: 0x1800
        })
    );
    assert_eq!(
        h.translate(7, None, 0x3000, 4, Access::Write),
        Err(Fault {
            reason: FaultReason::Mapping,
            address: 0x3000
        })
    );
    assert_eq!(
        h.translate(7, None, 0x4000, 4, Access::Read)
            .unwrap_err()
            .reason,
        FaultReason::Mapping
    );
    // Unattached endpoint: DOMAIN unless unattached bypass is on.
    assert_eq!(
        h.translate(8, None, 0x1000, 4, Access::Read)
            .unwrap_err()
            .reason,
        FaultReason::Domain
    );
    h.set_unattached_bypass(true);
    assert_eq!(
        h.translate(8, None, u64::MAX, 4, Access::Read),
        Ok(GuestRange {
            gpa: u64::MAX,
            len: 1
        })
    );
    // PASID traffic without a PASID attachment faults even in bypass.
    assert_eq!(
        h.translate(8, Some(1), 0, 4, Access::Read)
            .unwrap_err()
            .reason,
        FaultReason::Domain
    );
    h.attach(8, None, AttachTarget::Blocked).unwrap();
    assert_eq!(
        h.translate(8, None, 0, 4, Access::Read).unwrap_err().reason,
        FaultReason::Domain
    );
}

#[test]
fn reserved_regions_on_translated_endpoints() {
    let (mut h, _) = host();
    let resv = ReservedRegion {
        start: 0x8000,
        last: 0x8fff,
        kind: ResvMemSubtype::Reserved,
    };
    h.set_reserved_regions(0..=10, &[resv, ReservedRegion::x86_msi()]);
    assert_eq!(
        h.translate(7, None, 0xfee0_0ff0, 0x100_0000, Access::Write),
        Ok(GuestRange {
            gpa: 0xfee0_0ff0,
            len: 0xf_f010
        })
    );
    assert_eq!(
        h.translate(7, None, 0x8000, 4, Access::Read)
            .unwrap_err()
            .reason,
        FaultReason::Mapping
    );
    // Endpoints outside the range have no regions.
    let s2 = h.alloc_space().unwrap();
    h.attach(11, None, AttachTarget::Space(s2)).unwrap();
    assert_eq!(
        h.translate(11, None, 0xfee0_0000, 4, Access::Write)
            .unwrap_err()
            .reason,
        FaultReason::Mapping
    );
}

#[test]
fn iotlb_is_used_and_invalidated() {
    let (mut h, s) = host();
    h.map(s, 0x1000, 0x1fff, 0x1_0000, RW).unwrap();
    h.translate(7, None, 0x1000, 1, Access::Read).unwrap();
    h.translate(7, None, 0x1008, 1, Access::Read).unwrap();
    assert_eq!(h.iotlb_stats().hits, 1);
    assert_eq!(h.iotlb_stats().misses, 1);
    assert_eq!(h.unmap(s, 0x1000, 0x1fff), Ok(0x1000));
    assert_eq!(
        h.translate(7, None, 0x1008, 1, Access::Read)
            .unwrap_err()
            .reason,
        FaultReason::Mapping
    );
    // Remapping the same IOVA elsewhere must not hit a stale entry.
    h.map(s, 0x1000, 0x1fff, 0x3_0000, RW).unwrap();
    assert_eq!(
        h.translate(7, None, 0x1008, 1, Access::Read).unwrap().gpa,
        0x3_0008
    );
    // Detach: back to the (blocked) default, no stale translation.
    h.detach(7, None).unwrap();
    assert_eq!(
        h.translate(7, None, 0x1008, 1, Access::Read)
            .unwrap_err()
            .reason,
        FaultReason::Domain
    );
}

#[test]
fn spaces_are_refcounted_and_capped() {
    let mut h = EmulatedHost::with_max_spaces(2);
    let a = h.alloc_space().unwrap();
    let b = h.alloc_space().unwrap();
    assert_eq!(h.alloc_space(), Err(HostError::NoMem));
    h.attach(1, None, AttachTarget::Space(a)).unwrap();
    assert_eq!(h.destroy_space(a), Err(HostError::Invalid));
    // Replace: a loses its user.
    h.attach(1, None, AttachTarget::Space(b)).unwrap();
    h.destroy_space(a).unwrap();
    assert_eq!(h.destroy_space(a), Err(HostError::Invalid));
    assert_eq!(
        h.attach(1, None, AttachTarget::Space(a)),
        Err(HostError::Invalid)
    );
    assert_eq!(h.attachment(1, None), Some(AttachTarget::Space(b)));
    h.detach(1, None).unwrap();
    h.destroy_space(b).unwrap();
    assert_eq!(h.space_count(), 0);
}

#[test]
fn dma_splits_across_mappings_and_faults_outside_ram() {
    let (mut h, s) = host();
    // IOVA 0x1000..0x2fff → two discontiguous guest pages.
    h.map(s, 0x1000, 0x1fff, 0x3_0000, RW).unwrap();
    h.map(s, 0x2000, 0x2fff, 0x1_0000, RW).unwrap();
    let data: Vec<u8> = (0..0x20u8).collect();
    h.dma_write(7, None, 0x1ff0, &data).unwrap();
    let g = h.mem.as_ref().unwrap().memory();
    let mut a = [0u8; 0x10];
    g.read_slice(&mut a, GuestAddress(0x3_0ff0)).unwrap();
    assert_eq!(&a[..], &data[..0x10]);
    g.read_slice(&mut a, GuestAddress(0x1_0000)).unwrap();
    assert_eq!(&a[..], &data[0x10..]);
    drop(g);
    let mut back = [0u8; 0x20];
    h.dma_read(7, None, 0x1ff0, &mut back).unwrap();
    assert_eq!(&back[..], &data[..]);
    // Running off the end of the second mapping faults at the first unmapped byte.
    let mut big = [0u8; 0x20];
    assert_eq!(
        h.dma_read(7, None, 0x2ff0, &mut big),
        Err(Fault {
            reason: FaultReason::Mapping,
            address: 0x3000
        })
    );
    // Mapped, but to a hole in guest RAM.
    h.map(s, 0x5000, 0x5fff, 0x2_0000, RW).unwrap();
    assert_eq!(
        h.dma_write(7, None, 0x5008, &data),
        Err(Fault {
            reason: FaultReason::Unknown,
            address: 0x5008
        })
    );
}
