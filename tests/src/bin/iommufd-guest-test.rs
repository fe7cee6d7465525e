//! Runs inside a QEMU guest booted with the iommufd test kernel (scripts/test-iommufd.sh) and
//! drives the daemon's iommufd host backend against the real kernel:
//!
//! - `iommufd-guest-test mock`: the selftest mock IOMMU (IOMMU_TEST_CMD): flat MAP/UNMAP seen
//!   in the mock page table, bypass, nested HWPT, invalidation, page request → PAGE_RESP,
//!   stale cookies, object cleanup; SMMUv3-style nesting (vIOMMU, vDEVICE, vEVENTQ).
//! - `iommufd-guest-test vfio BDF`: QEMU's `edu` device bound to vfio-pci behind an emulated
//!   VT-d: real DMA through a guest MAP, failing after UNMAP, bypass, blocked, the nesting
//!   refusal (EOPNOTSUPP) reported, bind errors.
//!
//! Output: `PASS: …` / `FAIL: …` lines and `RESULT: <name>: N passed, M failed`; exit status 0
//! only if nothing failed.

use std::fmt::Display;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread::sleep;
use std::time::Duration;

use vhost_device_iommu::host::iommufd::selftest::{self as st, RegionInfo};
use vhost_device_iommu::host::iommufd::{
    vfio_endpoint, IommufdConfig, IommufdHost, VfioEndpoint, VfioSource,
};
use vhost_device_iommu::host::{AttachTarget, HostError, HostIommu, Perm, ReservedRegion, SpaceId};
use virtio_iommu_spec::event::{FaultEvent, FaultFlags, FaultReason, PageRequest};
use virtio_iommu_spec::ext::{InvalCaches, InvalScope, PageRespCode, VtdFlags};
use virtio_iommu_spec::request::{Invalidate, TableDesc};
use virtio_iommu_spec::Event;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

/// PASS/FAIL bookkeeping.
struct Report {
    name: &'static str,
    passed: u32,
    failed: u32,
}

impl Report {
    fn new(name: &'static str) -> Self {
        Report {
            name,
            passed: 0,
            failed: 0,
        }
    }

    fn check(&mut self, ok: bool, what: impl Display) -> bool {
        if ok {
            println!("PASS: {what}");
            self.passed += 1;
        } else {
            println!("FAIL: {what}");
            self.failed += 1;
        }
        ok
    }

    fn finish(&self) -> ExitCode {
        println!(
            "RESULT: {}: {} passed, {} failed",
            self.name, self.passed, self.failed
        );
        if self.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

const MIB: u64 = 1 << 20;

/// Guest memory for the host: 1 MiB at `gpa`, backed by a tmpfs file when `file` is given
/// (so the backend can use IOMMU_IOAS_MAP_FILE), else anonymous memory (IOMMU_IOAS_MAP).
fn guest_memory(gpa: u64, file: Option<&Path>) -> GuestMemoryAtomic<GuestMemoryMmap> {
    let size = usize::try_from(MIB).expect("1 MiB fits usize");
    let mem = match file {
        Some(p) => {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(p)
                .expect("memory file");
            f.set_len(MIB).expect("size memory file");
            GuestMemoryMmap::from_ranges_with_files([(
                GuestAddress(gpa),
                size,
                Some(FileOffset::new(f, 0)),
            )])
        }
        None => GuestMemoryMmap::from_ranges(&[(GuestAddress(gpa), size)]),
    };
    GuestMemoryAtomic::new(mem.expect("guest memory"))
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            u8::try_from(i % 256)
                .unwrap_or(0)
                .wrapping_mul(7)
                .wrapping_add(seed)
        })
        .collect()
}

fn read_mem(mem: &GuestMemoryAtomic<GuestMemoryMmap>, gpa: u64, len: usize) -> Vec<u8> {
    use vm_memory::GuestAddressSpace;
    let mut buf = vec![0; len];
    mem.memory()
        .read_slice(&mut buf, GuestAddress(gpa))
        .expect("read guest memory");
    buf
}

