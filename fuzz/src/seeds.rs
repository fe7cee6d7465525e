//! Seed inputs that build valid structures: every request type, both event records, every
//! probe property and a config space for `spec_decode`; well-behaved and specific hostile
//! devices for `driver_hostile_device`. `examples/make_seeds.rs` writes them to `corpus/`.

use virtio_iommu_spec::event::FaultFlags;
use virtio_iommu_spec::ext::{InvalCaches, InvalScope, PageRequestCaps, PageRespCode, VtdFlags};
use virtio_iommu_spec::request::{
    Attach, AttachFlags, AttachTable, Detach, Invalidate, Map, MapFlags, PageResp, Probe,
    TableDesc, Unmap,
};
use virtio_iommu_spec::{
    Config, FaultEvent, FaultReason, Features, PageRequest, ProbeWriter, Property, Request,
};
use zerocopy::IntoBytes;

use crate::device::{DevAct, Op, Queue, ReqSpec, Scenario, UsedLen};
use crate::engine::{EngineOp, EngineScenario, Header, Reply};
use crate::spec::Decoder;

/// One of every request, base and extension.
#[must_use]
pub fn requests() -> Vec<Request> {
    vec![
        Request::Attach(Attach {
            domain: 1,
            endpoint: 8,
            flags: AttachFlags::BYPASS,
        }),
        Request::Detach(Detach {
            domain: 1,
            endpoint: 8,
        }),
        Request::Map(Map {
            domain: 1,
            virt_start: 0x1000,
            virt_end: 0x1fff,
            phys_start: 0x8000,
            flags: MapFlags::READ | MapFlags::WRITE,
        }),
        Request::Unmap(Unmap {
            domain: 1,
            virt_start: 0,
            virt_end: u64::MAX,
        }),
        Request::Probe(Probe { endpoint: 8 }),
        Request::AttachTable(AttachTable {
            domain: 2,
            endpoint: 8,
            table: TableDesc::ArmSmmuV3 {
                s1fmt: 1,
                s1dss: 0,
                s1contextptr: 0x10_0000,
                s1cdmax: 8,
            },
        }),
        Request::AttachTable(AttachTable {
            domain: 2,
            endpoint: 8,
            table: TableDesc::Vtd {
                pasid: 1,
                addr_width: 48,
                pgd: 0x20_0000,
                flags: VtdFlags::empty(),
            },
        }),
        Request::Invalidate(Invalidate {
            domain: 2,
            caches: InvalCaches::IOTLB,
            scope: InvalScope::Range {
                pasid: Some(1),
                start: 0x40_0000,
                nr_pages: 4,
                granule: 12,
            },
            archid: Some(7),
            leaf: true,
        }),
        Request::Invalidate(Invalidate {
            domain: 2,
            caches: InvalCaches::all(),
            scope: InvalScope::Domain,
            archid: None,
            leaf: false,
        }),
        Request::PageResp(PageResp {
            endpoint: 8,
            pasid: Some(1),
            group_id: 3,
            code: PageRespCode::Success,
        }),
    ]
}

fn fault(pasid: Option<u32>) -> FaultEvent {
    FaultEvent {
        reason: FaultReason::Mapping,
        access: FaultFlags::READ | FaultFlags::WRITE,
        endpoint: 8,
        address: Some(0x1234_5000),
        pasid,
    }
}

fn page_request() -> PageRequest {
    PageRequest {
        endpoint: 8,
        pasid: Some(1),
        address: 0x40_0000,
        access: FaultFlags::WRITE,
        group_id: 3,
        last: true,
        private_data: Some([1, 2]),
    }
}

