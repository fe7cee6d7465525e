//! `edu` behind an emulated VT-d: real DMA through a guest MAP, failing after UNMAP, bypass,
//! blocked, the nesting refusal (EOPNOTSUPP) reported, bind errors.

use std::fs::OpenOptions;
use std::os::fd::IntoRawFd;
use std::process::ExitCode;

use vhost_device_iommu::host::iommufd::selftest as st;
use vhost_device_iommu::host::iommufd::{IommufdConfig, IommufdHost, VfioEndpoint, VfioSource};
use vhost_device_iommu::host::{AttachTarget, HostError, HostIommu, Perm, ReservedRegion};
use virtio_iommu_spec::ext::VtdFlags;
use virtio_iommu_spec::request::TableDesc;

use crate::edu::{edu_cdev, edu_open, EDU_BUF, EDU_GPA, EP};
use crate::memory::{guest_memory, pattern, read_mem, write_mem};
use crate::report::Report;

pub fn vfio_test(bdf: &str, hw_type: u32) -> ExitCode {
    let mut r = Report::new("iommufd-backend-vfio");
    let gpa = EDU_GPA;
    let Some((spec, cdev)) = edu_cdev(&mut r, bdf) else {
        return r.finish();
    };

    // Bind through the PCI form; a second bind of the same device must fail clearly.
    {
        let first = IommufdHost::open(&IommufdConfig {
            endpoints: vec![spec.clone()],
            page_requests: false,
            iommufd_fd: None,
        });
        r.check(
            first.is_ok(),
            format!(
                "bind {bdf} via sysfs: {:?}",
                first.as_ref().err().map(ToString::to_string)
            ),
        );
        let second = IommufdHost::open(&IommufdConfig {
            endpoints: vec![VfioEndpoint {
                endpoint: EP,
                source: VfioSource::Cdev(cdev.clone()),
            }],
            page_requests: false,
            iommufd_fd: None,
        });
        match &second {
            Ok(_) => r.check(false, "a second bind of the same device was accepted"),
            Err(e) => r.check(true, format!("a second bind fails clearly: {e}")),
        };
    }

    // The main run shares our open file with the backend (`fd:N`), as a VMM would.
    let dev = match OpenOptions::new().read(true).write(true).open(&cdev) {
        Ok(f) => f,
        Err(e) => {
            r.check(false, format!("open {}: {e}", cdev.display()));
            return r.finish();
        }
    };
    let shared = dev.try_clone().expect("dup the device fd").into_raw_fd();
    let cfg = IommufdConfig {
        endpoints: vec![VfioEndpoint {
            endpoint: EP,
            source: VfioSource::Fd(shared),
        }],
        page_requests: false,
        iommufd_fd: None,
    };
    let mut host = match IommufdHost::open(&cfg) {
        Ok(h) => h,
        Err(e) => {
            r.check(false, format!("bind fd:{shared}: {e}"));
            return r.finish();
        }
    };
    r.check(true, format!("bound the inherited fd:{shared}"));
    let ty = host.hw_info(EP).map(|h| h.data_type);
    r.check(
        ty == Some(hw_type),
        format!("GET_HW_INFO type {ty:?} (expected {hw_type}: 1 VT-d, 0 none)"),
    );
    match host.nesting(EP) {
        Ok(()) => r.check(false, "the emulated IOMMU claims nesting support"),
        Err(why) => r.check(
            why.contains("EOPNOTSUPP"),
            format!("nesting refused and reported: {why}"),
        ),
    };
    let resv = host.reserved_regions(EP).unwrap_or_default().to_vec();
    r.check(
        resv.contains(&ReservedRegion::x86_msi()),
        format!("host reserved regions include the MSI window: {resv:x?}"),
    );
    r.check(
        host.page_size_mask(EP) == Some(!0xfff),
        format!("page size mask {:x?}", host.page_size_mask(EP)),
    );

    host.set_unattached_bypass(false);
    let mem = guest_memory(gpa, None);
    host.set_guest_memory(mem.clone());
    let gm = host.guest_mappings().to_vec();
    r.check(
        gm.len() == 1 && !gm[0].by_file,
        format!("anonymous guest memory mapped with IOMMU_IOAS_MAP: {gm:x?}"),
    );
    let Some(bar) = edu_open(&mut r, &dev) else {
        return r.finish();
    };

    // A guest domain: IOVA 0x200000 -> GPA+0x10000 (64 KiB), IOVA 0x300000 -> GPA+0x40000.
    let space = host.alloc_space().expect("alloc_space");
    let (iova, phys) = (0x20_0000, gpa + 0x1_0000);
    let (iova2, phys2) = (0x30_0000, gpa + 0x4_0000);
    let m1 = host.map(space, iova, iova + 0xffff, phys, Perm::READ | Perm::WRITE);
    let m2 = host.map(space, iova2, iova2 + 0xfff, phys2, Perm::READ | Perm::WRITE);
    let at = host.attach(EP, None, AttachTarget::Space(space));
    r.check(
        m1.is_ok() && m2.is_ok() && at.is_ok(),
        format!("map x2 + attach: {m1:?} {m2:?} {at:?}"),
    );

    let p1 = pattern(0x11, 4096);
    write_mem(&mem, phys, &p1);
    let done = bar.round_trip(iova, iova + 0x8000, 4096);
    r.check(
        done && read_mem(&mem, phys + 0x8000, 4096) == p1,
        "edu DMA through the guest MAP: bytes arrive (IOVA -> edu -> IOVA+32K)",
    );

    let n = host.unmap(space, iova, iova + 0xffff);
    r.check(n == Ok(0x1_0000), format!("unmap 64 KiB: {n:?}"));
    write_mem(&mem, phys + 0x8000, &[0; 4096]);
    let done = bar.dma(EDU_BUF, iova + 0x8000, 4096, true);
    r.check(
        done && read_mem(&mem, phys + 0x8000, 4096) == vec![0; 4096],
        "after UNMAP a DMA write to the IOVA does not reach memory",
    );
    let p2 = pattern(0x22, 4096);
    write_mem(&mem, phys, &p2);
    let done = bar.dma(iova, EDU_BUF, 4096, false) && bar.dma(EDU_BUF, iova2, 4096, true);
    r.check(
        done && read_mem(&mem, phys2, 4096) != p2,
        "after UNMAP a DMA read from the IOVA does not fetch memory",
    );
    r.check(
        read_mem(&mem, phys, 4096) == p2,
        "the unmapped source stays intact",
    );

    // Bypass: IOVA = GPA through the master IOAS.
    let p3 = pattern(0x33, 4096);
    write_mem(&mem, gpa + 0x2_0000, &p3);
    let at = host.attach(EP, None, AttachTarget::Bypass);
    let done = bar.round_trip(gpa + 0x2_0000, gpa + 0x3_0000, 4096);
    r.check(
        at.is_ok() && done && read_mem(&mem, gpa + 0x3_0000, 4096) == p3,
        format!("bypass: DMA at IOVA = GPA works: {at:?}"),
    );

    // Blocked: nothing gets through.
    write_mem(&mem, gpa + 0x3_0000, &[0; 4096]);
    let at = host.attach(EP, None, AttachTarget::Blocked);
    let done = bar.round_trip(gpa + 0x2_0000, gpa + 0x3_0000, 4096);
    r.check(
        at.is_ok() && done && read_mem(&mem, gpa + 0x3_0000, 4096) == vec![0; 4096],
        format!("blocked: DMA does not reach memory: {at:?}"),
    );

    // Detach falls back to the unattached default, now bypass.
    host.set_unattached_bypass(true);
    let dt = host.detach(EP, None);
    let done = bar.round_trip(gpa + 0x2_0000, gpa + 0x3_0000, 4096);
    r.check(
        dt.is_ok() && done && read_mem(&mem, gpa + 0x3_0000, 4096) == p3,
        format!("detach -> unattached default (bypass) works: {dt:?}"),
    );

    // Nested tables: the emulated VT-d cannot nest; the backend says so and stays flat.
    let desc = TableDesc::Vtd {
        pasid: 0,
        addr_width: 48,
        pgd: gpa,
        flags: VtdFlags::empty(),
    };
    let t = host.alloc_table(EP, None, &desc);
    r.check(
        t == Err(HostError::Unsupported),
        format!("ATTACH_TABLE VT-d without host nesting: {t:?} (flat model stays)"),
    );
    let arm = TableDesc::ArmSmmuV3 {
        s1fmt: 0,
        s1dss: 0,
        s1contextptr: gpa,
        s1cdmax: 0,
    };
    let t = host.alloc_table(EP, None, &arm);
    r.check(
        t == Err(HostError::Unsupported),
        format!("ATTACH_TABLE Arm on an IOMMU without vIOMMU: {t:?}"),
    );

    let res = host.destroy_space(space);
    r.check(
        res.is_ok() && !st::ioas_exists(host.iommufd(), space.0),
        format!("destroy_space removes the IOAS: {res:?}"),
    );
    drop(bar);
    drop(host);
    drop(dev);
    // Dropping the backend unbound the device: it can be bound again.
    let again = IommufdHost::open(&IommufdConfig {
        endpoints: vec![VfioEndpoint {
            endpoint: EP,
            source: VfioSource::Cdev(cdev),
        }],
        page_requests: false,
        iommufd_fd: None,
    });
    r.check(
        again.is_ok(),
        format!(
            "after drop the device binds again: {:?}",
            again.err().map(|e| e.to_string())
        ),
    );
    r.finish()
}
