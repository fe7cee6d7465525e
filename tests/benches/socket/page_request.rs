//! `socket/page_request_round_trip` (issue 18, goal 3): one recoverable fault end to end
//! through the real daemon. A device translation waits for the guest to fix its page table:
//!
//! 1. the device (a raw [`TranslationClient`] on the daemon's `--translation-socket`, as a
//!    device backend speaks it) sends TRANSLATE with PASID 1 for an address whose stage-1 leaf
//!    is not present;
//! 2. the daemon's translation service walks the guest's VT-d first-stage table, finds the leaf
//!    absent, parks the translation and writes a page request to a buffer of the event queue,
//!    then signals the event queue's call eventfd (the guest's interrupt);
//! 3. this thread, as the guest, sleeps in poll(2) on that eventfd, then runs the unmodified
//!    driver's `handle_page_requests`, whose resolver maps the page (a not-present entry is
//!    never cached, so no INVALIDATE) and which answers PAGE_RESP SUCCESS on the request queue
//!    (the driver kicks and spins on the used ring for the reply, as it does for every
//!    request);
//! 4. the daemon resumes the parked translation, walks again and sends TRANSLATE_REPLY, which
//!    this thread reads from the socket: the device's access may complete.
//!
//! Timed: from before the TRANSLATE is written to after its reply is read. Not timed: the
//! checks of the page request (endpoint, PASID, address), of the one response and of the reply
//! (OK, the 4 KiB leaf at the page the guest mapped, write only as asked). Every round trip
//! faults on a fresh page (the VAs only increase), so no page is ever made non-present again
//! and nothing needs invalidating between round trips. The guest driver is
//! `virtio_iommu_driver::VirtIOIommu` over the mini-VMM's [`VhostUserTransport`], the guest RAM
//! the test kit's global memfd, as in the e2e tests (`tests/tests/e2e/translation/
//! page_requests.rs`).

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use virtio_iommu_driver::sva::{PageRequestGroups, Perms, X86FirstStage, X86Levels};
use virtio_iommu_driver::{
    AttachFlags, DriverOptions, PageRequest, PageRespCode, VirtIOIommu, EXTENSION_FEATURES,
};
use virtio_iommu_e2e::{Daemon, TranslationClient, VhostUserTransport};
use virtio_iommu_spec::ext::VtdFlags;
use virtio_iommu_spec::request::MapFlags;
use virtio_iommu_spec::translation::{
    HelloReplyFlags, HelloStatus, TranslateFlags, TranslateStatus,
};
use virtio_iommu_spec::{Config, VIRTIO_ID_IOMMU};
use virtio_iommu_testkit::{GuestHal, GuestMemory};
use vmm_sys_util::eventfd::EventFd;

use super::{DaemonUsage, WAIT};

const DOMAIN: u32 = 1;
const ENDPOINT: u32 = 1;
const PASID: u32 = 1;
const PAGE: u64 = 0x1000;
/// First faulting VA (inside 4-level paging's lower half).
const VA_BASE: u64 = 0x7f00_0000;
/// The event queue's index.
const EVENT_QUEUE: usize = 1;
/// The driver's spin bound for a request's reply (as the e2e tests have it).
const MAX_SPINS: u64 = 50_000_000;

/// The daemon with a translation socket, the guest driver bound to it with a VT-d first-stage
/// table for PASID 1, and a device connected to the translation socket.
pub struct PrqRig {
    /// Declared first: dropped (the device reset) before the daemon is killed.
    iommu: VirtIOIommu<GuestHal, VhostUserTransport>,
    device: TranslationClient,
    table: X86FirstStage<GuestHal>,
    /// A duplicate of the event queue's call eventfd: the guest's interrupt.
    event_call: EventFd,
    groups: PageRequestGroups,
    /// The page every faulting VA is mapped to.
    page: u64,
    next_va: u64,
    daemon: Daemon,
    _dir: tempfile::TempDir,
}