/// One of every probe property.
#[must_use]
pub fn properties() -> Vec<Property> {
    vec![
        Property::ResvMem {
            subtype: 1,
            start: 0xfee0_0000,
            end: 0xfeef_ffff,
        },
        Property::ResvMem {
            subtype: 0,
            start: 0x1000,
            end: 0x1fff,
        },
        Property::PageSizeMask(0xffff_f000),
        Property::InputRange {
            start: 0,
            end: (1 << 48) - 1,
        },
        Property::OutputSize(48),
        Property::PasidSize(16),
        Property::PageTableFormat(2),
        Property::PasidTableFormat(1),
        Property::PageRequest {
            caps: PageRequestCaps::all(),
            max_groups: 32,
        },
    ]
}

fn probe_area(props: &[Property]) -> Vec<u8> {
    let mut area = vec![0u8; props.iter().map(Property::encoded_len).sum()];
    let mut w = ProbeWriter::new(&mut area);
    for p in props {
        w.push(p).expect("sized for every property");
    }
    area
}

fn config(probe_size: u32) -> [u8; 40] {
    let c = Config {
        page_size_mask: 0xffff_ffff_ffff_f000.into(),
        input_range_start: 0.into(),
        input_range_end: ((1u64 << 48) - 1).into(),
        domain_range_start: 1.into(),
        domain_range_end: 1023.into(),
        probe_size: probe_size.into(),
        bypass: 1,
        reserved: [0; 3],
    };
    c.as_bytes().try_into().expect("40 bytes")
}

fn with(sel: Decoder, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![sel as u8];
    v.extend_from_slice(payload);
    v
}

/// Seeds of `spec_decode`.
#[must_use]
pub fn spec_decode() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = requests()
        .iter()
        .map(|r| with(Decoder::Request, r.encode().as_bytes()))
        .collect();
    out.push(with(Decoder::Event, &fault(None).encode_legacy()));
    out.push(with(Decoder::Event, &fault(Some(1)).encode_ext()));
    out.push(with(Decoder::Event, &page_request().encode()));
    out.push(with(Decoder::Probe, &probe_area(&properties())));
    out.push(with(Decoder::Config, &config(512)));
    out
}

/// A request completed with `S_OK` and the exact used length.
fn ok() -> DevAct {
    DevAct::Complete {
        queue: Queue::Request,
        pick: 0,
        status: 0,
        len: UsedLen::Exact,
        data: Vec::new(),
    }
}

fn event(data: &[u8]) -> DevAct {
    DevAct::Complete {
        queue: Queue::Event,
        pick: 0,
        status: 0,
        len: UsedLen::Raw(u32::try_from(data.len()).expect("small")),
        data: data.to_vec(),
    }
}

fn standard(extensions: bool, ops: Vec<Op>) -> Scenario {
    let mut features = (Features::INPUT_RANGE
        | Features::DOMAIN_RANGE
        | Features::MAP_UNMAP
        | Features::PROBE
        | Features::BYPASS_CONFIG)
        .bits();
    if extensions {
        features |= (Features::ATTACH_TABLE | Features::PAGE_REQUEST).bits();
    }
    Scenario {
        features,
        raw_features: false,
        config: config(512),
        config_len: None,
        unstable: false,
        reject_features: false,
        max_queue_size: None,
        extensions,
        ops,
    }
}

