//! The checks run through `virtio-iommu-driver`'s API: configuration, PROBE, ATTACH/DETACH,
//! MAP/UNMAP semantics, bypass, a 1000-MAP batch and the error statuses a driver can reach.
//!
//! A mapping's presence is observed through the device itself: a MAP over a present mapping
//! is refused with S_INVAL, and succeeds again once it is gone.

use std::time::Instant;

use virtio_drivers::transport::Transport;
use virtio_iommu_driver::{
    AttachFlags, EndpointInfo, Error, IommuConfig, MapFlags, Mapping, ReservedRegion,
    ResvMemSubtype, VirtIOIommu,
};

use super::hal::UserHal;
use super::report::{expect, DeviceKind, Report};

/// The driver over the user-space PCI transport.
pub type Iommu<T> = VirtIOIommu<UserHal, T>;

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

/// What the checks work with.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// Which device is under test.
    pub kind: DeviceKind,
    /// Endpoint ID of the first endpoint (a PCI function of the VM).
    pub ep: u32,
    /// Endpoint ID of a second endpoint.
    pub ep2: u32,
    /// Guest-physical address of 16 pages the mappings point at.
    pub target: u64,
}

fn rw(domain: u32, iova: u64, paddr: u64, size: u64) -> Mapping {
    Mapping {
        domain,
        iova,
        paddr,
        size,
        flags: MapFlags::READ | MapFlags::WRITE,
    }
}

/// The configuration of each device with its defaults. QEMU's q35 `aw-bits` default gives a
/// 39-bit input range; the daemon's default is the whole 64-bit space.
pub fn expected_config(kind: DeviceKind) -> IommuConfig {
    IommuConfig {
        page_size_mask: 0xffff_ffff_ffff_f000,
        input_start: 0,
        input_last: kind.pick((1 << 39) - 1, u64::MAX),
        domain_start: 0,
        domain_last: u32::MAX,
        probe_size: 512,
        bypass: Some(true),
    }
}

/// Runs every driver-level check.
pub fn run<T: Transport>(r: &mut Report, iommu: &mut Iommu<T>, s: &Setup) {
    r.check(
        "config",
        expect("config", *iommu.config(), expected_config(s.kind)),
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

fn probe<T: Transport>(r: &mut Report, iommu: &mut Iommu<T>, s: &Setup) {
    let want = EndpointInfo {
        reserved_regions: vec![ReservedRegion {
            kind: ResvMemSubtype::Msi,
            raw_subtype: ResvMemSubtype::Msi as u8,
            start: MSI_START,
            last: MSI_END,
        }],
        ..EndpointInfo::default()
    };
    r.check(
        "probe",
        expect("PROBE endpoint", iommu.probe(s.ep), Ok(want)),
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

fn map_unmap<T: Transport>(r: &mut Report, iommu: &mut Iommu<T>, s: &Setup) {
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
    r.check("map-unaligned-refused-by-driver", {
        let bad = rw(d, 0x10_0800, s.target, PAGE);
        expect("MAP at 0x100800", iommu.map(&bad), Err(Error::Unaligned))
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

fn bypass<T: Transport>(r: &mut Report, iommu: &mut Iommu<T>, s: &Setup) {
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
        let read_back = |iommu: &mut Iommu<T>| iommu.read_config().map(|c| c.bypass);
        expect("set_bypass(false)", iommu.set_bypass(false), Ok(()))
            .and_then(|()| expect("bypass read back", read_back(iommu), Ok(Some(false))))
            .and_then(|()| expect("set_bypass(true)", iommu.set_bypass(true), Ok(())))
            .and_then(|()| expect("bypass read back", read_back(iommu), Ok(Some(true))))
    });
}

fn batch<T: Transport>(r: &mut Report, iommu: &mut Iommu<T>, s: &Setup) {
    let d = 3;
    let base = 0x100_0000;
    let maps: Vec<Mapping> = (0..BATCH)
        .map(|i| rw(d, base + i * PAGE, s.target + (i % 16) * PAGE, PAGE))
        .collect();
    let start = Instant::now();
    r.check("batch-1000-map", {
        expect(
            "ATTACH",
            iommu.attach(d, s.ep, AttachFlags::empty()),
            Ok(()),
        )
        .and_then(|()| match iommu.map_batch(&maps) {
            Ok(results) => {
                let bad: Vec<(usize, &Result<(), Error>)> = results
                    .iter()
                    .enumerate()
                    .filter(|(_, res)| res.is_err())
                    .collect();
                r.info(format!(
                    "batch: {} MAPs in {:?}, {} failed",
                    results.len(),
                    start.elapsed(),
                    bad.len()
                ));
                expect("results", results.len(), maps.len())
                    .and_then(|()| expect("failed MAPs (index, error)", bad, Vec::new()))
            }
            Err(e) => Err(format!("batch aborted: {e}")),
        })
    });
    r.check("batch-1000-present", {
        let last = rw(d, base + (BATCH - 1) * PAGE, s.target, PAGE);
        expect("MAP over the last one", iommu.map(&last), Err(Error::Inval))
            .and_then(|()| expect("UNMAP all 1000", iommu.unmap(d, base, BATCH * PAGE), Ok(())))
            .and_then(|()| {
                let mid = rw(d, base + 500 * PAGE, s.target, PAGE);
                expect("MAP after the UNMAP", iommu.map(&mid), Ok(()))
            })
            .and_then(|()| expect("DETACH", iommu.detach(d, s.ep), Ok(())))
    });
}

fn errors<T: Transport>(r: &mut Report, iommu: &mut Iommu<T>, s: &Setup) {
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
