//! A device with one of everything a state carries, and the comparisons the tests share.

use std::time::Instant;

use crate::common::{attach, attach_bypass, map, probe, send};
use crate::sva::guest::{
    attach_table, config as sva_config, device, page_resp, vtd_table, Fmt, Guest, PageTable,
};
use vhost_device_iommu::engine::{
    DmaAttrs, DmaOp, DmaOutcome, DmaRequest, EndpointConfig, Engine, EngineConfig,
};
use vhost_device_iommu::host::{Access, EmulatedHost, ReservedRegion};
use virtio_iommu_spec::ext::{PageRespCode, VtdFlags};
use virtio_iommu_spec::request::MapFlags;
use virtio_iommu_spec::Status;
use virtio_iommu_testkit::requests as req;
pub use virtio_iommu_testkit::requests::RW;

/// The vSVA test endpoints (0–6) plus 16–31 with the x86 MSI window, bypass off at boot.
pub fn config() -> EngineConfig {
    let mut c = sva_config();
    c.endpoints.push(EndpointConfig {
        ids: 16..=31,
        reserved: vec![ReservedRegion::x86_msi()],
        ..EndpointConfig::default()
    });
    c
}

/// Mapped domain 2 (endpoints 16, 17): `MAPPINGS` 4 KiB pages at 1 MiB + 8 KiB · i.
pub const MAPPINGS: u64 = 100;
/// VA mapped in PASID 1 of endpoint 0.
pub const VA: u64 = 0x7f00_0000;
/// Where it lands.
pub const VA_PA: u64 = 0x20_3000;
/// An unmapped VA of PASID 1: its DMA waits for a page request.
pub const VA_UNMAPPED: u64 = 0x7f40_0000;

/// What [`build`] made.
#[derive(Debug)]
pub struct Rich {
    pub v: Engine,
    pub g: Guest,
    /// The page table of PASID 1 of endpoint 0 (kept alive: the device walks it).
    #[allow(dead_code)] // kept alive: the device walks it
    pub pt: PageTable,
    /// The outstanding group of endpoint 0.
    pub group: u16,
}

fn dma(v: &mut Engine, ep: u32, pasid: u32, iova: u64, now: Instant) -> DmaOutcome {
    v.device_dma().start(
        DmaRequest {
            endpoint: ep,
            pasid: Some(pasid),
            iova,
            op: DmaOp::Write(vec![0xab; 8]),
            attrs: DmaAttrs::default(),
        },
        now,
    )
}

