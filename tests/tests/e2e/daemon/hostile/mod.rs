//! A hostile guest through the real socket (issue: every resource bounded, every outcome
//! exact): floods to and past the limits, whole-space MAPs, ATTACH/DETACH storms, page-request
//! floods, giant PASIDs and ranges, connection churn and a killed frontend, isolation between
//! domains. Each test reads the daemon's own accounting from `/proc/<pid>`: heap (`RssAnon`,
//! the part of `VmRSS` that is the daemon's; guest RAM pages it touches are shared memory),
//! fds and threads. The impossible avail index is in `chains.rs`, hostile guest tables in
//! `sva::hostile`.

mod connections;
mod floods;
mod isolation;
mod page_requests;
mod ranges;
mod storms;

use std::collections::HashMap;

use super::vm::*;
use virtio_iommu_spec::{Request, Status};

/// Chains in flight at once: the request ring holds two descriptors per request.
const IN_FLIGHT: usize = RQ_SIZE as usize / 2;

/// A `kB` field of `/proc/<pid>/status`.
fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The daemon's heap and other private memory, in KiB.
pub fn rss_anon_kib(pid: u32) -> u64 {
    status_kib(pid, "RssAnon")
}

/// The daemon's whole resident set, in KiB (private memory, its binary, guest RAM it touched).
pub fn vm_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// Sends `reqs` with up to a ring's worth in flight (one notification per refill) and returns
/// their statuses in order, each reply's framing checked.
pub fn pipeline(vm: &mut Vm, reqs: &[Request]) -> Vec<Status> {
    let mut statuses = vec![None; reqs.len()];
    let mut heads = HashMap::new();
    let (mut next, mut done) = (0, 0);
    while done < reqs.len() {
        if next < reqs.len() && vm.rq.in_flight() < IN_FLIGHT {
            while next < reqs.len() && vm.rq.in_flight() < IN_FLIGHT {
                let head = vm.rq.submit(&chain_of(&reqs[next])).expect("submit");
                heads.insert(head, next);
                next += 1;
            }
            vm.rq.kick(&vm.fe).expect("kick");
        }
        let c = vm.rq.wait_used(WAIT).expect("a completion");
        let i = heads.remove(&c.head).expect("a request in flight");
        statuses[i] = Some(reply_status(&c, reqs[i].writable_len(PROBE_SIZE)));
        done += 1;
    }
    statuses.into_iter().map(Option::unwrap).collect()
}

/// How many of `statuses` are `s`.
pub fn count(statuses: &[Status], s: Status) -> usize {
    statuses.iter().filter(|x| **x == s).count()
}

/// MAPs of pages `pages` of `domain`, page i at IOVA i · 4 KiB to GPA `phys` + i · 4 KiB.
pub fn map_pages(domain: u32, pages: std::ops::Range<u64>, phys: u64) -> Vec<Request> {
    pages
        .map(|i| map(domain, i << 12, (i << 12) | 0xfff, phys + (i << 12)))
        .collect()
}