fn write_mem(mem: &GuestMemoryAtomic<GuestMemoryMmap>, gpa: u64, data: &[u8]) {
    use vm_memory::GuestAddressSpace;
    mem.memory()
        .write_slice(data, GuestAddress(gpa))
        .expect("write guest memory");
}

// ---- selftest mock ------------------------------------------------------------------------

fn mock_test() -> ExitCode {
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

/// SMMUv3-style nesting on the mock: ATTACH_TABLE PSTF_ARM_SMMU_V3 -> vIOMMU + vDEVICE +
/// nested HWPT on the vIOMMU, INVALIDATE -> one batched vIOMMU invalidation, TRIGGER_VEVENT ->
/// fault event, and every object gone after destroy_table / remove_endpoint.
fn smmu_mock_test(r: &mut Report) {
    // vSID = endpoint ID; the mock reports no vEVENT for vSID 0.
    const EP: u32 = 2;
    let cfg = IommufdConfig::default();
    let (mut host, ids) = match IommufdHost::open(&cfg).map(|mut h| {
        let ids = h.add_mock_endpoint(EP);
        (h, ids)
    }) {
        Ok((h, Ok(ids))) => (h, ids),
        other => {
            r.check(
                false,
                format!("smmu: backend with a mock endpoint: {other:?}"),
            );
            return;
        }
    };
    let desc = TableDesc::ArmSmmuV3 {
        s1fmt: 0,
        s1dss: 0,
        s1contextptr: 0x100_0000,
        s1cdmax: 0,
    };
    let space = host.alloc_space().expect("alloc_space");
    let table = match host.alloc_table(EP, Some(space), &desc) {
        Ok(t) => t,
        Err(e) => {
            r.check(false, format!("smmu: alloc_table(ArmSmmuV3): {e}"));
            return;
        }
    };
    let so = host.smmu_ids(EP);
    let fd = host.iommufd();
    r.check(
        so.is_some_and(|o| o.veventq.is_some() && st::viommu_exists(fd, o.viommu))
            && st::hwpt_exists(fd, table.0, st::INVALIDATE_DATA_SELFTEST),
        format!(
            "smmu: alloc_table -> nested HWPT {} on vIOMMU, vDEVICE, vEVENTQ: {so:?}",
            table.0
        ),
    );
    let Some(so) = so else { return };
    let t = st::trigger_vevent(fd, ids.dev_id);
    r.check(
        t.as_ref().err().and_then(std::io::Error::raw_os_error) == Some(libc::ENOENT),
        format!("smmu: no vEVENT before the endpoint is attached to the table: {t:?}"),
    );
    let res = host.attach(EP, None, AttachTarget::Table(table));
    r.check(
        res.is_ok() && host.attached_hwpt(EP) == Some(table.0),
        format!(
            "smmu: attach to the table (needs the vDEVICE): {res:?}, on {:?}",
            host.attached_hwpt(EP)
        ),
    );
    let caches = |host: &IommufdHost| -> Vec<bool> {
        (0..4)
            .map(|i| {
                st::dev_check_cache(host.iommufd(), ids.dev_id, i, st::DEV_CACHE_DEFAULT).is_ok()
            })
            .collect()
    };
    let cleared =
        |host: &IommufdHost, i| st::dev_check_cache(host.iommufd(), ids.dev_id, i, 0).is_ok();
    r.check(
        caches(&host) == [true; 4],
        "smmu: mock device caches start at IOMMU_TEST_DEV_CACHE_DEFAULT",
    );
    let inval = |scope| Invalidate {
        domain: 1,
        caches: InvalCaches::IOTLB,
        scope,
        archid: None,
        leaf: false,
    };
    // Pages 3 and 4 -> two entries (cache 3 and 0) in one IOMMU_HWPT_INVALIDATE on the vIOMMU.
    let range = InvalScope::Range {
        pasid: None,
        start: 0x3000,
        nr_pages: 2,
        granule: 12,
    };
    let res = host.invalidate(table, &inval(range));
    r.check(
        res.is_ok()
            && caches(&host) == [false, true, true, false]
            && cleared(&host, 0)
            && cleared(&host, 3),
        format!(
            "smmu: INVALIDATE range -> kernel cleared exactly caches 0 and 3 of vSID {EP}: {res:?}"
        ),
    );
    let res = host.invalidate(table, &inval(InvalScope::Domain));
    r.check(
        res.is_ok() && (0..4).all(|i| cleared(&host, i)),
        format!("smmu: INVALIDATE domain -> every cache cleared: {res:?}"),
    );
    let huge = InvalScope::Range {
        pasid: Some(1),
        start: 0,
        nr_pages: u64::MAX,
        granule: 63,
    };
    let res = host.invalidate(table, &inval(huge));
    r.check(
        res.is_ok(),
        format!("smmu: a hostile range falls back to a full flush: {res:?}"),
    );

    r.check(
        host.poll_event().is_none(),
        "smmu: no event before TRIGGER_VEVENT",
    );
    let t = st::trigger_vevent(host.iommufd(), ids.dev_id);
    let readable = host.events_fd().is_ok_and(|f| poll_readable(&f));
    r.check(
        t.is_ok() && readable,
        format!(
            "smmu: TRIGGER_VEVENT makes the host events fd readable (the vEVENTQ joined it): {t:?}"
        ),
    );
    let ev = host.poll_event();
    let want = Event::Fault(FaultEvent {
        reason: FaultReason::Unknown,
        access: FaultFlags::empty(),
        endpoint: EP,
        address: None,
        pasid: None,
    });
    r.check(
        ev == Some(want),
        format!("smmu: vEVENT -> fault event for endpoint {EP}: {ev:?}"),
    );
    let _ = st::trigger_vevent(host.iommufd(), ids.dev_id);
    let _ = st::trigger_vevent(host.iommufd(), ids.dev_id);
    let evs = [host.poll_event(), host.poll_event(), host.poll_event()];
    r.check(
        evs == [Some(want), Some(want), None],
        format!("smmu: two more vEVENTs, in sequence, then nothing: {evs:?}"),
    );

    // Detach + destroy_table: the last user goes, so do the vDEVICE, vEVENTQ, vIOMMU, parent.
    let res = host.detach(EP, None);
    let res2 = host.destroy_table(table);
    let fd = host.iommufd();
    r.check(
        res.is_ok()
            && res2.is_ok()
            && host.smmu_ids(EP).is_none()
            && st::destroyed(fd, table.0)
            && st::destroyed(fd, so.vdevice)
            && so.veventq.is_some_and(|q| st::destroyed(fd, q))
            && st::destroyed(fd, so.viommu),
        format!("smmu: detach + destroy_table -> nested HWPT, vDEVICE, vEVENTQ, vIOMMU gone (ENOENT): {res:?} {res2:?}"),
    );
    let res = host.destroy_space(space);
    r.check(
        res.is_ok(),
        format!("smmu: the parent HWPT was released: destroy_space works: {res:?}"),
    );

    // Endpoint removal with a table still bound: the vDEVICE goes before the mock device.
    let t2 = host.alloc_table(EP, None, &desc);
    let so2 = host.smmu_ids(EP);
    let att = t2.map(|t| host.attach(EP, None, AttachTarget::Table(t)));
    host.remove_endpoint(EP);
    let fd = host.iommufd();
    let ok = matches!(att, Ok(Ok(())))
        && so2.is_some_and(|o| st::destroyed(fd, o.vdevice) && st::viommu_exists(fd, o.viommu));
    let res = t2.map(|t| host.destroy_table(t));
    let fd = host.iommufd();
    r.check(
        ok && matches!(res, Ok(Ok(()))) && so2.is_some_and(|o| st::destroyed(fd, o.viommu)),
        format!("smmu: remove_endpoint destroys the vDEVICE first; the vIOMMU goes with the table: {so2:?} {res:?}"),
    );
    // Drop with everything live: the backend tears it down in order (no kernel refusals).
    let again = host.add_mock_endpoint(EP).map(|_| ());
    let t3 = host.alloc_table(EP, None, &desc);
    let att = t3.map(|t| host.attach(EP, None, AttachTarget::Table(t)));
    r.check(
        again.is_ok() && matches!(att, Ok(Ok(()))),
        format!("smmu: a live vIOMMU setup before drop: {again:?} {att:?}"),
    );
    drop(host);
}

/// Whether `f` is readable right now (poll with a zero timeout).
fn poll_readable(f: &File) -> bool {
    let mut p = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd for the duration of the call; timeout 0 never blocks.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & libc::POLLIN != 0
}

/// The daemon-side virtual address of guest-physical `gpa`.
fn host_address(mem: &GuestMemoryAtomic<GuestMemoryMmap>, gpa: u64) -> u64 {
    use vm_memory::{GuestAddressSpace, GuestMemoryBackend};
    let p = mem
        .memory()
        .get_host_address(GuestAddress(gpa))
        .expect("gpa in guest memory");
    p as usize as u64
}

// ---- VFIO + edu ---------------------------------------------------------------------------

const EDU_ID: usize = 0x00;
const EDU_DMA_SRC: usize = 0x80;
const EDU_DMA_DST: usize = 0x88;
const EDU_DMA_COUNT: usize = 0x90;
const EDU_DMA_CMD: usize = 0x98;
/// The edu device's DMA buffer, as seen by its DMA engine.
const EDU_BUF: u64 = 0x4_0000;
const EDU_CMD_START: u64 = 1;
/// Direction bit: 1 = edu buffer -> RAM, 0 = RAM -> edu buffer.
const EDU_CMD_TO_RAM: u64 = 2;
const VFIO_PCI_BAR0_REGION_INDEX: u32 = 0;
const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;

/// The edu device's BAR0, mmapped from the VFIO device fd.
struct EduBar {
    base: *mut u8,
    len: usize,
}

impl EduBar {
    fn map(dev: &File, bar: RegionInfo) -> std::io::Result<Self> {
        let len = usize::try_from(bar.size).map_err(|_| std::io::Error::other("BAR too large"))?;
        let off =
            libc::off_t::try_from(bar.offset).map_err(|_| std::io::Error::other("bad offset"))?;
        if len < 0x100 {
            return Err(std::io::Error::other("BAR0 too small for edu"));
        }
        // SAFETY: a fresh shared mapping of the device region chosen by the kernel (addr NULL);
        // it does not alias any Rust object and is only accessed through volatile reads/writes.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                dev.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(EduBar {
            base: p.cast(),
            len,
        })
    }

    fn read32(&self, off: usize) -> u32 {
        assert!(off + 4 <= self.len);
        // SAFETY: `off + 4` is inside the live mapping (checked), 4-byte aligned register.
        unsafe { self.base.add(off).cast::<u32>().read_volatile() }
    }

    fn read64(&self, off: usize) -> u64 {
        assert!(off + 8 <= self.len);
        // SAFETY: `off + 8` is inside the live mapping (checked), 8-byte aligned register.
        unsafe { self.base.add(off).cast::<u64>().read_volatile() }
    }

    fn write64(&self, off: usize, v: u64) {
        assert!(off + 8 <= self.len);
        // SAFETY: as in `read64`.
        unsafe { self.base.add(off).cast::<u64>().write_volatile(v) }
    }

    /// Runs one DMA transfer and waits for edu to finish it (it completes, successful or not,
    /// about 100 ms of virtual time later). Returns whether it completed.
    fn dma(&self, src: u64, dst: u64, len: u64, to_ram: bool) -> bool {
        self.write64(EDU_DMA_SRC, src);
        self.write64(EDU_DMA_DST, dst);
        self.write64(EDU_DMA_COUNT, len);
        self.write64(
            EDU_DMA_CMD,
            EDU_CMD_START | if to_ram { EDU_CMD_TO_RAM } else { 0 },
        );
        for _ in 0..400 {
            if self.read64(EDU_DMA_CMD) & EDU_CMD_START == 0 {
                return true;
            }
            sleep(Duration::from_millis(10));
        }
        false
    }

    /// RAM at `src_iova` -> edu buffer -> RAM at `dst_iova`.
    fn round_trip(&self, src_iova: u64, dst_iova: u64, len: u64) -> bool {
        self.dma(src_iova, EDU_BUF, len, false) && self.dma(EDU_BUF, dst_iova, len, true)
    }
}

