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
