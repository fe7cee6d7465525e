//! vSVA through the unmodified driver, the real daemon and its control socket: PASID DMA
//! through tables the driver built in guest RAM (SMMUv3 CD tables with AArch64 stage 1, VT-d
//! first stage with 4 and 5 levels), the stage-1 IOTLB going stale until INVALIDATE, two
//! PASIDs of one endpoint, and what DMA without a PASID does under each Arm `s1dss`.

use super::guest::*;
use crate::driver::vm::*;
use serde_json::json;
use virtio_iommu_driver::sva::{CdLayout, S1Dss};
use virtio_iommu_driver::{AttachFlags, MapFlags, Mapping, PageRequestInfo};
use virtio_iommu_spec::ext::{PageRequestCaps, FORMAT_PGTF_VTD, FORMAT_PSTF_ARM_SMMU_V3};

const SVA_ARGS: [&str; 2] = ["--pasid-bits", "16"];

/// Every format, the Arm one in both CD-table layouts.
const ALL_FORMATS: [Format; 4] = [
    FORMATS[0],
    FORMATS[1],
    FORMATS[2],
    Format::Arm(CdLayout::Linear, S1Dss::Terminate),
];

#[test]
fn probe_advertises_the_extensions() {
    let mut vm = Vm::start(&SVA_ARGS, true);
    let info = vm.iommu.probe(3).unwrap();
    assert_eq!(info.pasid_bits, Some(16));
    assert_eq!(info.pasid_table_formats, [FORMAT_PSTF_ARM_SMMU_V3]);
    assert_eq!(info.page_table_formats, [FORMAT_PGTF_VTD]);
    assert_eq!(
        info.page_request,
        Some(PageRequestInfo {
            caps: PageRequestCaps::empty(),
            max_groups: 32
        })
    );
}

#[test]
fn pasid_dma_lands_in_the_mapped_page() {
    let mut vm = Vm::start(&SVA_ARGS, true);
    let mut bound = Vec::new();
    for (i, fmt) in (0u32..).zip(ALL_FORMATS) {
        let (domain, ep) = (10 + i, 10 + i);
        let mut sva = Sva::new(&mut vm.iommu, fmt, domain, ep);
        sva.add_pasid(&mut vm.iommu, 1);
        let page = data_page(0);
        let va = fmt.va_base();
        sva.map_page(1, va, page);

        let data = format!("PASID 1 via {fmt:?}").into_bytes();
        let r = dma_write(&mut vm.control, ep, Some(1), va + 0x234, &data);
        assert_eq!(r, json!({"ok": true}), "{fmt:?}");
        assert_eq!(read_guest(page + 0x234, data.len()), data, "{fmt:?}");
        assert_eq!(
            dma_read(&mut vm.control, ep, Some(1), va + 0x234, data.len()),
            read_ok(&data),
            "{fmt:?}"
        );
        let r = vm.ctl(
            "translate",
            json!({"endpoint": ep, "pasid": 1, "iova": va + 0x234, "len": 0x10_0000}),
        );
        assert_eq!(
            r["translation"],
            json!({"gpa": page + 0x234, "len": 0x1000 - 0x234}),
            "{fmt:?}: cut at the end of the 4 KiB leaf"
        );
        // An unbound PASID has no context: DOMAIN, not a page request.
        let r = dma_write(&mut vm.control, ep, Some(3), va, b"x");
        assert_eq!(
            r["fault"],
            fault_json("domain", 2, ep, va, Some(3)),
            "{fmt:?}"
        );
        bound.push(sva);
    }
    let stats = vm.stats();
    assert_eq!(stats["tables"], json!(ALL_FORMATS.len()));
    assert_eq!(stats["page_requests"]["raised"], json!(0));
}

#[test]
fn stale_translation_until_invalidate() {
    let mut vm = Vm::start(&SVA_ARGS, true);
    for (i, fmt) in (0u32..).zip(FORMATS) {
        let (domain, ep) = (20 + i, 20 + i);
        let mut sva = Sva::new(&mut vm.iommu, fmt, domain, ep);
        sva.add_pasid(&mut vm.iommu, 1);
        let (old, new) = (data_page(0xaa), data_page(0xbb));
        let va = fmt.va_base() + 0x20_0000;
        sva.map_page(1, va, old);
        // The first DMA walks the table and caches the leaf.
        assert_eq!(
            dma_read(&mut vm.control, ep, Some(1), va, 4),
            read_ok(&[0xaa; 4])
        );

        // Repoint the PTE without INVALIDATE: the device still uses the cached leaf.
        assert_eq!(sva.space(1).unmap(va, 0x1000), Ok(0x1000));
        sva.map_page(1, va, new);
        assert_eq!(
            dma_read(&mut vm.control, ep, Some(1), va, 4),
            read_ok(&[0xaa; 4]),
            "{fmt:?}: stale IOTLB entry expected before INVALIDATE"
        );
        vm.iommu.invalidate_range(domain, 1, va, 0x1000).unwrap();
        assert_eq!(
            dma_read(&mut vm.control, ep, Some(1), va, 4),
            read_ok(&[0xbb; 4]),
            "{fmt:?}: new translation after INVALIDATE"
        );
        // Unmapped and invalidated: the old page is no longer reachable.
        sva.space(1).unmap(va, 0x1000).unwrap();
        vm.iommu.invalidate_range(domain, 1, va, 0x1000).unwrap();
        let r = vm.ctl(
            "translate",
            json!({"endpoint": ep, "pasid": 1, "iova": va, "access": "read"}),
        );
        assert_eq!(
            r["fault"],
            fault_json("mapping", 1, ep, va, Some(1)),
            "{fmt:?}"
        );
    }
    assert!(vm.stats()["invalidate"]["ok"].as_u64().unwrap() >= 6);
}