/// Seeds of `driver_hostile_device`.
#[must_use]
pub fn driver_hostile_device() -> Vec<Scenario> {
    let probe_ok = DevAct::Complete {
        queue: Queue::Request,
        pick: 0,
        status: 0,
        len: UsedLen::Exact,
        data: probe_area(&properties()),
    };
    let well_behaved = standard(
        false,
        vec![
            Op::Arm(vec![probe_ok.clone()]),
            Op::Request(ReqSpec::Probe(8)),
            Op::Arm(vec![ok()]),
            Op::Request(ReqSpec::Attach(1, 8, 0)),
            Op::Arm(vec![ok()]),
            Op::Request(ReqSpec::Map(1, 0x1000, 0x1fff, 0x8000, 3)),
            Op::Alloc(0x3000, 12),
            Op::Alloc(0x10_0000, 20),
            Op::Arm(vec![ok()]),
            Op::Request(ReqSpec::Unmap(1, 0x1000, 0x1fff)),
            Op::Device(vec![event(&fault(None).encode_legacy())]),
            Op::PollEvent,
            Op::SetBypass(false),
            Op::ReadConfig,
            Op::AckInterrupt,
        ],
    );
    let batch = standard(
        false,
        vec![
            Op::Arm(vec![ok(); 32]),
            Op::Arm(vec![ok(); 8]),
            Op::MapBatch(1, 0x10_0000, 0x1000, 40),
        ],
    );
    let non_blocking = standard(
        false,
        vec![
            Op::Submit(ReqSpec::Attach(1, 8, 0)),
            Op::Submit(ReqSpec::Map(1, 0x2000, 0x2fff, 0x9000, 1)),
            Op::Device(vec![
                DevAct::Complete {
                    queue: Queue::Request,
                    pick: 1,
                    status: 0,
                    len: UsedLen::Exact,
                    data: Vec::new(),
                },
                ok(),
            ]),
            Op::Poll(0),
            Op::Poll(1),
            Op::Wait(0),
        ],
    );
    let sva = standard(
        true,
        vec![
            Op::Arm(vec![probe_ok]),
            Op::Request(ReqSpec::Probe(8)),
            Op::Arm(vec![ok()]),
            Op::Request(ReqSpec::AttachVtd(2, 8, 1, 48, 0x20_0000, 0)),
            Op::Arm(vec![ok()]),
            Op::Request(ReqSpec::Invalidate(2, 7, Some(1))),
            Op::Device(vec![event(&page_request().encode())]),
            Op::Arm(vec![ok()]),
            Op::PageRequests(0),
            Op::Arm(vec![ok()]),
            Op::Request(ReqSpec::PageResp(8, Some(1), 3, 2)),
        ],
    );
    let hostile = standard(
        false,
        vec![
            Op::Arm(vec![DevAct::RawUsed {
                queue: Queue::Request,
                id: 0x1_0001,
                len: 4,
            }]),
            Op::Request(ReqSpec::Attach(1, 8, 0)),
            Op::Arm(vec![DevAct::Complete {
                queue: Queue::Request,
                pick: 0,
                status: 0,
                len: UsedLen::Raw(3),
                data: Vec::new(),
            }]),
            Op::Request(ReqSpec::Attach(1, 9, 0)),
            Op::Device(vec![
                DevAct::SetUsedIdx {
                    queue: Queue::Event,
                    idx: 0x8000,
                },
                DevAct::RawUsed {
                    queue: Queue::Event,
                    id: 3,
                    len: 0xffff_ffff,
                },
            ]),
            Op::PollEvent,
            Op::Device(vec![
                DevAct::Config {
                    offset: 0,
                    value: 0,
                },
                DevAct::ToggleUnstable,
            ]),
            Op::ReadConfig,
            Op::Arm(vec![DevAct::Complete {
                queue: Queue::Request,
                pick: 0,
                status: 0x7f,
                len: UsedLen::Exact,
                data: Vec::new(),
            }]),
            Op::Request(ReqSpec::Detach(1, 8)),
        ],
    );
    let mut refuses = standard(false, Vec::new());
    refuses.reject_features = true;
    let mut short_config = standard(false, Vec::new());
    short_config.config_len = Some(20);
    vec![
        well_behaved,
        batch,
        non_blocking,
        sva,
        hostile,
        refuses,
        short_config,
    ]
}

// ---- engine_requests ---------------------------------------------------------------------

fn req(r: Request) -> EngineOp {
    EngineOp::Request(r, Reply::Exact)
}

fn e_attach(domain: u32, endpoint: u32) -> EngineOp {
    req(Request::Attach(Attach {
        domain,
        endpoint,
        flags: AttachFlags::empty(),
    }))
}

