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

mod edu;
mod eperm;
mod memory;
mod mock;
mod report;
mod shared;
mod smmu_mock;
mod vfio;

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("mock") => mock::mock_test(),
        Some("vfio") if args.len() == 4 => match args[3].parse() {
            Ok(ty) => vfio::vfio_test(&args[2], ty),
            Err(_) => ExitCode::from(2),
        },
        Some("eperm") if args.len() == 3 => eperm::eperm_test(&args[2]),
        Some("shared") if args.len() == 3 || args.len() == 4 => {
            shared::shared_test(&args[2], args.get(3).map(Path::new))
        }
        _ => {
            eprintln!("usage: iommufd-guest-test mock | vfio PCI-BDF HW-INFO-TYPE | eperm PCI-BDF | shared PCI-BDF [DAEMON]");
            ExitCode::from(2)
        }
    }
}