impl PrqRig {
    pub fn new() -> PrqRig {
        let dir = tempfile::Builder::new()
            .prefix("viommu-prq")
            .tempdir()
            .unwrap();
        let path = dir.path().join("translation.sock");
        let daemon = Daemon::spawn_logging(
            "warn",
            &[
                "--pasid-bits",
                "16",
                "--translation-socket",
                path.to_str().unwrap(),
            ],
        )
        .expect("daemon starts");
        let fe = daemon
            .connect(GuestMemory::global())
            .expect("frontend connects");
        let event_call = fe
            .call_eventfd(EVENT_QUEUE)
            .and_then(|e| Ok(e.try_clone()?))
            .expect("the event queue's call eventfd");
        let config_size = u32::try_from(size_of::<Config>()).unwrap();
        let transport = VhostUserTransport::new(fe, VIRTIO_ID_IOMMU, config_size).unwrap();
        let options = DriverOptions {
            extensions: EXTENSION_FEATURES,
            max_spins: Some(MAX_SPINS),
        };
        let mut iommu = VirtIOIommu::new_with(transport, options).expect("driver initialisation");
        iommu
            .attach(DOMAIN, ENDPOINT, AttachFlags::empty())
            .expect("ATTACH");
        let table = X86FirstStage::new(X86Levels::Four).expect("first-stage table");
        iommu
            .bind_table(DOMAIN, ENDPOINT, &table.desc(PASID, VtdFlags::empty()))
            .expect("ATTACH_TABLE");
        let mut device = TranslationClient::connect(&path, WAIT).expect("translation socket");
        device.auto_ack = true;
        let hello = device.hello(&[(0, 0xffff)]).expect("HELLO_REPLY");
        assert_eq!(hello.status, HelloStatus::Accepted);
        assert!(hello.flags.contains(HelloReplyFlags::PAGE_REQUESTS));
        let mem = GuestMemory::global();
        let page = mem.alloc_pages(1).expect("guest page");
        PrqRig {
            iommu,
            device,
            table,
            event_call,
            groups: PageRequestGroups::new(),
            page,
            next_va: VA_BASE,
            daemon,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// Sleeps until the daemon signals the event queue (or `until`), consuming the signal.
    fn wait_interrupt(&self, until: Instant) {
        let left = until.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no page request within {WAIT:?}");
        let mut pfd = libc::pollfd {
            fd: self.event_call.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the duration of the call; poll writes only `revents`.
        unsafe { libc::poll(&raw mut pfd, 1, ms) };
        // Consumes the notification (EAGAIN if poll timed out or was interrupted).
        let _ = self.event_call.read();
    }

    /// One page-request round trip on a fresh page; its time.
    pub fn round_trip(&mut self) -> Duration {
        let va = self.next_va;
        self.next_va += PAGE;
        let iova = va + 0x10;
        let mut seen: Option<PageRequest> = None;
        let t0 = Instant::now();
        let tag = self
            .device
            .send_translate(ENDPOINT, Some(PASID), iova, 8, TranslateFlags::WRITE)
            .expect("TRANSLATE");
        let until = t0 + WAIT;
        let drained = loop {
            self.wait_interrupt(until);
            let (table, page) = (&mut self.table, self.page);
            let d = self
                .iommu
                .handle_page_requests(&mut self.groups, |_, req| {
                    seen = Some(*req);
                    match table.map(req.address, page, PAGE, Perms::USER_READ_WRITE) {
                        Ok(()) => PageRespCode::Success,
                        Err(_) => PageRespCode::Invalid,
                    }
                })
                .expect("event queue");
            if !d.responses.is_empty() || !d.failed_responses.is_empty() || !d.faults.is_empty() {
                break d;
            }
        };
        let reply = self.device.reply(tag).expect("TRANSLATE_REPLY");
        let took = t0.elapsed();

        let req = seen.expect("a page request");
        assert_eq!(
            (req.endpoint, req.pasid, req.address, req.last),
            (ENDPOINT, Some(PASID), va, true),
            "{req:?}"
        );
        assert!(
            drained.responses.len() == 1
                && drained.failed_responses.is_empty()
                && drained.faults.is_empty(),
            "{drained:?}"
        );
        assert_eq!(reply.status, TranslateStatus::Ok, "{reply:?}");
        let got = reply.ranges.as_slice()[0];
        assert_eq!(
            (got.iova, got.last, got.paddr, got.perm),
            (va, va + PAGE - 1, self.page, MapFlags::WRITE),
            "{reply:?}"
        );
        took
    }
}

/// The round trip's figures: median and p99 (ns), the daemon's CPU time and context switches
/// per round trip.
pub fn figures(rounds: u64) {
    let mut rig = PrqRig::new();
    for _ in 0..rounds / 10 + 1 {
        rig.round_trip(); // Warm-up.
    }
    let before = DaemonUsage::of(rig.pid());
    let times: Vec<Duration> = (0..rounds).map(|_| rig.round_trip()).collect();
    let used = DaemonUsage::of(rig.pid()).since(before);
    let name = "socket/page_request_round_trip";
    let mut sorted = times.clone();
    sorted.sort_unstable();
    let n = rounds as f64;
    super::figure(
        &format!("{name}/median"),
        super::ns(virtio_iommu_testkit::bench::median(times)),
        "ns/round-trip",
    );
    super::figure(
        &format!("{name}/p99"),
        super::ns(super::percentile(&sorted, 99)),
        "ns/round-trip",
    );
    super::figure(
        &format!("{name}/daemon_cpu"),
        used.cpu_ns as f64 / n,
        "daemon-CPU-ns/round-trip",
    );
    super::figure(
        &format!("{name}/wakeups"),
        (used.voluntary + used.involuntary) as f64 / n,
        "context-switches/round-trip",
    );
    super::figure(
        &format!("{name}/voluntary"),
        used.voluntary as f64 / n,
        "voluntary-switches/round-trip",
    );
}
