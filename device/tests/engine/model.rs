//! Model-based test: random request sequences against a deliberately naive reference model
//! (vectors and linear scans) of domains, endpoints and mappings. After every step the status,
//! the whole state (dump) and the counters must agree; translations check that the host mirror
//! (the emulated IOMMU, with its own interval tree and IOTLB) agrees too.

use std::collections::{BTreeMap, BTreeSet};

use crate::common::*;
use proptest::prelude::*;
use vhost_device_iommu::engine::{DomainDump, Dump, Engine, EngineConfig, Limits, MappingDump};
use vhost_device_iommu::host::Access;
use virtio_iommu_spec::event::FaultReason;
use virtio_iommu_spec::request::MapFlags;
use virtio_iommu_spec::{Features, Status};

const PAGE: u64 = 0x1000;
const INPUT_END: u64 = 0x1_ffff; // 32 pages
const DOMAINS: (u32, u32) = (1, 4);
const MAX_MAPPINGS: usize = 2;
const MAX_DOMAINS: usize = 3;
const MAX_ATTACHED: usize = 3;
const RESV: (u64, u64) = (0x8000, 0x8fff);

/// Endpoints 0–2 have a RESERVED region, 3 has none, 4 and up are unknown.
fn resv_of(ep: u32) -> Option<Vec<(u64, u64)>> {
    match ep {
        0..=2 => Some(vec![RESV]),
        3 => Some(vec![]),
        _ => None,
    }
}

