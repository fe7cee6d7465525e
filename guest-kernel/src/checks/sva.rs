//! vSVA against the daemon (`--pasid-bits 16`): per table format, a guest "process" page
//! table built in kernel memory, bound to PASID 1 of an endpoint with ATTACH_TABLE, and a
//! simulated device (the host's `dma-write` with `pasid`) writing through it:
//!
//! 1. a write to a mapped virtual address lands in the mapped page;
//! 2. a write to an unmapped address raises a page request; the kernel, woken by the
//!    interrupt, maps a fresh page, sends INVALIDATE and PAGE_RESP SUCCESS, and the blocked
//!    DMA completes into that page;
//! 3. remapping a page without INVALIDATE leaves the device on the old page (its cached
//!    walk), and after INVALIDATE the next write lands in the new one.
//!
//! Formats: an SMMUv3 two-level context-descriptor table with AArch64 stage-1 tables, and an
//! x86-64 4-level first-stage table. Then the ATTACH_TABLE and PAGE_RESP error statuses.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use virtio_iommu_driver::sva::{
    CdLayout, CdTable, PageRequestGroups, Perms, S1Dss, Stage1Arm, SvaError, X86FirstStage,
    X86Levels,
};
use virtio_iommu_driver::{AttachFlags, Error, PageRequest, PageResp, PageRespCode, TableDesc};
use virtio_iommu_spec::event::FaultFlags;
use virtio_iommu_spec::ext::{VtdFlags, S1DSS_TERM, S1FMT_64KL2};

use super::driver::UNKNOWN_ENDPOINT;
use super::{irq, Iommu, Page, Setup};
use crate::hal::KernelHal;
use crate::host::{self, Dma, Expect, Op};
use crate::report::{expect, Report};

const PASID: u32 = 1;
const MAPPED_VA: u64 = 0x40_0000;
const FAULTING_VA: u64 = 0x50_0000;
const PAGE: u64 = 0x1000;
/// How long the host may take for one step.
const STEP_WAIT_MS: u32 = 10_000;

/// One process address space in either format (the CD table keeps its stage-1 tables).
enum Process {
    Arm(CdTable<KernelHal>, Stage1Arm<KernelHal>),
    X86(X86FirstStage<KernelHal>),
}

impl Process {
    fn new(arm: bool) -> Result<Process, SvaError> {
        if arm {
            let t = Stage1Arm::new(48)?;
            let mut cds = CdTable::new(CdLayout::TwoLevel, 16, S1Dss::Terminate)?;
            cds.set_cd(PASID, &t, 1)?;
            Ok(Process::Arm(cds, t))
        } else {
            Ok(Process::X86(X86FirstStage::new(X86Levels::Four)?))
        }
    }

    fn desc(&self) -> TableDesc {
        match self {
            Process::Arm(cds, _) => cds.desc(),
            Process::X86(t) => t.desc(PASID, VtdFlags::empty()),
        }
    }

    fn map(&mut self, va: u64, pa: u64) -> Result<(), SvaError> {
        let perms = Perms::USER_READ_WRITE;
        match self {
            Process::Arm(_, t) => t.map(va, pa, PAGE, perms),
            Process::X86(t) => t.map(va, pa, PAGE, perms),
        }
    }

    fn unmap(&mut self, va: u64) -> Result<u64, SvaError> {
        match self {
            Process::Arm(_, t) => t.unmap(va, PAGE),
            Process::X86(t) => t.unmap(va, PAGE),
        }
    }

    fn free_detached(&mut self) {
        match self {
            Process::Arm(_, t) => t.free_detached(),
            Process::X86(t) => t.free_detached(),
        }
    }
}

fn page() -> Result<Page, String> {
    Page::alloc().ok_or_else(|| String::from("no DMA page"))
}

/// The host writes `data` at `va` of PASID 1 (and waits for it, unless `background`).
fn device_write(ep: u32, va: u64, data: &[u8], background: bool) {
    let dma = Dma {
        endpoint: ep,
        pasid: Some(PASID),
        iova: va,
        op: Op::Write(data),
    };
    host::request(&dma, Expect::Ok, background);
}

/// A message for step `n` of `format`, so no step can see another's bytes.
fn message(format: &str, n: u8) -> Vec<u8> {
    format!("{format} step {n}: written by the device through PASID 1").into_bytes()
}

