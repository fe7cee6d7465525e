//! The checks run through `virtio-iommu-driver`'s API: configuration, PROBE, ATTACH/DETACH,
//! MAP/UNMAP semantics, bypass, a 1000-MAP batch, the mapping limit and the error statuses a
//! driver can reach.
//!
//! A mapping's presence is observed through the device itself: a MAP over a present mapping
//! is refused with S_INVAL, and succeeds again once it is gone.

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use virtio_iommu_driver::{
    AttachFlags, EndpointInfo, Error, IommuConfig, MapFlags, Mapping, ReservedRegion,
    ResvMemSubtype,
};
use virtio_iommu_spec::ext::TableFormat;

use super::{Iommu, Setup};
use crate::cpu::rdtsc;
use crate::device_kind::DeviceKind;
use crate::report::{expect, Report};
use crate::tsc;

/// An endpoint ID no function of the VM has: bus 0x80 does not exist (the daemon runs with
/// `--endpoints 0-0xff`, bus 0). Not 0x10000: QEMU truncates endpoint IDs to 16 bits, so that
/// one is the host bridge 00:00.0 there.
pub const UNKNOWN_ENDPOINT: u32 = 0x8000;
/// The x86 MSI doorbell window both devices report.
const MSI_START: u64 = 0xfee0_0000;
const MSI_END: u64 = 0xfeef_ffff;
const PAGE: u64 = 0x1000;
/// Mappings in the batch check.
const BATCH: u64 = 1000;
/// The daemon's `--max-mappings` (per domain) in the test script.
pub const DAEMON_MAX_MAPPINGS: u64 = 1024;
/// The daemon's `--pasid-bits` in the test script.
pub const DAEMON_PASID_BITS: u8 = 16;
/// The daemon's `--max-page-request-groups` default.
const DAEMON_PAGE_REQUEST_GROUPS: u32 = 32;

/// A read-write mapping.
pub fn rw(domain: u32, iova: u64, paddr: u64, size: u64) -> Mapping {
    Mapping {
        domain,
        iova,
        paddr,
        size,
        flags: MapFlags::READ | MapFlags::WRITE,
    }
}

/// The configuration both devices have: QEMU's q35 `aw-bits` default gives a 39-bit input
/// range, and the script starts the daemon with the same (`--input-range 0-0x7fffffffff`).
pub fn expected_config() -> IommuConfig {
    IommuConfig {
        page_size_mask: 0xffff_ffff_ffff_f000,
        input_start: 0,
        input_last: (1 << 39) - 1,
        domain_start: 0,
        domain_last: u32::MAX,
        probe_size: 512,
        bypass: Some(true),
    }
}

/// Runs every driver-level check.
pub fn run(r: &mut Report, iommu: &mut Iommu, s: &Setup) {
    r.check(
        "config",
        expect("config", *iommu.config(), expected_config()),
    );
    probe(r, iommu, s);
    map_unmap(r, iommu, s);
    bypass(r, iommu, s);
    r.check("map-unknown-domain", {
        let m = rw(77, 0x10_0000, s.target, PAGE);
        expect("MAP to domain 77", iommu.map(&m), Err(Error::NoEnt)).and_then(|()| {
            expect(
                "UNMAP in domain 77",
                iommu.unmap(77, 0x10_0000, PAGE),
                Err(Error::NoEnt),
            )
        })
    });
    batch(r, iommu, s);
    errors(r, iommu, s);
}

/// What PROBE reports for an endpoint: the MSI window, and with the daemon's vSVA
/// extensions offered (`sva`), the PASID size, both table formats and page requests.
fn expected_probe(kind: DeviceKind, sva: bool) -> EndpointInfo {
    let mut info = EndpointInfo {
        reserved_regions: vec![ReservedRegion {
            kind: ResvMemSubtype::Msi,
            raw_subtype: ResvMemSubtype::Msi as u8,
            start: MSI_START,
            last: MSI_END,
        }],
        ..EndpointInfo::default()
    };
    if kind == DeviceKind::Daemon && sva {
        info.pasid_bits = Some(DAEMON_PASID_BITS);
        info.page_table_formats = vec![TableFormat::Vtd.code()];
        info.pasid_table_formats = vec![TableFormat::ArmSmmuV3.code()];
        info.page_request = Some(virtio_iommu_driver::PageRequestInfo {
            caps: virtio_iommu_spec::ext::PageRequestCaps::empty(),
            max_groups: DAEMON_PAGE_REQUEST_GROUPS,
        });
    }
    info
}

