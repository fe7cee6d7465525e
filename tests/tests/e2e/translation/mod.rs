//! The translation service (spec/TRANSLATION.md) through its real socket: a raw-protocol
//! client ([`virtio_iommu_e2e::TranslationClient`]) next to the guest's rings.
//!
//! - [`translate`]: TRANSLATE of mapped, unmapped, read-only, MSI, bypass, unattached and
//!   malformed accesses, and the fault events the guest gets.
//! - [`invalidation`]: INVALIDATE pushes and the held completion of UNMAP / DETACH / ATTACH,
//!   the cut-off of a silent client, frontend disconnect.
//! - [`backlog`]: the cut-off of a client that stops reading (1024 unsent messages).
//! - [`protocol`]: protocol errors, HELLO statuses, the client limit.
//! - [`page_requests`]: a PASID translation that waits for the guest's page response.
//! - [`polling`]: busy-polling on and off at both ends gives the same exact exchange.
//!
//! `VIOMMU_TEST_POLL_US=N` runs every daemon here with `--translation-poll-us N` (default:
//! the daemon's, 50), so that the whole suite runs with polling on and off.

mod backlog;
mod invalidation;
mod page_requests;
mod polling;
mod protocol;
mod translate;

use std::path::PathBuf;
use std::time::Duration;

use crate::daemon::vm::Vm;
use virtio_iommu_e2e::TranslationClient;
use virtio_iommu_spec::translation::HelloStatus;
use virtio_iommu_testkit::Chain;

/// A daemon with a translation socket and raw rings.
#[derive(Debug)]
pub struct Tvm {
    /// The rings, the frontend, the control socket, the daemon.
    pub vm: Vm,
    /// The translation socket.
    pub path: PathBuf,
    /// Holds the socket's directory.
    _dir: tempfile::TempDir,
}

impl Tvm {
    /// Starts a daemon with `--translation-socket` and `args` (and `VIOMMU_TEST_POLL_US`'s
    /// polling unless `args` set it).
    pub fn start(args: &[&str]) -> Tvm {
        let dir = tempfile::Builder::new()
            .prefix("viommu-ts")
            .tempdir()
            .unwrap();
        let path = dir.path().join("translation.sock");
        let mut all = vec!["--translation-socket", path.to_str().unwrap()];
        let poll = std::env::var("VIOMMU_TEST_POLL_US").ok();
        if let Some(us) = poll.as_deref() {
            if !args.contains(&"--translation-poll-us") {
                all.extend(["--translation-poll-us", us]);
            }
        }
        all.extend_from_slice(args);
        Tvm {
            vm: Vm::start(&all),
            path,
            _dir: dir,
        }
    }

    /// A connected client without HELLO.
    pub fn raw_client(&self) -> TranslationClient {
        TranslationClient::connect(&self.path, Duration::from_secs(10)).expect("connects")
    }

    /// A client that said HELLO for `first..=last` and was accepted.
    pub fn client(&self, first: u32, last: u32) -> TranslationClient {
        let mut c = self.raw_client();
        let r = c.hello(&[(first, last)]).expect("HELLO_REPLY");
        assert_eq!(r.status, HelloStatus::Accepted);
        c
    }

    /// Publishes a request chain and kicks, without waiting for it.
    pub fn post(&mut self, chain: &Chain) -> u16 {
        let head = self.vm.rq.submit(chain).unwrap();
        self.vm.rq.kick(&self.vm.fe).unwrap();
        head
    }

    /// The translation counters of the control socket's `stats`.
    pub fn tstats(&mut self) -> serde_json::Value {
        self.vm.stats()["translation"].clone()
    }
}