/// Drains page requests after each interrupt until one was resolved; the resolver maps a
/// fresh page at the faulting address, invalidates it and answers SUCCESS.
fn resolve_page_request(
    iommu: &mut Iommu,
    line: u8,
    process: &mut Process,
    domain: u32,
) -> Result<(PageRequest, Page, PageResp), String> {
    let mut groups = PageRequestGroups::new();
    let (result, _) = irq::wait_until(iommu, line, STEP_WAIT_MS, |iommu| {
        let mut resolved: Option<(PageRequest, Page)> = None;
        let mut failure: Option<String> = None;
        let drained = iommu.handle_page_requests(&mut groups, |iommu, req| {
            let fresh = page().and_then(|p| {
                process
                    .map(req.address & !(PAGE - 1), p.paddr)
                    .map_err(|e| format!("map: {e}"))?;
                iommu
                    .invalidate_range(domain, PASID, req.address, PAGE)
                    .map_err(|e| format!("INVALIDATE: {e}"))?;
                Ok(p)
            });
            match fresh {
                Ok(p) => {
                    resolved = Some((*req, p));
                    PageRespCode::Success
                }
                Err(e) => {
                    failure = Some(e);
                    PageRespCode::Invalid
                }
            }
        });
        let drained = match drained {
            Ok(d) => d,
            Err(e) => return Some(Err(format!("event queue: {e}"))),
        };
        if let Some(e) = failure {
            return Some(Err(e));
        }
        if !drained.faults.is_empty() {
            return Some(Err(format!("unexpected faults {:?}", drained.faults)));
        }
        if let Some((resp, e)) = drained.failed_responses.first() {
            return Some(Err(format!("PAGE_RESP {resp:?} refused: {e}")));
        }
        match (resolved, drained.responses.first()) {
            (Some((req, p)), Some(resp)) => Some(Ok((req, p, *resp))),
            _ => None,
        }
    })?;
    result
}

/// Every step for one format; returns the process so it outlives the binding.
fn one_format(
    r: &mut Report,
    iommu: &mut Iommu,
    name: &str,
    arm: bool,
    (domain, ep, line): (u32, u32, u8),
) {
    let mut process = match Process::new(arm) {
        Ok(p) => p,
        Err(e) => return r.check(&format!("sva-{name}-bind"), Err(format!("tables: {e}"))),
    };
    let bound = (|| {
        let a = page()?;
        process
            .map(MAPPED_VA, a.paddr)
            .map_err(|e| format!("map: {e}"))?;
        expect(
            "ATTACH",
            iommu.attach(domain, ep, AttachFlags::empty()),
            Ok(()),
        )?;
        expect(
            "bind_table (PROBE + ATTACH_TABLE)",
            iommu.bind_table(domain, ep, &process.desc()),
            Ok(()),
        )?;
        Ok(a)
    })();
    r.check(
        &format!("sva-{name}-bind"),
        bound.as_ref().map(|_| ()).map_err(String::clone),
    );
    let Ok(a) = bound else {
        return;
    };

    // 1. A DMA through the bound table.
    let m1 = message(name, 1);
    device_write(ep, MAPPED_VA + 0x100, &m1, false);
    r.check(
        &format!("sva-{name}-dma"),
        expect(
            "bytes in the mapped page",
            a.wait_for(0x100, &m1, STEP_WAIT_MS),
            m1.clone(),
        ),
    );

    // 2. A page request, resolved by the kernel.
    let m2 = message(name, 2);
    device_write(ep, FAULTING_VA + 0x80, &m2, true);
    r.check(
        &format!("sva-{name}-page-request"),
        resolve_page_request(iommu, line, &mut process, domain).and_then(|(req, p, resp)| {
            expect(
                "page request (endpoint, PASID, page, write, last)",
                (
                    req.endpoint,
                    req.pasid,
                    req.address & !(PAGE - 1),
                    req.access.contains(FaultFlags::WRITE),
                    req.last,
                ),
                (ep, Some(PASID), FAULTING_VA, true, true),
            )?;
            expect("PAGE_RESP code", resp.code, PageRespCode::Success)?;
            expect(
                "bytes the resumed DMA wrote into the new page",
                p.wait_for(0x80, &m2, STEP_WAIT_MS),
                m2.clone(),
            )
        }),
    );

    // 3. A remap without INVALIDATE: the device keeps using its cached walk.
    let stale = (|| {
        let b = page()?;
        process
            .unmap(MAPPED_VA)
            .map_err(|e| format!("unmap: {e}"))?;
        process
            .map(MAPPED_VA, b.paddr)
            .map_err(|e| format!("map: {e}"))?;
        let m3 = message(name, 3);
        device_write(ep, MAPPED_VA + 0x200, &m3, false);
        expect(
            "bytes in the OLD page (stale translation)",
            a.wait_for(0x200, &m3, STEP_WAIT_MS),
            m3.clone(),
        )?;
        expect(
            "the new page untouched",
            b.read(0x200, m3.len()),
            alloc::vec![0; m3.len()],
        )?;
        Ok(b)
    })();
    r.check(
        &format!("sva-{name}-stale-without-invalidate"),
        stale.as_ref().map(|_| ()).map_err(String::clone),
    );
    if let Ok(b) = stale {
        r.check(&format!("sva-{name}-after-invalidate"), {
            let m4 = message(name, 4);
            expect(
                "INVALIDATE",
                iommu.invalidate_range(domain, PASID, MAPPED_VA, PAGE),
                Ok(()),
            )
            .and_then(|()| {
                process.free_detached();
                device_write(ep, MAPPED_VA + 0x300, &m4, false);
                expect(
                    "bytes in the new page",
                    b.wait_for(0x300, &m4, STEP_WAIT_MS),
                    m4.clone(),
                )
            })
            .and_then(|()| {
                expect(
                    "the old page untouched",
                    a.read(0x300, m4.len()),
                    alloc::vec![0; m4.len()],
                )
            })
        });
    }
    // DETACH drops the endpoint's tables; only then may their memory go.
    r.check(
        &format!("sva-{name}-detach"),
        expect("DETACH", iommu.detach(domain, ep), Ok(())),
    );
    drop(process);
}

