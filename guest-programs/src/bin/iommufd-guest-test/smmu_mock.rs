//! SMMUv3-style nesting on the selftest mock: vIOMMU, vDEVICE, vEVENTQ.

use vhost_device_iommu::host::iommufd::selftest as st;
use vhost_device_iommu::host::iommufd::{IommufdConfig, IommufdHost};
use vhost_device_iommu::host::{AttachTarget, HostIommu};
use virtio_iommu_spec::event::{FaultEvent, FaultFlags, FaultReason};
use virtio_iommu_spec::ext::{InvalCaches, InvalScope};
use virtio_iommu_spec::request::{Invalidate, TableDesc};
use virtio_iommu_spec::Event;

use crate::mock::poll_readable;
use crate::report::Report;

/// SMMUv3-style nesting on the mock: ATTACH_TABLE PSTF_ARM_SMMU_V3 -> vIOMMU + vDEVICE +
/// nested HWPT on the vIOMMU, INVALIDATE -> one batched vIOMMU invalidation, TRIGGER_VEVENT ->
/// fault event, and every object gone after destroy_table / remove_endpoint.
pub fn smmu_mock_test(r: &mut Report) {
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