fn probe(r: &mut Report, iommu: &mut Iommu, s: &Setup) {
    r.check(
        "probe",
        expect(
            "PROBE endpoint",
            iommu.probe(s.ep),
            Ok(expected_probe(s.kind, s.sva)),
        ),
    );
    r.check(
        "probe-unknown-endpoint",
        expect(
            "PROBE unknown endpoint",
            iommu.probe(UNKNOWN_ENDPOINT),
            Err(Error::NoEnt),
        ),
    );
}

fn map_unmap(r: &mut Report, iommu: &mut Iommu, s: &Setup) {
    let d = 1;
    r.check(
        "attach",
        expect(
            "ATTACH",
            iommu.attach(d, s.ep, AttachFlags::empty()),
            Ok(()),
        ),
    );
    let m = rw(d, 0x10_0000, s.target, 4 * PAGE);
    r.check("map", expect("MAP 16 KiB", iommu.map(&m), Ok(())));
    r.check("map-overlap", {
        let tail = rw(d, 0x10_3000, s.target, 2 * PAGE);
        expect(
            "MAP over the last page",
            iommu.map(&tail),
            Err(Error::Inval),
        )
        .and_then(|()| expect("MAP of the same range", iommu.map(&m), Err(Error::Inval)))
    });
    r.check("map-msi-window", {
        // The reserved MSI window may not be mapped in a domain of an endpoint that has it.
        // QEMU does not check MAPs against reserved regions.
        let msi = rw(d, MSI_START, s.target, PAGE);
        expect(
            "MAP at the MSI doorbell",
            iommu.map(&msi),
            s.kind.pick(Ok(()), Err(Error::Inval)),
        )
        .and_then(|()| {
            expect(
                "UNMAP of the MSI page",
                iommu.unmap(d, MSI_START, PAGE),
                Ok(()),
            )
        })
    });
    r.check("map-unaligned-refused-by-driver", {
        let bad = rw(d, 0x10_0800, s.target, PAGE);
        expect("MAP at 0x100800", iommu.map(&bad), Err(Error::Unaligned))
    });
    r.check("map-outside-input-range-refused-by-driver", {
        let high = rw(d, 1 << 39, s.target, PAGE);
        expect("MAP at 2^39", iommu.map(&high), Err(Error::OutOfRange))
    });
    r.check("unmap", {
        expect("UNMAP 16 KiB", iommu.unmap(d, 0x10_0000, 4 * PAGE), Ok(()))
            .and_then(|()| expect("MAP again after UNMAP", iommu.map(&m), Ok(())))
            .and_then(|()| expect("UNMAP again", iommu.unmap(d, 0x10_0000, 4 * PAGE), Ok(())))
    });
    r.check("unmap-split", {
        let m2 = rw(d, 0x20_0000, s.target, 4 * PAGE);
        expect("MAP", iommu.map(&m2), Ok(()))
            .and_then(|()| {
                expect(
                    "UNMAP of the first page",
                    iommu.unmap(d, 0x20_0000, PAGE),
                    Err(Error::Range),
                )
            })
            .and_then(|()| {
                let last = rw(d, 0x20_3000, s.target, PAGE);
                expect(
                    "MAP over the kept mapping",
                    iommu.map(&last),
                    Err(Error::Inval),
                )
            })
            .and_then(|()| expect("UNMAP whole", iommu.unmap(d, 0x20_0000, 4 * PAGE), Ok(())))
    });
    r.check("unmap-covering", {
        // Two mappings and a gap, removed by one UNMAP spanning all of them.
        let a = rw(d, 0x40_0000, s.target, PAGE);
        let b = rw(d, 0x40_2000, s.target, PAGE);
        expect("MAP a", iommu.map(&a), Ok(()))
            .and_then(|()| expect("MAP b", iommu.map(&b), Ok(())))
            .and_then(|()| expect("UNMAP 64 KiB", iommu.unmap(d, 0x40_0000, 16 * PAGE), Ok(())))
            .and_then(|()| expect("MAP b again", iommu.map(&b), Ok(())))
            .and_then(|()| expect("UNMAP b", iommu.unmap(d, 0x40_2000, PAGE), Ok(())))
            .and_then(|()| expect("UNMAP of nothing", iommu.unmap(d, 0x50_0000, PAGE), Ok(())))
    });
    r.check("detach", {
        expect("DETACH", iommu.detach(d, s.ep), Ok(()))
            // The last endpoint left: the domain and its mappings are gone.
            .and_then(|()| expect("MAP in the left domain", iommu.map(&m), Err(Error::NoEnt)))
    });
}