fn e_map(domain: u32, start: u64, last: u64, phys: u64, flags: MapFlags) -> EngineOp {
    req(Request::Map(Map {
        domain,
        virt_start: start,
        virt_end: last,
        phys_start: phys,
        flags,
    }))
}

fn e_unmap(domain: u32, start: u64, last: u64) -> EngineOp {
    req(Request::Unmap(Unmap {
        domain,
        virt_start: start,
        virt_end: last,
    }))
}

fn e_translate(endpoint: u32, pasid: Option<u32>, iova: u64, write: bool) -> EngineOp {
    EngineOp::Translate {
        endpoint,
        pasid,
        iova,
        len: 0x1000,
        write,
    }
}

fn e_dma(endpoint: u32, pasid: Option<u32>, iova: u64, len: u8, write: bool) -> EngineOp {
    EngineOp::DmaStart {
        endpoint,
        pasid,
        iova,
        len,
        write,
        attrs: 0,
    }
}

/// The header of most seeds: extensions offered, bypass off at boot.
fn e_header() -> Header {
    Header {
        extensions: true,
        mmio: true,
        ..Header::default()
    }
}

/// An x86-64 4-level first-stage table at 0x1000 (PML4 0x1000, PDPT 0x2000, PD 0x3000,
/// PT 0x4000) mapping VA 0x40_0000 to 0x5_0000, user read/write.
fn x86_table() -> Vec<EngineOp> {
    use virtio_iommu_spec::formats::x86::{P, RW, US};
    let t = P | RW | US;
    vec![
        EngineOp::Entry(0x1000, 0x2000 | t),
        EngineOp::Entry(0x2000, 0x3000 | t),
        // PD index 2: VA 0x40_0000.
        EngineOp::Entry(0x3000 + 8 * 2, 0x4000 | t),
        EngineOp::Entry(0x4000, 0x5_0000 | t),
    ]
}

/// A linear CD table at 0x2_0000 with CDs 0 and 1 (ASID 7, T0SZ 25: the walk starts at L1)
/// pointing at AArch64 tables (L1 0x3_0000, L2 0x3_1000, L3 0x3_2000) mapping VA 0x40_0000 to
/// 0x6_0000, EL0 read/write.
fn arm_tables() -> Vec<EngineOp> {
    use virtio_iommu_spec::formats::aarch64::{AF, AP_EL0, TABLE_OR_PAGE, VALID};
    use virtio_iommu_spec::formats::cd_table::{CD0_AA64, CD0_ASID_SHIFT, CD0_V};
    let cd0 = CD0_V | CD0_AA64 | 25 | (7 << CD0_ASID_SHIFT);
    let tbl = VALID | TABLE_OR_PAGE;
    vec![
        EngineOp::Entry(0x2_0000, cd0),
        EngineOp::Entry(0x2_0008, 0x3_0000),
        EngineOp::Entry(0x2_0040, cd0),
        EngineOp::Entry(0x2_0048, 0x3_0000),
        EngineOp::Entry(0x3_0000, 0x3_1000 | tbl),
        EngineOp::Entry(0x3_1000 + 8 * 2, 0x3_2000 | tbl),
        EngineOp::Entry(0x3_2000, 0x6_0000 | tbl | AF | AP_EL0),
    ]
}