fn config() -> EngineConfig {
    EngineConfig {
        input_range: (0, INPUT_END),
        domain_range: DOMAINS,
        endpoints: vec![eps(0..=2, vec![resv(RESV.0, RESV.1)]), eps(3..=3, vec![])],
        limits: Limits {
            max_mappings_per_domain: MAX_MAPPINGS,
            max_domains: MAX_DOMAINS,
            max_attached_endpoints: MAX_ATTACHED,
            ..Limits::default()
        },
        offer_mmio: true,
        boot_bypass: false,
        ..EngineConfig::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Attach {
        domain: u32,
        ep: u32,
        bypass: bool,
    },
    Detach {
        domain: u32,
        ep: u32,
    },
    Map {
        domain: u32,
        start: u64,
        pages: u64,
        phys: u64,
        flags: u32,
        skew: u8,
    },
    Unmap {
        domain: u32,
        start: u64,
        end: u64,
    },
    Translate {
        ep: u32,
        addr: u64,
        write: bool,
    },
    Reset,
}

fn op() -> impl Strategy<Value = Op> {
    let domain = 0u32..6;
    let ep = 0u32..5;
    let page = 0u64..34;
    prop_oneof![
        3 => (domain.clone(), ep.clone(), prop::bool::weighted(0.2))
            .prop_map(|(domain, ep, bypass)| Op::Attach { domain, ep, bypass }),
        1 => (domain.clone(), ep.clone()).prop_map(|(domain, ep)| Op::Detach { domain, ep }),
        8 => (domain.clone(), page.clone(), 1u64..4, 0u64..64, 0u32..8, 0u8..12).prop_map(
            |(domain, start, pages, phys, flags, skew)| Op::Map {
                domain,
                start,
                pages,
                phys,
                flags,
                skew
            }
        ),
        3 => (domain, page.clone(), page.clone())
            .prop_map(|(domain, start, end)| Op::Unmap { domain, start, end }),
        4 => (ep, 0u64..(34 * PAGE), any::<bool>())
            .prop_map(|(ep, addr, write)| Op::Translate { ep, addr, write }),
        1 => Just(Op::Reset),
    ]
}

#[derive(Debug, Default, Clone)]
struct MDomain {
    bypass: bool,
    eps: BTreeSet<u32>,
    /// (start, end, phys, flags), unordered.
    maps: Vec<(u64, u64, u64, u32)>,
}

#[derive(Debug, Default)]
struct Model {
    domains: BTreeMap<u32, MDomain>,
    attached: BTreeMap<u32, u32>,
    mmio: bool,
}

fn overlap(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

fn in_domain_range(d: u32) -> bool {
    DOMAINS.0 <= d && d <= DOMAINS.1
}

impl Model {
    fn leave(&mut self, ep: u32, domain: u32) {
        let d = self.domains.get_mut(&domain).unwrap();
        d.eps.remove(&ep);
        if d.eps.is_empty() {
            self.domains.remove(&domain);
        }
    }

    fn attach(&mut self, domain: u32, ep: u32, bypass: bool) -> Status {
        let Some(resv) = resv_of(ep) else {
            return Status::NoEnt;
        };
        if !in_domain_range(domain) {
            return Status::Range;
        }
        let old = self.attached.get(&ep).copied();
        match self.domains.get(&domain) {
            Some(d) => {
                if d.bypass != bypass {
                    return Status::Inval;
                }
                if old == Some(domain) {
                    return Status::Ok;
                }
                if resv
                    .iter()
                    .any(|r| d.maps.iter().any(|m| overlap(*r, (m.0, m.1))))
                {
                    return Status::Unsupp;
                }
            }
            None => {
                let frees = old.is_some_and(|o| self.domains[&o].eps.len() == 1);
                if self.domains.len() - usize::from(frees) >= MAX_DOMAINS {
                    return Status::NoMem;
                }
            }
        }
        if old.is_none() && self.attached.len() >= MAX_ATTACHED {
            return Status::NoMem;
        }
        if let Some(o) = old {
            self.leave(ep, o);
        }
        let d = self.domains.entry(domain).or_insert_with(|| MDomain {
            bypass,
            ..MDomain::default()
        });
        d.eps.insert(ep);
        self.attached.insert(ep, domain);
        Status::Ok
    }

    fn detach(&mut self, domain: u32, ep: u32) -> Status {
        if resv_of(ep).is_none() {
            return Status::NoEnt;
        }
        if !in_domain_range(domain) {
            return Status::Range;
        }
        if self.attached.get(&ep) != Some(&domain) {
            return Status::Inval;
        }
        self.attached.remove(&ep);
        self.leave(ep, domain);
        Status::Ok
    }

    fn map(&mut self, domain: u32, start: u64, end: u64, phys: u64, flags: u32) -> Status {
        if !in_domain_range(domain) {
            return Status::Range;
        }
        let mmio = self.mmio;
        let Some(d) = self.domains.get_mut(&domain) else {
            return Status::NoEnt;
        };
        if flags & 4 != 0 && !mmio {
            return Status::Inval;
        }
        if d.bypass || end < start {
            return Status::Inval;
        }
        if end > INPUT_END {
            return Status::Range;
        }
        if (start | phys | (end + 1)) & (PAGE - 1) != 0 {
            return Status::Range;
        }
        let on_resv = d
            .eps
            .iter()
            .flat_map(|e| resv_of(*e).unwrap())
            .any(|r| overlap(r, (start, end)));
        if on_resv || d.maps.iter().any(|m| overlap((m.0, m.1), (start, end))) {
            return Status::Inval;
        }
        if d.maps.len() >= MAX_MAPPINGS {
            return Status::NoMem;
        }
        d.maps.push((start, end, phys, flags));
        Status::Ok
    }

    fn unmap(&mut self, domain: u32, start: u64, end: u64) -> Status {
        if !in_domain_range(domain) {
            return Status::Range;
        }
        let Some(d) = self.domains.get_mut(&domain) else {
            return Status::NoEnt;
        };
        if d.bypass || end < start {
            return Status::Inval;
        }
        if end > INPUT_END {
            return Status::Range;
        }
        let inside = |m: &(u64, u64, u64, u32)| start <= m.0 && m.1 <= end;
        if d.maps
            .iter()
            .any(|m| overlap((m.0, m.1), (start, end)) && !inside(m))
        {
            return Status::Range;
        }
        d.maps.retain(|m| !inside(m));
        Status::Ok
    }

    fn translate(&self, ep: u32, addr: u64, write: bool) -> Result<u64, FaultReason> {
        let Some(resv) = resv_of(ep) else {
            return Err(FaultReason::Unknown);
        };
        let Some(d) = self.attached.get(&ep).map(|d| &self.domains[d]) else {
            return Err(FaultReason::Domain);
        };
        if d.bypass {
            return Ok(addr);
        }
        if resv.iter().any(|r| overlap(*r, (addr, addr))) {
            return Err(FaultReason::Mapping);
        }
        let m = d
            .maps
            .iter()
            .find(|m| m.0 <= addr && addr <= m.1)
            .ok_or(FaultReason::Mapping)?;
        let need = if write { 2 } else { 1 };
        if m.3 & need == 0 {
            return Err(FaultReason::Mapping);
        }
        Ok(m.2 + (addr - m.0))
    }

    fn dump(&self) -> Dump {
        Dump {
            bypass: false,
            domains: self
                .domains
                .iter()
                .map(|(id, d)| {
                    let mut maps = d.maps.clone();
                    maps.sort_unstable();
                    DomainDump {
                        id: *id,
                        bypass: d.bypass,
                        endpoints: d.eps.iter().copied().collect(),
                        mappings: maps
                            .into_iter()
                            .map(|m| MappingDump {
                                virt_start: m.0,
                                virt_last: m.1,
                                phys_start: m.2,
                                flags: m.3,
                            })
                            .collect(),
                    }
                })
                .collect(),
        }
    }
}

fn run(ops: &[Op], mmio: bool) -> Result<(), TestCaseError> {
    let mut features = Features::all();
    features.set(Features::MMIO, mmio);
    let mut v: Engine = dev_with(config(), features);
    let mut m = Model {
        mmio,
        ..Model::default()
    };
    for (i, op) in ops.iter().enumerate() {
        match *op {
            Op::Attach { domain, ep, bypass } => {
                let got = if bypass {
                    attach_bypass(&mut v, domain, ep)
                } else {
                    attach(&mut v, domain, ep)
                };
                prop_assert_eq!(got, m.attach(domain, ep, bypass), "step {}: {:?}", i, op);
            }
            Op::Detach { domain, ep } => {
                prop_assert_eq!(
                    detach(&mut v, domain, ep),
                    m.detach(domain, ep),
                    "step {}: {:?}",
                    i,
                    op
                );
            }
            Op::Map {
                domain,
                start,
                pages,
                phys,
                flags,
                skew,
            } => {
                let mut s = start * PAGE;
                let mut e = s + pages * PAGE - 1;
                let mut p = phys * PAGE;
                // Mostly aligned; sometimes skew one bound, or invert the range.
                match skew {
                    1 => s += 0x800,
                    2 => e -= 0x800,
                    3 => p += 0x800,
                    4 => std::mem::swap(&mut s, &mut e),
                    _ => {}
                }
                let flags_m = MapFlags::from_bits_truncate(flags);
                prop_assert_eq!(
                    map(&mut v, domain, s, e, p, flags_m),
                    m.map(domain, s, e, p, flags),
                    "step {}: {:?}",
                    i,
                    op
                );
            }
            Op::Unmap { domain, start, end } => {
                // Bounds land on page edges, mid-page, or inverted.
                let s = start * PAGE + if start % 3 == 1 { 0x800 } else { 0 };
                let e = end * PAGE + 0xfff;
                prop_assert_eq!(
                    unmap(&mut v, domain, s, e),
                    m.unmap(domain, s, e),
                    "step {}: {:?}",
                    i,
                    op
                );
            }
            Op::Translate { ep, addr, write } => {
                let access = if write { Access::Write } else { Access::Read };
                let got = v
                    .device_dma()
                    .translate(ep, None, addr, 1, access)
                    .map(|t| t.gpa)
                    .map_err(|f| f.reason);
                prop_assert_eq!(got, m.translate(ep, addr, write), "step {}: {:?}", i, op);
                while v.pop_event(24).is_some() {}
            }
            Op::Reset => {
                v.reset();
                m.domains.clear();
                m.attached.clear();
            }
        }
        prop_assert_eq!(v.dump(), m.dump(), "state after step {}: {:?}", i, op);
        let s = v.stats();
        let maps: usize = m.domains.values().map(|d| d.maps.len()).sum();
        prop_assert_eq!(s.mappings, u64::try_from(maps).unwrap());
        prop_assert_eq!(s.domains, u64::try_from(m.domains.len()).unwrap());
        prop_assert_eq!(
            s.attached_endpoints,
            u64::try_from(m.attached.len()).unwrap()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_reference_model(ops in prop::collection::vec(op(), 1..100), mmio in any::<bool>()) {
        run(&ops, mmio)?;
    }
}