fn bypass(r: &mut Report, iommu: &mut Iommu, s: &Setup) {
    let d = 2;
    r.check("attach-bypass", {
        expect(
            "ATTACH with F_BYPASS",
            iommu.attach(d, s.ep, AttachFlags::BYPASS),
            Ok(()),
        )
        .and_then(|()| {
            let m = rw(d, 0x10_0000, s.target, PAGE);
            expect("MAP in a bypass domain", iommu.map(&m), Err(Error::Inval))
        })
        .and_then(|()| {
            expect(
                "UNMAP in a bypass domain",
                iommu.unmap(d, 0x10_0000, PAGE),
                Err(Error::Inval),
            )
        })
        .and_then(|()| {
            expect(
                "ATTACH without F_BYPASS to the bypass domain",
                iommu.attach(d, s.ep2, AttachFlags::empty()),
                Err(Error::Inval),
            )
        })
        .and_then(|()| expect("DETACH", iommu.detach(d, s.ep), Ok(())))
    });
    r.check("set-bypass", {
        let read_back = |iommu: &mut Iommu| iommu.read_config().map(|c| c.bypass);
        expect("set_bypass(false)", iommu.set_bypass(false), Ok(()))
            .and_then(|()| expect("bypass read back", read_back(iommu), Ok(Some(false))))
            .and_then(|()| expect("set_bypass(true)", iommu.set_bypass(true), Ok(())))
            .and_then(|()| expect("bypass read back", read_back(iommu), Ok(Some(true))))
    });
}

/// The indices and errors of the failed results.
fn failures(results: &[Result<(), Error>]) -> Vec<(usize, Error)> {
    results
        .iter()
        .enumerate()
        .filter_map(|(i, res)| res.err().map(|e| (i, e)))
        .collect()
}