/// The extension requests' error statuses.
fn errors(r: &mut Report, iommu: &mut Iommu, s: &Setup) {
    let d = 13;
    let arm = |s1fmt| TableDesc::ArmSmmuV3 {
        s1fmt,
        s1dss: S1DSS_TERM,
        s1contextptr: 0x10_0000,
        s1cdmax: 4,
    };
    let vtd = |pasid| TableDesc::Vtd {
        pasid,
        addr_width: 48,
        pgd: 0x10_0000,
        flags: VtdFlags::empty(),
    };
    r.check("sva-attach-table-errors", {
        expect(
            "ATTACH_TABLE of an unknown endpoint",
            iommu.attach_table(d, UNKNOWN_ENDPOINT, arm(1)),
            Err(Error::NoEnt),
        )
        .and_then(|()| {
            expect(
                "ATTACH_TABLE to a domain the endpoint is not in",
                iommu.attach_table(d, s.ep, arm(1)),
                Err(Error::Inval),
            )
        })
        .and_then(|()| {
            expect(
                "ATTACH",
                iommu.attach(d, s.ep, AttachFlags::empty()),
                Ok(()),
            )
        })
        .and_then(|()| {
            expect(
                "ATTACH_TABLE s1fmt 64KL2 (not implemented)",
                iommu.attach_table(d, s.ep, arm(S1FMT_64KL2)),
                Err(Error::Unsupported),
            )
        })
        .and_then(|()| {
            expect(
                "ATTACH_TABLE VT-d PASID 2^16 (16 PASID bits)",
                iommu.attach_table(d, s.ep, vtd(1 << 16)),
                Err(Error::Inval),
            )
        })
        .and_then(|()| expect("DETACH", iommu.detach(d, s.ep), Ok(())))
    });
    r.check("sva-page-resp-errors", {
        let resp = |endpoint| PageResp {
            endpoint,
            pasid: Some(PASID),
            group_id: 7,
            code: PageRespCode::Success,
        };
        expect(
            "PAGE_RESP for a group never issued",
            iommu.page_response(&resp(s.ep)),
            Err(Error::Inval),
        )
        .and_then(|()| {
            expect(
                "PAGE_RESP of an unknown endpoint",
                iommu.page_response(&resp(UNKNOWN_ENDPOINT)),
                Err(Error::NoEnt),
            )
        })
    });
}

/// Every vSVA check, on a driver that negotiated the extensions.
pub fn run(r: &mut Report, iommu: &mut Iommu, s: &Setup, line: u8) {
    one_format(r, iommu, "arm", true, (11, s.ep, line));
    one_format(r, iommu, "x86", false, (12, s.ep2, line));
    errors(r, iommu, s);
}
