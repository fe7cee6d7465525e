//! PASS/FAIL lines and the final RESULT line.

use std::fmt::Display;
use std::process::ExitCode;

/// PASS/FAIL bookkeeping.
pub struct Report {
    name: &'static str,
    passed: u32,
    failed: u32,
}

impl Report {
    pub fn new(name: &'static str) -> Self {
        Report {
            name,
            passed: 0,
            failed: 0,
        }
    }

    pub fn check(&mut self, ok: bool, what: impl Display) -> bool {
        if ok {
            println!("PASS: {what}");
            self.passed += 1;
        } else {
            println!("FAIL: {what}");
            self.failed += 1;
        }
        ok
    }

    pub fn finish(&self) -> ExitCode {
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
