//! The serial-log protocol: one `GUEST-PCI: PASS <name>` or `GUEST-PCI: FAIL <name>: <why>`
//! line per check, `GUEST-PCI-INFO:` lines for context, and a final
//! `GUEST-PCI-RESULT: N passed, M failed`.

use std::fmt::{Debug, Display};
use std::process::ExitCode;

/// Which device the scenario runs against: where the reference device legitimately differs,
/// a check expects each its own answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// QEMU's own `virtio-iommu-pci`, the reference.
    Qemu,
    /// vhost-device-iommu behind `vhost-user-test-device-pci`.
    Daemon,
}

impl DeviceKind {
    /// `want_qemu` for QEMU, `want_daemon` for the daemon.
    pub fn pick<T>(self, want_qemu: T, want_daemon: T) -> T {
        match self {
            DeviceKind::Qemu => want_qemu,
            DeviceKind::Daemon => want_daemon,
        }
    }
}

/// Counts and prints check results.
#[derive(Debug, Default)]
pub struct Report {
    passed: u32,
    failed: u32,
}

impl Report {
    /// Records one check.
    pub fn check(&mut self, name: &str, result: Result<(), String>) {
        match result {
            Ok(()) => {
                println!("GUEST-PCI: PASS {name}");
                self.passed += 1;
            }
            Err(why) => {
                println!("GUEST-PCI: FAIL {name}: {why}");
                self.failed += 1;
            }
        }
    }

    /// Prints context that is not a check.
    pub fn info(&self, what: impl Display) {
        println!("GUEST-PCI-INFO: {what}");
    }

    /// Prints the result line; success only if nothing failed and something passed.
    pub fn finish(&self) -> ExitCode {
        println!(
            "GUEST-PCI-RESULT: {} passed, {} failed",
            self.passed, self.failed
        );
        if self.failed == 0 && self.passed > 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

/// `Ok` if `got == want`, else a message naming `what`.
pub fn expect<T: PartialEq + Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, want {want:?}"))
    }
}
