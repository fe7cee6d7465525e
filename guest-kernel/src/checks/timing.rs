//! Round trips measured with the TSC from inside the guest: one synchronous MAP, and a batch of
//! 64 MAPs (`map_batch`: one notification per 32 requests, the ring's capacity). Medians over
//! several rounds; each round's mappings are removed with one UNMAP outside the timed part.
//! The script prints both devices' figures side by side with their ratio.

use alloc::format;
use alloc::vec::Vec;

use virtio_iommu_driver::{AttachFlags, Mapping};

use super::driver::rw;
use super::{Iommu, Setup};
use crate::cpu::rdtsc;
use crate::println;
use crate::report::{expect, Report};
use crate::tsc;

const PAGE: u64 = 0x1000;
/// Synchronous MAPs timed.
const SINGLE_ROUNDS: u64 = 64;
/// Requests in a batch.
const BATCH: u64 = 64;
/// Batches timed.
const BATCH_ROUNDS: usize = 16;
const DOMAIN: u32 = 40;
const BASE: u64 = 0x800_0000;

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// Times the MAPs and prints `KERNEL-TIMING` for the script.
pub fn run(r: &mut Report, iommu: &mut Iommu, s: &Setup) {
    let result = (|| {
        expect(
            "ATTACH",
            iommu.attach(DOMAIN, s.ep, AttachFlags::empty()),
            Ok(()),
        )?;
        let mut single = Vec::new();
        for i in 0..SINGLE_ROUNDS {
            let m = rw(DOMAIN, BASE + i * PAGE, s.target, PAGE);
            let t0 = rdtsc();
            let res = iommu.map(&m);
            single.push(rdtsc() - t0);
            expect("timed MAP", res, Ok(()))?;
        }
        expect(
            "UNMAP",
            iommu.unmap(DOMAIN, BASE, SINGLE_ROUNDS * PAGE),
            Ok(()),
        )?;
        let maps: Vec<Mapping> = (0..BATCH)
            .map(|i| rw(DOMAIN, BASE + i * PAGE, s.target, PAGE))
            .collect();
        let mut batches = Vec::new();
        for _ in 0..BATCH_ROUNDS {
            let t0 = rdtsc();
            let res = iommu.map_batch(&maps);
            batches.push(rdtsc() - t0);
            match res {
                Ok(results) if results.iter().all(Result::is_ok) => {}
                Ok(results) => {
                    return Err(format!(
                        "{} of the batch's MAPs failed",
                        results.iter().filter(|x| x.is_err()).count()
                    ))
                }
                Err(e) => return Err(format!("batch aborted: {e}")),
            }
            expect("UNMAP", iommu.unmap(DOMAIN, BASE, BATCH * PAGE), Ok(()))?;
        }
        expect("DETACH", iommu.detach(DOMAIN, s.ep), Ok(()))?;
        let (map1, batch) = (median(single), median(batches));
        println!(
            "KERNEL-TIMING device={} map1_cycles={map1} map1_ns={} batch64_cycles={batch} batch64_ns={} per_request_ns={}",
            s.kind.name(),
            tsc::to_ns(map1),
            tsc::to_ns(batch),
            tsc::to_ns(batch) / BATCH
        );
        Ok(())
    })();
    r.check("timing", result);
}
