//! The serial-log protocol the test script reads: one `KERNEL: PASS <name>` or
//! `KERNEL: FAIL <name>: <why>` line per check, `KERNEL-INFO:` lines for context and a final
//! `KERNEL-RESULT: N passed, M failed`.

use alloc::format;
use alloc::string::String;
use core::fmt::{Debug, Display};

use crate::println;

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
                println!("KERNEL: PASS {name}");
                self.passed += 1;
            }
            Err(why) => {
                println!("KERNEL: FAIL {name}: {why}");
                self.failed += 1;
            }
        }
    }

    /// Prints context that is not a check.
    pub fn info(&self, what: impl Display) {
        println!("KERNEL-INFO: {what}");
    }

    /// Prints the result line; whether everything passed (and something ran).
    pub fn finish(&self) -> bool {
        println!(
            "KERNEL-RESULT: {} passed, {} failed",
            self.passed, self.failed
        );
        self.failed == 0 && self.passed > 0
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
