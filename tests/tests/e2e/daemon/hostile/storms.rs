//! ATTACH/DETACH storms with MAPs in between: every answer is one the specification allows for
//! that request, the state stays consistent and within its limits, and nothing leaks: once
//! every endpoint is detached the whole budget is free again.

use std::collections::BTreeSet;

use super::*;
use serde_json::json;
use virtio_iommu_spec::{Request, Status};

const DOMAINS: u32 = 64;
const BUDGET: u64 = 2_000;
const ARGS: [&str; 10] = [
    "--endpoints",
    "0-255",
    "--max-domains",
    "64",
    "--max-total-mappings",
    "2000",
    "--max-mappings",
    "300",
    "--max-attached-endpoints",
    "200",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Attach,
    Detach,
    Map,
}

fn storm(rng: &mut Lcg, n: usize) -> Vec<(Kind, Request)> {
    (0..n)
        .map(|_| {
            // More domain IDs than the limit, endpoints past --endpoints now and then.
            let d = u32::try_from(1 + rng.next(100)).unwrap();
            let ep = u32::try_from(rng.next(270)).unwrap();
            match rng.next(10) {
                0..=3 => (Kind::Attach, attach(d, ep)),
                4..=5 => (Kind::Detach, detach(d, ep)),
                _ => {
                    let p = rng.next(512) << 12;
                    (Kind::Map, map(d, p, p | 0xfff, 0x4000_0000 + p))
                }
            }
        })
        .collect()
}

/// Domains of the dump as (id, endpoints, mapping count).
fn domains(vm: &mut Vm) -> Vec<(u64, Vec<u64>, usize)> {
    vm.domains()
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let eps = d["endpoints"].as_array().unwrap();
            (
                d["id"].as_u64().unwrap(),
                eps.iter().map(|e| e.as_u64().unwrap()).collect(),
                d["mappings"].as_array().unwrap().len(),
            )
        })
        .collect()
}

#[test]
fn attach_detach_storm_keeps_the_state_consistent_and_leaks_nothing() {
    let mut vm = Vm::start_logging("info", &ARGS);
    let mut rng = Lcg(12);
    for round in 0..4 {
        let reqs = storm(&mut rng, 3_000);
        let only: Vec<Request> = reqs.iter().map(|(_, r)| *r).collect();
        let statuses = pipeline(&mut vm, &only);
        for ((kind, req), s) in reqs.iter().zip(&statuses) {
            let allowed: &[Status] = match kind {
                Kind::Attach => &[Status::Ok, Status::NoEnt, Status::NoMem],
                Kind::Detach => &[Status::Ok, Status::NoEnt, Status::Inval],
                Kind::Map => &[Status::Ok, Status::NoEnt, Status::Inval, Status::NoMem],
            };
            assert!(allowed.contains(s), "round {round}: {req:?} → {s:?}");
        }
        assert!(
            count(&statuses, Status::NoMem) > 0,
            "round {round} hit no limit"
        );

        let ds = domains(&mut vm);
        let stats = vm.stats();
        assert!(ds.len() <= DOMAINS as usize, "{} domains", ds.len());
        let mut seen = BTreeSet::new();
        for (id, eps, _) in &ds {
            assert!(!eps.is_empty(), "domain {id} without endpoints");
            for ep in eps {
                assert!(
                    *ep < 256 && seen.insert(*ep),
                    "endpoint {ep} twice or unknown"
                );
            }
        }
        let mapped: usize = ds.iter().map(|d| d.2).sum();
        assert!(mapped as u64 <= BUDGET);
        assert_eq!(stats["mappings"], json!(mapped));
        assert_eq!(stats["domains"], json!(ds.len()));
        assert_eq!(stats["attached_endpoints"], json!(seen.len()));
        assert!(seen.len() <= 200);
        let answered: u64 = ["attach", "detach", "map"]
            .iter()
            .flat_map(|t| stats[*t].as_object().unwrap().values())
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(answered, 3_000 * (round + 1));
    }

    // Detach everything: no domain, no mapping, and the whole budget maps again.
    let mut detaches = Vec::new();
    for (id, eps, _) in domains(&mut vm) {
        for ep in eps {
            detaches.push(detach(
                u32::try_from(id).unwrap(),
                u32::try_from(ep).unwrap(),
            ));
        }
    }
    let s = pipeline(&mut vm, &detaches);
    assert_eq!(count(&s, Status::Ok), detaches.len());
    assert_eq!(vm.dump(), json!({"bypass": true, "domains": []}));
    assert_eq!(vm.stats()["mappings"], json!(0));
    let mut fill = Vec::new();
    for d in 1..=7u32 {
        fill.push(attach(d, d));
        fill.extend(map_pages(d, 0..300, 0x4000_0000));
    }
    let s = pipeline(&mut vm, &fill);
    assert_eq!(count(&s, Status::Ok), 7 + 2_000);
    assert_eq!(count(&s, Status::NoMem), 100);
    assert_eq!(vm.stats()["mappings"], json!(BUDGET));
    vm.assert_alive();
}