#[test]
fn two_pasids_of_one_endpoint_use_their_own_tables() {
    let mut vm = Vm::start(&SVA_ARGS, true);
    for (i, fmt) in (0u32..).zip(FORMATS) {
        let (domain, ep) = (30 + i, 30 + i);
        let mut sva = Sva::new(&mut vm.iommu, fmt, domain, ep);
        sva.add_pasid(&mut vm.iommu, 1);
        sva.add_pasid(&mut vm.iommu, 2);
        let (one, two) = (data_page(0), data_page(0));
        let va = fmt.va_base();
        sva.map_page(1, va, one);
        sva.map_page(2, va, two);
        dma_write(&mut vm.control, ep, Some(1), va + 8, b"first");
        dma_write(&mut vm.control, ep, Some(2), va + 8, b"second");
        assert_eq!(read_guest(one + 8, 6), b"first\0", "{fmt:?}");
        assert_eq!(read_guest(two + 8, 6), b"second", "{fmt:?}");
        // DMA without a PASID does not reach either table (Arm TERM: DOMAIN; VT-d: the
        // domain's MAP mappings, of which there are none).
        let r = dma_write(&mut vm.control, ep, None, va, b"x");
        let reason = match fmt {
            Format::Arm(..) => "domain",
            Format::Vtd(_) => "mapping",
        };
        assert_eq!(r["fault"], fault_json(reason, 2, ep, va, None), "{fmt:?}");
    }
}

#[test]
fn arm_s1dss_decides_dma_without_pasid() {
    let mut vm = Vm::start(&SVA_ARGS, true);
    let va = 0x4000_0000_u64 - 0x1_0000; // below guest RAM: identity would not reach RAM
    for (i, dss) in (0u32..).zip([S1Dss::Terminate, S1Dss::Bypass, S1Dss::Ssid0]) {
        let (domain, ep) = (40 + i, 40 + i);
        let fmt = Format::Arm(CdLayout::TwoLevel, dss);
        let mut sva = Sva::new(&mut vm.iommu, fmt, domain, ep);
        sva.add_pasid(&mut vm.iommu, 0);
        sva.add_pasid(&mut vm.iommu, 1);
        let (stage1_p0, stage1_p1, stage2) = (data_page(0), data_page(0), data_page(0));
        sva.map_page(0, va, stage1_p0);
        sva.map_page(1, va, stage1_p1);
        vm.iommu
            .map(&Mapping {
                domain,
                iova: va,
                paddr: stage2,
                size: 0x1000,
                flags: MapFlags::READ | MapFlags::WRITE,
            })
            .unwrap();

        let r = dma_write(&mut vm.control, ep, None, va + 0x10, b"no pasid");
        let landed = match dss {
            S1Dss::Terminate => {
                assert_eq!(r["fault"], fault_json("domain", 2, ep, va + 0x10, None));
                None
            }
            S1Dss::Bypass => Some(stage2),
            S1Dss::Ssid0 => Some(stage1_p0),
        };
        if let Some(page) = landed {
            assert_eq!(r, json!({"ok": true}), "{dss:?}");
            assert_eq!(read_guest(page + 0x10, 8), b"no pasid", "{dss:?}");
        }
        for page in [stage1_p0, stage1_p1, stage2] {
            if Some(page) != landed {
                assert_eq!(read_guest(page + 0x10, 8), [0; 8], "{dss:?}");
            }
        }
        // PASID 1 (and PASID 0, explicitly) use their CDs whatever s1dss says.
        dma_write(&mut vm.control, ep, Some(1), va + 0x20, b"pasid 1");
        assert_eq!(read_guest(stage1_p1 + 0x20, 7), b"pasid 1", "{dss:?}");
        dma_write(&mut vm.control, ep, Some(0), va + 0x30, b"pasid 0");
        assert_eq!(read_guest(stage1_p0 + 0x30, 7), b"pasid 0", "{dss:?}");
    }
    // Without a CD table bound the domain's mappings apply (the plain endpoint).
    vm.iommu.attach(49, 49, AttachFlags::empty()).unwrap();
    let r = dma_write(&mut vm.control, 49, None, va, b"x");
    assert_eq!(r["fault"], fault_json("mapping", 2, 49, va, None));
}