fn batch(r: &mut Report, iommu: &mut Iommu, s: &Setup) {
    let d = 3;
    let base = 0x100_0000;
    let page = |i: u64| rw(d, base + i * PAGE, s.target + (i % 16) * PAGE, PAGE);
    let maps: Vec<Mapping> = (0..BATCH).map(page).collect();
    r.check("batch-1000-map", {
        expect(
            "ATTACH",
            iommu.attach(d, s.ep, AttachFlags::empty()),
            Ok(()),
        )
        .and_then(|()| {
            let start = rdtsc();
            match iommu.map_batch(&maps) {
                Ok(results) => {
                    let bad = failures(&results);
                    r.info(format!(
                        "batch: {} MAPs in {} us, {} failed",
                        results.len(),
                        tsc::to_ns(rdtsc() - start) / 1000,
                        bad.len()
                    ));
                    expect("results", results.len(), maps.len())
                        .and_then(|()| expect("failed MAPs (index, error)", bad, Vec::new()))
                }
                Err(e) => Err(format!("batch aborted: {e}")),
            }
        })
    });
    r.check("map-limit-nomem", {
        // Fill the domain to the daemon's limit; one more is S_NOMEM there, state unchanged.
        // QEMU has no mapping limit.
        let more: Vec<Mapping> = (BATCH..DAEMON_MAX_MAPPINGS).map(page).collect();
        let extra = page(DAEMON_MAX_MAPPINGS);
        match iommu.map_batch(&more) {
            Ok(results) => expect(
                "failed MAPs up to the limit",
                failures(&results),
                Vec::new(),
            ),
            Err(e) => Err(format!("batch aborted: {e}")),
        }
        .and_then(|()| {
            expect(
                "MAP past the limit",
                iommu.map(&extra),
                s.kind.pick(Ok(()), Err(Error::NoMem)),
            )
        })
        .and_then(|()| {
            // With the daemon nothing was added: the range is free. With QEMU it is mapped.
            expect(
                "MAP of the same page again",
                iommu.map(&extra),
                s.kind.pick(Err(Error::Inval), Err(Error::NoMem)),
            )
        })
        .and_then(|()| {
            let first = DAEMON_MAX_MAPPINGS - 1;
            expect(
                "UNMAP of the last mapping below the limit",
                iommu.unmap(d, base + first * PAGE, 2 * PAGE),
                Ok(()),
            )
        })
        .and_then(|()| {
            let first = DAEMON_MAX_MAPPINGS - 1;
            expect(
                "MAP once below the limit again",
                iommu.map(&page(first)),
                Ok(()),
            )
        })
    });
    r.check("batch-1000-present", {
        let last = rw(d, base + (BATCH - 1) * PAGE, s.target, PAGE);
        expect("MAP over the last one", iommu.map(&last), Err(Error::Inval))
            .and_then(|()| {
                expect(
                    "UNMAP all",
                    iommu.unmap(d, base, (DAEMON_MAX_MAPPINGS + 1) * PAGE),
                    Ok(()),
                )
            })
            .and_then(|()| {
                let mid = rw(d, base + 500 * PAGE, s.target, PAGE);
                expect("MAP after the UNMAP", iommu.map(&mid), Ok(()))
            })
            .and_then(|()| expect("DETACH", iommu.detach(d, s.ep), Ok(())))
    });
}

fn errors(r: &mut Report, iommu: &mut Iommu, s: &Setup) {
    let d = 5;
    r.check(
        "attach-unknown-endpoint",
        expect(
            "ATTACH unknown endpoint",
            iommu.attach(d, UNKNOWN_ENDPOINT, AttachFlags::empty()),
            Err(Error::NoEnt),
        ),
    );
    r.check(
        "detach-unknown-endpoint",
        expect(
            "DETACH unknown endpoint",
            iommu.detach(d, UNKNOWN_ENDPOINT),
            Err(Error::NoEnt),
        ),
    );
    // QEMU forgets an endpoint when it is detached, so it answers "no such endpoint"; the
    // specification's answer for a known endpoint that is not attached is S_INVAL.
    r.check(
        "detach-unattached",
        expect(
            "DETACH of an unattached endpoint",
            iommu.detach(d, s.ep),
            Err(s.kind.pick(Error::NoEnt, Error::Inval)),
        ),
    );
    r.check("detach-wrong-domain", {
        expect(
            "ATTACH",
            iommu.attach(d, s.ep, AttachFlags::empty()),
            Ok(()),
        )
        .and_then(|()| {
            expect(
                "DETACH from another domain",
                iommu.detach(d + 1, s.ep),
                Err(Error::Inval),
            )
        })
        .and_then(|()| expect("DETACH", iommu.detach(d, s.ep), Ok(())))
    });
    r.check("attach-moves-endpoint", {
        // ATTACH of an attached endpoint to another domain moves it (DETACH + ATTACH); the old
        // domain, now empty, is gone.
        expect(
            "ATTACH d",
            iommu.attach(d, s.ep, AttachFlags::empty()),
            Ok(()),
        )
        .and_then(|()| {
            expect(
                "ATTACH d+1",
                iommu.attach(d + 1, s.ep, AttachFlags::empty()),
                Ok(()),
            )
        })
        .and_then(|()| {
            let m = rw(d, 0x10_0000, s.target, PAGE);
            expect("MAP in the old domain", iommu.map(&m), Err(Error::NoEnt))
        })
        .and_then(|()| expect("DETACH d+1", iommu.detach(d + 1, s.ep), Ok(())))
    });
}