impl Drop for EduBar {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `map`; no reference into it survives.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Enables memory decoding and bus mastering through the VFIO config region and maps BAR0.
fn edu_open(r: &mut Report, dev: &File) -> Option<EduBar> {
    let cfg = st::vfio_region_info(dev, VFIO_PCI_CONFIG_REGION_INDEX).ok()?;
    let bar = st::vfio_region_info(dev, VFIO_PCI_BAR0_REGION_INDEX).ok()?;
    let mut ids = [0u8; 4];
    dev.read_exact_at(&mut ids, cfg.offset).ok()?;
    let is_edu = ids == [0x34, 0x12, 0xe8, 0x11];
    if !r.check(is_edu, format!("device is QEMU edu (ids {ids:02x?})")) {
        return None;
    }
    let mut cmd = [0u8; 2];
    dev.read_exact_at(&mut cmd, cfg.offset + 4).ok()?;
    let v = u16::from_le_bytes(cmd) | 0x6;
    dev.write_all_at(&v.to_le_bytes(), cfg.offset + 4).ok()?;
    match EduBar::map(dev, bar) {
        Ok(b) => {
            let ident = b.read32(EDU_ID);
            r.check(
                ident == 0x0100_00ed,
                format!("edu BAR0 mmapped, ident {ident:#010x}"),
            );
            Some(b)
        }
        Err(e) => {
            r.check(false, format!("mmap edu BAR0: {e}"));
            None
        }
    }
}

/// The endpoint of the edu device in the VFIO tests.
const EP: u32 = 8;
/// Guest memory of the VFIO tests: well below edu's 28-bit DMA mask; IOVAs too.
const EDU_GPA: u64 = 0x100_0000;

/// `--vfio EP=BDF` parsed, and the cdev the PCI address resolves to through sysfs.
fn edu_cdev(r: &mut Report, bdf: &str) -> Option<(VfioEndpoint, PathBuf)> {
    let spec: VfioEndpoint = match format!("{EP}={bdf}").parse() {
        Ok(s) => s,
        Err(e) => {
            r.check(false, format!("parse --vfio {EP}={bdf}: {e}"));
            return None;
        }
    };
    let VfioSource::Pci(norm) = spec.source.clone() else {
        r.check(
            false,
            format!("{bdf} did not parse as a PCI address: {spec:?}"),
        );
        return None;
    };
    let cdev = match vfio_endpoint::resolve_pci(Path::new(vfio_endpoint::SYSFS_PCI), &norm) {
        Ok(p) => p,
        Err(e) => {
            r.check(false, format!("resolve {bdf}: {e}"));
            return None;
        }
    };
    r.check(
        cdev.to_string_lossy().starts_with("/dev/vfio/devices/vfio"),
        format!("{bdf} resolves to {}", cdev.display()),
    );
    Some((spec, cdev))
}

fn vfio_test(bdf: &str, hw_type: u32) -> ExitCode {
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

/// Beside a VMM that binds the device itself (QEMU's vfio-pci): this program plays the VMM
/// (its own iommufd, bind, IOAS with its RAM, attach) and hands the backend the same two open
/// files (`--iommufd-fd`, `--vfio EP=fd:N`). edu sits behind a root port, so a bus reset is
/// possible and the hot-reset list names it with its device ID.
fn shared_test(bdf: &str, daemon: Option<&Path>) -> ExitCode {
    let mut r = Report::new("iommufd-backend-shared");
    let gpa = EDU_GPA;
    let Some((_, cdev)) = edu_cdev(&mut r, bdf) else {
        return r.finish();
    };
    let open_rw = |p: &Path| OpenOptions::new().read(true).write(true).open(p);
    let (vmm_fd, dev) = match (open_rw(Path::new("/dev/iommu")), open_rw(&cdev)) {
        (Ok(i), Ok(d)) => (i, d),
        (i, d) => {
            r.check(
                false,
                format!("open /dev/iommu and {}: {i:?} {d:?}", cdev.display()),
            );
            return r.finish();
        }
    };
    let dup = |f: &File| f.try_clone().expect("dup").into_raw_fd();
    let cfg = IommufdConfig {
        endpoints: vec![VfioEndpoint {
            endpoint: EP,
            source: VfioSource::Fd(dup(&dev)),
        }],
        page_requests: false,
        iommufd_fd: Some(dup(&vmm_fd)),
    };
    let mut host = match IommufdHost::open(&cfg) {
        Ok(h) => h,
        Err(e) => {
            r.check(
                false,
                format!("open the backend on the shared iommufd: {e}"),
            );
            return r.finish();
        }
    };
    r.check(
        host.is_waiting(EP),
        "before the VMM binds, the endpoint waits (no bind by the daemon)",
    );
    let early = host.attach(EP, None, AttachTarget::Bypass);
    r.check(
        early == Err(HostError::Failed),
        format!("a guest ATTACH before the VMM's bind is refused: {early:?}"),
    );

    // The VMM: bind, an IOAS with all guest RAM at IOVA = GPA, attach (vfio-pci realize).
    let mem = guest_memory(gpa, None);
    let va = host_address(&mem, gpa);
    let (vmm_dev_id, vmm_ioas) = match (st::vmm::bind(&dev, &vmm_fd), st::vmm::ioas_alloc(&vmm_fd))
    {
        (Ok(d), Ok(i)) => (d, i),
        (d, i) => {
            r.check(false, format!("VMM bind + IOAS: {d:?} {i:?}"));
            return r.finish();
        }
    };
    let m = st::vmm::ioas_map(&vmm_fd, vmm_ioas, va, MIB, gpa);
    let a = st::vmm::attach(&dev, vmm_ioas);
    r.check(
        m.is_ok() && a.is_ok(),
        format!(
            "VMM: bound as device {vmm_dev_id}, RAM in its IOAS {vmm_ioas}, attached: {m:?} {a:?}"
        ),
    );
    let Some(bar) = edu_open(&mut r, &dev) else {
        return r.finish();
    };
    let p0 = pattern(0x44, 4096);
    write_mem(&mem, gpa, &p0);
    let done = bar.round_trip(gpa, gpa + 0x1000, 4096);
    r.check(
        done && read_mem(&mem, gpa + 0x1000, 4096) == p0,
        "edu DMA through the VMM's own IOAS works (the rig is sound)",
    );

    // Guest memory arrives (SET_MEM_TABLE): the backend sees the bind and takes over.
    host.set_unattached_bypass(false);
    host.set_guest_memory(mem.clone());
    r.check(
        !host.is_waiting(EP),
        "installed once the VMM had bound the device",
    );
    r.check(
        host.dev_id(EP) == Some(vmm_dev_id),
        format!(
            "device ID recovered from the hot-reset list: {:?} (VMM's: {vmm_dev_id})",
            host.dev_id(EP)
        ),
    );
    let ty = host.hw_info(EP).map(|h| h.data_type);
    r.check(
        ty == Some(1),
        format!("GET_HW_INFO through the VMM's device ID: type {ty:?} (VT-d)"),
    );
    let resv = host.reserved_regions(EP).unwrap_or_default().to_vec();
    r.check(
        resv.contains(&ReservedRegion::x86_msi()),
        format!("host reserved regions include the MSI window: {resv:x?}"),
    );
    write_mem(&mem, gpa + 0x1000, &[0; 4096]);
    let done = bar.round_trip(gpa, gpa + 0x1000, 4096);
    r.check(
        done && read_mem(&mem, gpa + 0x1000, 4096) == vec![0; 4096],
        "the VMM's attachment is replaced: unattached and not bypassed, DMA is blocked",
    );

    // A guest domain through the shared context.
    let space = host.alloc_space().expect("alloc_space");
    let (iova, phys) = (0x20_0000, gpa + 0x1_0000);
    let m = host.map(space, iova, iova + 0xffff, phys, Perm::READ | Perm::WRITE);
    let at = host.attach(EP, None, AttachTarget::Space(space));
    let p1 = pattern(0x55, 4096);
    write_mem(&mem, phys, &p1);
    let done = bar.round_trip(iova, iova + 0x8000, 4096);
    r.check(
        m.is_ok() && at.is_ok() && done && read_mem(&mem, phys + 0x8000, 4096) == p1,
        format!("edu DMA through the guest MAP in the shared iommufd: {m:?} {at:?}"),
    );
    let n = host.unmap(space, iova, iova + 0xffff);
    write_mem(&mem, phys + 0x8000, &[0; 4096]);
    let done = bar.dma(EDU_BUF, iova + 0x8000, 4096, true);
    r.check(
        n == Ok(0x1_0000) && done && read_mem(&mem, phys + 0x8000, 4096) == vec![0; 4096],
        format!("after UNMAP the DMA does not reach memory: {n:?}"),
    );

    // The daemon goes away: its objects go, the VMM's stay and work again.
    let (master, ours) = (host.master_ioas(), space.0);
    drop(host);
    r.check(
        !st::ioas_exists(&vmm_fd, master) && !st::ioas_exists(&vmm_fd, ours),
        format!("the daemon's IOASes {master} and {ours} are destroyed on exit"),
    );
    r.check(
        st::ioas_exists(&vmm_fd, vmm_ioas),
        format!("the VMM's IOAS {vmm_ioas} is left alone"),
    );
    let a = st::vmm::attach(&dev, vmm_ioas);
    write_mem(&mem, gpa + 0x1000, &[0; 4096]);
    let done = bar.round_trip(gpa, gpa + 0x1000, 4096);
    r.check(
        a.is_ok() && done && read_mem(&mem, gpa + 0x1000, 4096) == p0,
        format!("the device is still the VMM's: re-attached to its IOAS, DMA works: {a:?}"),
    );
    if let Some(bin) = daemon {
        daemon_beside_vmm(&mut r, bin, &vmm_fd, &dev, &bar, vmm_ioas, &mem);
    }
    r.finish()
}

/// IOAS IDs alive in `iommufd` (IDs are small and allocated from 1).
fn live_ioases(iommufd: &File) -> Vec<u32> {
    (1..=64)
        .filter(|&id| st::ioas_exists(iommufd, id))
        .collect()
}

/// The daemon binary with `--iommufd-fd` and `--vfio EP=fd:N` beside the VMM (this program,
/// which keeps both files open): it takes the already bound device over at start-up, and on
/// SIGTERM destroys every object it allocated in the shared iommufd and detaches the device.
fn daemon_beside_vmm(
    r: &mut Report,
    bin: &Path,
    vmm_fd: &File,
    dev: &File,
    bar: &EduBar,
    vmm_ioas: u32,
    mem: &GuestMemoryAtomic<GuestMemoryMmap>,
) {
    use std::os::unix::process::CommandExt;
    let before = live_ioases(vmm_fd);
    let (ifd, dfd) = (vmm_fd.as_raw_fd(), dev.as_raw_fd());
    let sock = Path::new("/tmp/daemon-beside-vmm.sock");
    let mut cmd = std::process::Command::new(bin);
    cmd.args([
        "--socket-path",
        "/tmp/daemon-beside-vmm.sock",
        "--host",
        "iommufd",
    ])
    .args([
        "--iommufd-fd",
        &ifd.to_string(),
        "--vfio",
        &format!("{EP}=fd:{dfd}"),
    ])
    .env("RUST_LOG", "info");
    // SAFETY: the closure only calls fcntl (async-signal-safe) on two fds this process owns, to
    // let the child inherit them, as a launcher does.
    unsafe {
        cmd.pre_exec(move || {
            for fd in [ifd, dfd] {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            r.check(false, format!("start {}: {e}", bin.display()));
            return;
        }
    };
    let up = (0..200).any(|_| {
        sleep(Duration::from_millis(50));
        sock.exists()
    });
    let during = live_ioases(vmm_fd);
    write_mem(mem, gpa_plus(0x1000), &[0; 4096]);
    let done = bar.round_trip(EDU_GPA, gpa_plus(0x1000), 4096);
    r.check(
        up && during.len() > before.len() && done && read_mem(mem, gpa_plus(0x1000), 4096) == vec![0; 4096],
        format!("daemon binary started beside the VMM: took the bound device over (DMA through the VMM's IOAS blocked), IOASes {before:?} -> {during:?}"),
    );
    // SAFETY: kill only sends a signal, to our own running child.
    let k = unsafe {
        libc::kill(
            libc::pid_t::try_from(child.id()).unwrap_or(0),
            libc::SIGTERM,
        )
    };
    let status = (0..200).find_map(|_| {
        sleep(Duration::from_millis(50));
        child.try_wait().ok().flatten()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let after = live_ioases(vmm_fd);
    r.check(
        k == 0 && status.is_some_and(|s| s.success()) && after == before && after == vec![vmm_ioas],
        format!("SIGTERM: the daemon exits 0 ({status:?}) and its IOASes are gone: {after:?}"),
    );
    let a = st::vmm::attach(dev, vmm_ioas);
    let p = pattern(0x66, 4096);
    write_mem(mem, EDU_GPA, &p);
    let done = bar.round_trip(EDU_GPA, gpa_plus(0x1000), 4096);
    r.check(
        a.is_ok() && done && read_mem(mem, gpa_plus(0x1000), 4096) == p,
        format!("after the daemon, the VMM attaches its IOAS again and DMA works: {a:?}"),
    );
}

fn gpa_plus(off: u64) -> u64 {
    EDU_GPA + off
}

/// Without interrupt remapping (virtio-iommu on x86, no `allow_unsafe_interrupts`) the bind is
/// refused with EPERM, and the error must tell the operator what to do.
fn eperm_test(bdf: &str) -> ExitCode {
    let mut r = Report::new("iommufd-backend-eperm");
    let spec = format!("8={bdf}").parse::<VfioEndpoint>();
    let res = spec.map(|s| {
        IommufdHost::open(&IommufdConfig {
            endpoints: vec![s],
            page_requests: false,
            iommufd_fd: None,
        })
    });
    match res {
        Ok(Err(e)) => {
            let msg = e.to_string();
            r.check(
                msg.contains("os error 1)") && msg.contains("iommufd.allow_unsafe_interrupts=1"),
                format!("bind without MSI isolation fails with EPERM and the hint: {msg}"),
            )
        }
        Ok(Ok(_)) => r.check(false, "bind without MSI isolation succeeded"),
        Err(e) => r.check(false, format!("parse: {e}")),
    };
    r.finish()
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("mock") => mock_test(),
        Some("vfio") if args.len() == 4 => match args[3].parse() {
            Ok(ty) => vfio_test(&args[2], ty),
            Err(_) => ExitCode::from(2),
        },
        Some("eperm") if args.len() == 3 => eperm_test(&args[2]),
        Some("shared") if args.len() == 3 || args.len() == 4 => {
            shared_test(&args[2], args.get(3).map(Path::new))
        }
        _ => {
            eprintln!("usage: iommufd-guest-test mock | vfio PCI-BDF HW-INFO-TYPE | eperm PCI-BDF | shared PCI-BDF [DAEMON]");
            ExitCode::from(2)
        }
    }
}