/// Domains (mapped, bypass, with a VT-d table per PASID), an outstanding page request and a
/// fault waiting in the event queue, a stopped endpoint, `bypass` changed, counters of every
/// kind.
pub fn build(now: Instant) -> Rich {
    let (mut v, mut g) = device(config());
    assert_eq!(v.write_config(36, &[1]), Ok(()));
    // Domain 1: endpoint 0, a VT-d table for PASID 1 with one page, and two stage-2 mappings.
    assert_eq!(attach(&mut v, 1, 0), Status::Ok);
    let pt = PageTable::new(&mut g, Fmt::Vtd(48));
    pt.map(&mut g, VA, VA_PA);
    let d = vtd_table(1, 48, pt.root, VtdFlags::empty());
    assert_eq!(attach_table(&mut v, 1, 0, d), Status::Ok);
    assert_eq!(map(&mut v, 1, 0x4000, 0x7fff, 0x10_0000, RW), Status::Ok);
    assert_eq!(
        map(
            &mut v,
            1,
            0x1_0000_0000,
            0x1_001f_ffff,
            0x40_0000,
            MapFlags::READ
        ),
        Status::Ok
    );
    // Domain 2: endpoints 16 and 17, many pages.
    assert_eq!(attach(&mut v, 2, 16), Status::Ok);
    assert_eq!(attach(&mut v, 2, 17), Status::Ok);
    for i in 0..MAPPINGS {
        let iova = 0x10_0000 + 0x2000 * i;
        assert_eq!(
            map(&mut v, 2, iova, iova + 0xfff, 0x60_0000 + 0x1000 * i, RW),
            Status::Ok
        );
    }
    // Domain 3: a bypass domain.
    assert_eq!(attach_bypass(&mut v, 3, 18), Status::Ok);
    // Endpoint 1 gets its page requests stopped by a FAILURE.
    assert_eq!(attach(&mut v, 4, 1), Status::Ok);
    let pt1 = PageTable::new(&mut g, Fmt::Vtd(48));
    let d = vtd_table(2, 48, pt1.root, VtdFlags::empty());
    assert_eq!(attach_table(&mut v, 4, 1, d), Status::Ok);
    let DmaOutcome::Pending(_) = dma(&mut v, 1, 2, VA, now) else {
        panic!("expected a page request")
    };
    let ev = v.pop_event(48).expect("the page request");
    let gid = u16::from_le_bytes([ev.buf[24], ev.buf[25]]);
    assert_eq!(
        page_resp(&mut v, 1, Some(2), gid, PageRespCode::Failure),
        Status::Ok
    );
    // Endpoint 0 waits for a page request that stays queued, behind a fault of endpoint 16.
    assert!(v
        .device_dma()
        .translate(16, None, 0x9000_0000, 4, Access::Read)
        .is_err());
    let DmaOutcome::Pending(_) = dma(&mut v, 0, 1, VA_UNMAPPED, now) else {
        panic!("expected a page request")
    };
    let group = v.saved_state(now).groups[0].group_id;
    // Refusals for the counters.
    assert_eq!(map(&mut v, 2, 0x10_0000, 0x10_0fff, 0, RW), Status::Inval);
    assert_eq!(send(&mut v, req::probe(1000)), Status::NoEnt);
    let _ = probe(&mut v, 0, 512);
    Rich { v, g, pt, group }
}

/// A fresh device of `cfg` on the emulated host over `g`'s memory, nothing negotiated.
pub fn destination(cfg: EngineConfig, g: &Guest) -> Engine {
    let mut v = Engine::new(cfg, Box::new(EmulatedHost::new())).unwrap();
    v.set_guest_memory(g.mem.clone());
    v
}

/// Asserts that `b` is the device `a` is: the same saved state (bytes), dump, counters,
/// config space, PROBE answers and translations (stage 2 and through the PASID table).
pub fn assert_same_device(a: &mut Engine, b: &mut Engine, now: Instant) {
    assert_eq!(a.save_state(now), b.save_state(now), "saved states");
    assert_eq!(a.dump(), b.dump());
    assert_eq!(a.stats(), b.stats());
    assert_eq!(a.config_space(), b.config_space());
    assert_eq!(a.negotiated(), b.negotiated());
    let dump = a.dump();
    for d in &dump.domains {
        for m in &d.mappings {
            for ep in &d.endpoints {
                let mid = m.virt_start + (m.virt_last - m.virt_start) / 2;
                for iova in [m.virt_start, mid, m.virt_last] {
                    for access in [Access::Read, Access::Write] {
                        let ta = a.device_dma().translate(*ep, None, iova, 16, access);
                        let tb = b.device_dma().translate(*ep, None, iova, 16, access);
                        assert_eq!(ta, tb, "endpoint {ep} iova {iova:#x} {access:?}");
                    }
                }
            }
        }
    }
    for (ep, pasid, va) in [
        (0, Some(1), VA),
        (0, Some(1), VA + 0x800),
        (18, None, 0x1234_5000),
    ] {
        let ta = a.device_dma().translate(ep, pasid, va, 8, Access::Write);
        let tb = b.device_dma().translate(ep, pasid, va, 8, Access::Write);
        assert!(ta.is_ok(), "endpoint {ep} {pasid:?} {va:#x}: {ta:?}");
        assert_eq!(ta, tb);
    }
    for ep in [0, 4, 6, 16, 1000] {
        assert_eq!(probe(a, ep, 512), probe(b, ep, 512), "PROBE {ep}");
    }
}