/// Seeds of `engine_requests`.
#[must_use]
pub fn engine_requests() -> Vec<EngineScenario> {
    let rw = MapFlags::READ | MapFlags::WRITE;
    let basic = EngineScenario {
        header: e_header(),
        ops: vec![
            e_attach(1, 0),
            e_attach(1, 1),
            e_map(1, 0x1_0000, 0x1_ffff, 0x2_0000, rw),
            e_map(1, 0x2_0000, 0x2_0fff, 0x1_0000_0000, MapFlags::READ),
            e_translate(0, None, 0x1_0800, true),
            EngineOp::Dma {
                endpoint: 0,
                pasid: None,
                iova: 0x1_fff0,
                len: 32,
                write: true,
                fill: 1,
            },
            EngineOp::Dma {
                endpoint: 1,
                pasid: None,
                iova: 0x1_fff0,
                len: 32,
                write: false,
                fill: 0,
            },
            e_unmap(1, 0x1_0000, 0x1_ffff),
            e_translate(1, None, 0x1_0800, false),
            EngineOp::PopEvent(24),
            e_unmap(1, 0x1_1000, 0x1_1fff),
            e_map(1, 0, u64::MAX, 0, rw),
            req(Request::Detach(Detach {
                domain: 1,
                endpoint: 0,
            })),
            e_translate(0, None, 0x1234, false),
        ],
    };
    let bypass_and_reserved = EngineScenario {
        header: Header {
            boot_bypass: true,
            ..e_header()
        },
        ops: vec![
            e_translate(3, None, 0x5000, true),
            req(Request::Attach(Attach {
                domain: 2,
                endpoint: 4,
                flags: AttachFlags::BYPASS,
            })),
            e_translate(4, None, 0x8_0000, false),
            e_attach(1, 5),
            e_map(1, 0x8_0000, 0x8_0fff, 0x8_0000, rw),
            e_map(1, 0xfee0_0000, 0xfee0_0fff, 0x1000, rw),
            e_map(1, 0x9_0000, 0x9_0fff, 0x1000, rw | MapFlags::MMIO),
            e_translate(5, None, 0xfee0_0040, true),
            e_translate(5, None, 0x8_0010, true),
            req(Request::Probe(Probe { endpoint: 4 })),
            EngineOp::Request(Request::Probe(Probe { endpoint: 8 }), Reply::Len(100)),
            EngineOp::Raw(vec![0x7f; 20], 4),
            e_attach(1, 4),
            EngineOp::WriteConfig(36, vec![0]),
            e_translate(6, None, 0x5000, false),
            EngineOp::WriteConfig(0, vec![1; 8]),
        ],
    };
    let mut limits = vec![e_attach(1, 0)];
    for i in 0..17 {
        let a = 0x10_0000 + i * 0x1000;
        limits.push(e_map(1, a, a + 0xfff, a, rw));
    }
    for d in 2..=6 {
        limits.push(e_attach(d, d));
    }
    limits.push(e_attach(1, 8));
    limits.push(e_attach(1, 9));
    limits.push(e_attach(1, 10));
    limits.push(e_unmap(1, 0, u64::MAX));
    let limits = EngineScenario {
        header: e_header(),
        ops: limits,
    };
    let mut vtd = vec![e_attach(1, 8)];
    vtd.extend(x86_table());
    vtd.extend([
        req(Request::AttachTable(AttachTable {
            domain: 1,
            endpoint: 8,
            table: TableDesc::Vtd {
                pasid: 1,
                addr_width: 48,
                pgd: 0x1000,
                flags: VtdFlags::empty(),
            },
        })),
        e_dma(8, Some(1), 0x40_0010, 16, true),
        e_dma(8, Some(1), 0x40_1000, 16, true),
        EngineOp::PopEvent(48),
        EngineOp::Entry(0x4008, 0x5_1000 | 7),
        req(Request::Invalidate(Invalidate {
            domain: 1,
            caches: InvalCaches::all(),
            scope: InvalScope::Pasid(1),
            archid: None,
            leaf: false,
        })),
        req(Request::PageResp(PageResp {
            endpoint: 8,
            pasid: Some(1),
            group_id: 0,
            code: PageRespCode::Success,
        })),
        EngineOp::Resume(0),
        e_dma(8, Some(1), 0x40_2000, 8, false),
        EngineOp::Advance(2000),
        EngineOp::Resume(0),
        EngineOp::PopEvent(48),
        e_dma(8, Some(1), 0x40_3000, 8, false),
        EngineOp::Cancel(0),
        EngineOp::Reset,
    ]);
    let vtd = EngineScenario {
        header: e_header(),
        ops: vtd,
    };
    let mut arm = vec![e_attach(1, 9), e_map(1, 0x7_0000, 0x7_0fff, 0x7_0000, rw)];
    arm.extend(arm_tables());
    arm.extend([
        req(Request::AttachTable(AttachTable {
            domain: 1,
            endpoint: 9,
            table: TableDesc::ArmSmmuV3 {
                s1fmt: 0,
                s1dss: 1,
                s1contextptr: 0x2_0000,
                s1cdmax: 1,
            },
        })),
        e_dma(9, Some(1), 0x40_0000, 64, true),
        e_dma(9, Some(0), 0x40_0100, 64, false),
        e_translate(9, None, 0x7_0000, false),
        e_dma(9, Some(1), 0x40_1000, 4, false),
        req(Request::Invalidate(Invalidate {
            domain: 1,
            caches: InvalCaches::IOTLB,
            scope: InvalScope::Range {
                pasid: Some(1),
                start: 0x40_0000,
                nr_pages: 1,
                granule: 12,
            },
            archid: Some(7),
            leaf: true,
        })),
        EngineOp::PopEvent(48),
        req(Request::PageResp(PageResp {
            endpoint: 9,
            pasid: Some(1),
            group_id: 0,
            code: PageRespCode::Failure,
        })),
        EngineOp::Resume(0),
        e_attach(2, 9),
        e_translate(9, None, 0x7_0000, false),
    ]);
    let arm = EngineScenario {
        header: e_header(),
        ops: arm,
    };
    let resets = EngineScenario {
        header: Header {
            boot_bypass: true,
            ..e_header()
        },
        ops: vec![
            e_attach(3, 2),
            e_map(3, 0x1000, 0x1fff, 0x3000, MapFlags::WRITE),
            EngineOp::WriteConfig(36, vec![0]),
            EngineOp::Reset,
            e_translate(2, None, 0x1000, true),
            EngineOp::SystemReset,
            EngineOp::Negotiate(0),
            e_map(3, 0x1000, 0x1fff, 0x3000, MapFlags::WRITE),
            e_attach(3, 2),
            EngineOp::Negotiate(u64::MAX),
            e_attach(3, 2),
        ],
    };
    let narrow = EngineScenario {
        header: Header {
            narrow: true,
            granule_64k: true,
            raw_features: true,
            features: (Features::MAP_UNMAP
                | Features::INPUT_RANGE
                | Features::DOMAIN_RANGE
                | Features::BYPASS_CONFIG)
                .bits(),
            ..Header::default()
        },
        ops: vec![
            e_attach(0, 0),
            e_attach(1, 0),
            e_map(1, 0x1000, 0x1fff, 0x1000, rw),
            e_map(1, 0x1_0000, 0x1_ffff, 0x1_0000, rw),
            e_map(1, 0xffff_ffff_0000, 0xffff_ffff_ffff, 0, rw),
            e_map(1, 0x1_0000_0000_0000, 0x1_0000_0000_ffff, 0, rw),
            req(Request::Probe(Probe { endpoint: 0 })),
            e_unmap(1, 0x1_8000, 0x1_ffff),
            e_unmap(1, 0x1000, 0xffff_ffff_ffff),
        ],
    };
    vec![basic, bypass_and_reserved, limits, vtd, arm, resets, narrow]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_seeds_decode_and_round_trip() {
        for s in spec_decode() {
            crate::spec::check(&s);
        }
        for r in requests() {
            assert_eq!(Request::parse(r.encode().as_bytes()), Ok(r));
        }
        let area = probe_area(&properties());
        let found: Vec<Property> = virtio_iommu_spec::ProbeProperties::new(&area).collect();
        assert_eq!(found, properties());
    }

    #[test]
    fn engine_seeds_encode_decode_and_run() {
        let o: Vec<_> = engine_requests()
            .iter()
            .map(|s| {
                assert_eq!(EngineScenario::decode(&s.encode()), *s);
                crate::engine::run(s)
            })
            .collect();
        let got = |x: &crate::engine::EngineOutcome| {
            (
                x.ok,
                x.refused,
                x.nomem,
                x.reached,
                x.parked,
                x.events,
                x.page_requests,
            )
        };
        // Basic: 2 ATTACH, 2 MAP, 2 UNMAP, DETACH answered; the whole-space MAP refused (MSI
        // window); the translation and the DMA read reach memory, the write into the
        // read-only mapping faults and its event is delivered.
        assert_eq!(got(&o[0]), (7, 1, 0, 2, 0, 1, 0), "{:?}", o[0]);
        // Bypass and reserved regions: MAPs onto RESERVED and MSI refused, a short PROBE area
        // and an unknown type refused; bypass, bypass domain and MSI window translate 1:1.
        assert_eq!(got(&o[1]), (5, 4, 0, 3, 0, 0, 0), "{:?}", o[1]);
        // Limits: 16 mappings, 4 domains, 6 attached endpoints; one past each is S_NOMEM.
        assert_eq!(got(&o[2]), (23, 4, 4, 0, 0, 0, 0), "{:?}", o[2]);
        // VT-d: DMA through the bound table; three DMAs park behind page requests: one
        // answered SUCCESS (completes), one timed out (faults), one cancelled.
        assert_eq!(got(&o[3]), (4, 0, 0, 2, 3, 2, 1), "{:?}", o[3]);
        // SMMUv3: DMA through CD 1 and CD 0, S1DSS bypass to the domain; a page request
        // answered FAILURE.
        assert_eq!(got(&o[4]), (6, 0, 0, 3, 1, 1, 1), "{:?}", o[4]);
        // Resets: MAP without MAP_UNMAP negotiated gets no reply.
        assert_eq!(got(&o[5]), (4, 1, 0, 0, 0, 0, 0), "{:?}", o[5]);
        // Narrow ranges, 64 KiB granule: out-of-range domain and addresses, unaligned MAP,
        // PROBE not negotiated and a splitting UNMAP refused.
        assert_eq!(got(&o[6]), (4, 5, 0, 0, 0, 0, 0), "{:?}", o[6]);
    }

    #[test]
    fn driver_seeds_encode_decode_and_run() {
        let outcomes: Vec<_> = driver_hostile_device()
            .iter()
            .map(|s| {
                assert_eq!(Scenario::decode(&s.encode()), *s);
                crate::device::run(s)
            })
            .collect();
        // The well-behaved device: PROBE (2 regions), ATTACH, MAP, UNMAP answered, two
        // allocations, one fault event.
        let o = outcomes[0];
        assert!(o.initialised);
        assert_eq!(
            (o.ok, o.reserved, o.allocs, o.events),
            (4, 2, 2, 1),
            "{o:?}"
        );
        // The batch: 40 MAPs, every one answered.
        assert_eq!(outcomes[1].ok, 40, "{:?}", outcomes[1]);
        // Submit, complete out of order, poll both; the wait after that finds a spent token.
        assert_eq!(outcomes[2].ok, 2, "{:?}", outcomes[2]);
        // vSVA: PROBE, ATTACH_TABLE, INVALIDATE, the page request answered, PAGE_RESP.
        assert_eq!(
            (outcomes[3].ok, outcomes[3].page_responses),
            (4, 1),
            "{:?}",
            outcomes[3]
        );
        // The hostile device: nothing succeeds, nothing panics.
        assert_eq!(outcomes[4].ok, 0, "{:?}", outcomes[4]);
        // A device that refuses the features, or whose config is short: no driver.
        assert!(!outcomes[5].initialised && !outcomes[6].initialised);
    }
}
