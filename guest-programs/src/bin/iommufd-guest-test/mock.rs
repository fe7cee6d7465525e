//! The selftest mock IOMMU (IOMMU_TEST_CMD): flat MAP/UNMAP seen in the mock page table,
//! bypass, nested HWPT, invalidation, page request → PAGE_RESP, stale cookies, object cleanup.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::ExitCode;

use vhost_device_iommu::host::iommufd::selftest as st;
use vhost_device_iommu::host::iommufd::{IommufdConfig, IommufdHost};
use vhost_device_iommu::host::{AttachTarget, HostError, HostIommu, Perm, SpaceId};
use virtio_iommu_spec::event::{FaultFlags, PageRequest};
use virtio_iommu_spec::ext::{InvalCaches, InvalScope, PageRespCode};
use virtio_iommu_spec::request::Invalidate;
use virtio_iommu_spec::Event;

use crate::memory::{guest_memory, host_address, pattern, write_mem, MIB};
use crate::report::Report;
use crate::smmu_mock::smmu_mock_test;

pub fn mock_test() -> ExitCode {
    let mut r = Report::new("iommufd-backend-mock");
    const EP: u32 = 1;
    // The mock IOMMU's aperture starts at 16 MiB: guest memory (IOVA = GPA in the master) too.
    let gpa = st::MOCK_APERTURE_START;
    let cfg = IommufdConfig {
        endpoints: Vec::new(),
        page_requests: true,
        iommufd_fd: None,
    };
    let mut host = match IommufdHost::open(&cfg) {
        Ok(h) => h,
        Err(e) => {
            r.check(false, format!("open the iommufd backend: {e}"));
            return r.finish();
        }
    };
    r.check(true, "IommufdHost::open (/dev/iommu, master IOAS)");
    let ids = match host.add_mock_endpoint(EP) {
        Ok(ids) => ids,
        Err(e) => {
            r.check(false, format!("add_mock_endpoint: {e}"));
            return r.finish();
        }
    };
    r.check(
        true,
        format!(
            "mock endpoint {EP}: stdev {} dev_id {}",
            ids.stdev_id, ids.dev_id
        ),
    );
    let ty = host.hw_info(EP).map(|h| h.data_type);
    r.check(
        ty == Some(0xfeed_beef),
        format!("GET_HW_INFO type {ty:x?} is the selftest's 0xfeedbeef"),
    );
    r.check(
        host.nesting(EP).is_ok(),
        format!("nesting probe on the mock: {:?}", host.nesting(EP)),
    );
    let resv = host.reserved_regions(EP).unwrap_or_default().to_vec();
    r.check(
        resv.first()
            .is_some_and(|z| z.start == 0 && z.last == st::MOCK_APERTURE_START - 1)
            && resv.iter().any(|z| z.start == st::MOCK_APERTURE_LAST + 1),
        format!("reserved regions = complement of the mock aperture: {resv:x?}"),
    );

    let memfile = Path::new("/tmp/iommufd-guest-mem");
    let mem = guest_memory(gpa, Some(memfile));
    write_mem(&mem, gpa, &pattern(1, 0x2_0000));
    host.set_guest_memory(mem.clone());
    let gm = host.guest_mappings().to_vec();
    r.check(
        gm.len() == 1 && gm[0].gpa == gpa && gm[0].len == MIB && gm[0].by_file,
        format!("guest memory (tmpfs file) mapped at IOVA = GPA with IOMMU_IOAS_MAP_FILE: {gm:x?}"),
    );
    // Host address of the guest memory: MD_CHECK_MAP compares the pages behind it.
    let hva = host_address(&mem, gpa);

    // Unattached default: bypass = the master IOAS (IOVA = GPA).
    host.set_unattached_bypass(true);
    let hwpt = host.attached_hwpt(EP).unwrap_or(0);
    r.check(
        st::md_check_map(host.iommufd(), hwpt, gpa, 0x2_0000, hva).is_ok(),
        format!("bypass: mock page table (hwpt {hwpt}) maps IOVA {gpa:#x} = GPA to guest memory"),
    );

    // Flat model: MAP = IOAS_COPY from the master, UNMAP = IOAS_UNMAP.
    let space = host.alloc_space().expect("alloc_space");
    let iova = 0x200_0000;
    let res = host.map(
        space,
        iova,
        iova + 0xffff,
        gpa + 0x1_0000,
        Perm::READ | Perm::WRITE,
    );
    r.check(
        res.is_ok(),
        format!(
            "map IOVA {iova:#x}+64K -> GPA {:#x} (IOAS_COPY): {res:?}",
            gpa + 0x1_0000
        ),
    );
    let res = host.attach(EP, None, AttachTarget::Space(space));
    let hwpt = host.attached_hwpt(EP).unwrap_or(0);
    r.check(
        res.is_ok(),
        format!("attach to space {space:?}: {res:?}, hwpt {hwpt}"),
    );
    r.check(
        st::md_check_map(host.iommufd(), hwpt, iova, 0x1_0000, hva + 0x1_0000).is_ok(),
        "mock page table maps the guest MAP to the right guest pages",
    );
    r.check(
        st::md_check_map(host.iommufd(), hwpt, gpa, 0x1000, hva).is_err(),
        "the domain does not see guest memory outside its mappings",
    );
    let res = host.map(space, iova, iova + 0xfff, gpa, Perm::READ);
    r.check(
        res == Err(HostError::Invalid),
        format!("overlapping map refused: {res:?}"),
    );
    let n = host.unmap(space, iova, iova + 0xffff);
    r.check(n == Ok(0x1_0000), format!("unmap returns 64 KiB: {n:?}"));
    r.check(
        st::md_check_map(host.iommufd(), hwpt, iova, 0x1000, hva + 0x1_0000).is_err(),
        "after unmap the mock page table no longer maps the IOVA",
    );
    let n = host.unmap(space, iova, iova + 0xffff);
    r.check(n == Ok(0), format!("unmap of nothing returns 0: {n:?}"));
    let res = host.map(space, iova, iova + 0xfff, gpa + 2 * MIB, Perm::READ);
    r.check(
        res.is_err(),
        format!("map of a GPA outside guest memory refused: {res:?}"),
    );

    // Nested: NEST_PARENT over the master, selftest nested HWPT with a fault queue.
    let data = st::hwpt_selftest_data(st::IOTLB_DEFAULT);
    let table = match host.alloc_nested(EP, None, st::HWPT_DATA_SELFTEST, &data, 0, true) {
        Ok(t) => t,
        Err(e) => {
            r.check(false, format!("alloc_nested: {e}"));
            return r.finish();
        }
    };
    r.check(
        true,
        format!("nested HWPT {} (selftest data, FAULT_ID_VALID)", table.0),
    );
    r.check(
        host.fault_fd().is_some(),
        "fault queue allocated, its fd is pollable",
    );
    let poll_fd = host.events_fd();
    r.check(
        poll_fd.is_ok(),
        format!(
            "the host events fd for the daemon's epoll (fault queue + vEVENTQs): {:?}",
            poll_fd.as_ref().err().map(ToString::to_string)
        ),
    );
    let res = host.attach(EP, None, AttachTarget::Table(table));
    r.check(
        res.is_ok() && host.attached_hwpt(EP) == Some(table.0),
        format!(
            "attach the nested HWPT: {res:?}, now on {:?}",
            host.attached_hwpt(EP)
        ),
    );
    let fd = host.iommufd();
    let all_default = (0..4).all(|i| st::md_check_iotlb(fd, table.0, i, st::IOTLB_DEFAULT).is_ok());
    r.check(
        all_default,
        "mock IOTLB entries start at IOMMU_TEST_IOTLB_DEFAULT",
    );
    let res = host.invalidate_raw(
        table,
        st::INVALIDATE_DATA_SELFTEST,
        8,
        &st::invalidate_selftest_entry(0, 1),
    );
    let fd = host.iommufd();
    r.check(
        res == Ok(1)
            && st::md_check_iotlb(fd, table.0, 1, 0).is_ok()
            && st::md_check_iotlb(fd, table.0, 0, st::IOTLB_DEFAULT).is_ok(),
        format!("HWPT_INVALIDATE of entry 1 clears exactly entry 1: {res:?}"),
    );
    let mut bad = st::invalidate_selftest_entry(0, 2);
    bad.extend(st::invalidate_selftest_entry(0, 7));
    let res = host.invalidate_raw(table, st::INVALIDATE_DATA_SELFTEST, 8, &bad);
    r.check(
        res == Err((HostError::Invalid, 1)),
        format!("batch with a bad second entry: first handled, then EINVAL: {res:?}"),
    );
    let res = host.invalidate_raw(
        table,
        st::INVALIDATE_DATA_SELFTEST,
        8,
        &st::invalidate_selftest_entry(st::INVALIDATE_FLAG_ALL, 0),
    );
    let fd = host.iommufd();
    r.check(
        res == Ok(1) && (0..4).all(|i| st::md_check_iotlb(fd, table.0, i, 0).is_ok()),
        format!("HWPT_INVALIDATE ALL clears every entry: {res:?}"),
    );
    let inval = Invalidate {
        domain: 1,
        caches: InvalCaches::IOTLB,
        scope: InvalScope::Domain,
        archid: None,
        leaf: false,
    };
    let res = host.invalidate(table, &inval);
    r.check(
        res == Err(HostError::Unsupported),
        format!("virtio INVALIDATE on a non-VT-d table: {res:?}"),
    );

    // Page requests: TRIGGER_IOPF -> fault fd -> page-request event -> PAGE_RESP -> kernel.
    let want = |group_id| {
        Some(Event::PageRequest(PageRequest {
            endpoint: EP,
            pasid: Some(1),
            address: 0xdead_b000,
            access: FaultFlags::READ | FaultFlags::WRITE,
            group_id,
            last: true,
            private_data: None,
        }))
    };
    let trig = |host: &IommufdHost, grp| {
        st::trigger_iopf(host.iommufd(), ids.dev_id, 1, grp, 3, 0xdead_b000)
    };
    r.check(
        host.poll_event().is_none() && !poll_fd.as_ref().is_ok_and(poll_readable),
        "no page request before TRIGGER_IOPF, the events fd is not readable",
    );
    let t = trig(&host, 2);
    let readable = poll_fd.as_ref().is_ok_and(poll_readable);
    r.check(
        readable,
        "the epoll fd becomes readable when a page request is pending",
    );
    let ev = host.poll_event();
    r.check(
        t.is_ok() && ev == want(2),
        format!("TRIGGER_IOPF -> page request event: {t:?} {ev:?}"),
    );
    r.check(
        host.pending_page_requests() == 1,
        "one group waits for the guest",
    );
    let res = host.page_response(EP, Some(1), 2, PageRespCode::Success);
    r.check(
        res.is_ok(),
        format!("PAGE_RESP SUCCESS written to the fault fd and accepted by the kernel: {res:?}"),
    );
    let res = host.page_response(EP, Some(1), 2, PageRespCode::Success);
    r.check(
        res == Err(HostError::Invalid),
        format!("a second response to the same group is refused: {res:?}"),
    );
    let t = trig(&host, 3);
    let ev = host.poll_event();
    let res = host.page_response(EP, Some(1), 3, PageRespCode::Failure);
    r.check(
        t.is_ok() && ev == want(3) && res.is_ok(),
        format!("PAGE_RESP FAILURE sent as INVALID and accepted: {res:?}"),
    );
    let t = trig(&host, 4);
    let ev = host.poll_event();
    let re = host.attach(EP, None, AttachTarget::Table(table));
    let res = host.page_response(EP, Some(1), 4, PageRespCode::Success);
    r.check(
        t.is_ok()
            && ev == want(4)
            && re.is_ok()
            && host.pending_page_requests() == 0
            && res == Err(HostError::Invalid),
        format!("re-attach drops the stale cookie (kernel answered it): {res:?}"),
    );

    // Cleanup: every object goes with the operation that ends its use.
    let res = host.detach(EP, None);
    r.check(
        res.is_ok() && host.attached_hwpt(EP).is_some(),
        format!("detach -> back to bypass: {res:?}"),
    );
    let res = host.destroy_table(table);
    r.check(
        res.is_ok() && !st::hwpt_exists(host.iommufd(), table.0, st::INVALIDATE_DATA_SELFTEST),
        format!("destroy_table removes the nested HWPT: {res:?}"),
    );
    let res = host.destroy_space(space);
    r.check(
        res.is_ok() && !st::ioas_exists(host.iommufd(), space.0),
        format!("destroy_space removes the IOAS: {res:?}"),
    );
    r.check(
        host.destroy_space(SpaceId(space.0)) == Err(HostError::Invalid),
        "destroying it twice is refused",
    );
    // The daemon's duplicate of the events fd goes first, as when the daemon stops.
    drop(poll_fd);
    host.remove_endpoint(EP);
    r.check(
        host.dev_id(EP).is_none(),
        "remove_endpoint destroys the mock device",
    );
    let again = host.add_mock_endpoint(EP);
    r.check(
        again.is_ok(),
        format!("the endpoint can be re-added: {:?}", again.map(|_| ())),
    );
    drop(host);
    smmu_mock_test(&mut r);
    r.finish()
}

/// Whether `f` is readable right now (poll with a zero timeout).
pub fn poll_readable(f: &File) -> bool {
    let mut p = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd for the duration of the call; timeout 0 never blocks.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & libc::POLLIN != 0
}
