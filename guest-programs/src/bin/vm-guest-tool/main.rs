//! Runs inside the Linux guest of scripts/test-qemu-device.sh (Debian's kernel, busybox
//! initramfs) for what busybox cannot do:
//!
//! - `vm-guest-tool blk-read DEV MIB`: sequential O_DIRECT read of MIB MiB (at most 20 s),
//!   into one 2 MiB huge page (4 KiB pages if there is none), prints MB/s.
//! - `vm-guest-tool nic-flood IF_A IF_B SECONDS`: raw Ethernet frames from each NIC to the
//!   other for SECONDS each way, counted by the receiving kernel; prints packets/s.
//! - `vm-guest-tool edu BDF`: QEMU's `edu` bound to vfio-pci (type1 container): DMA to a
//!   mapped IOVA lands, DMA to an unmapped one (or to a buffer's guest-physical address used
//!   as IOVA) does not.
//!
//! Output: `VM-SPEED: …` figures, `PASS: …` / `FAIL: …` lines and `RESULT: …`; exit status 0
//! only if nothing failed.

mod blk_read;
// Shared with iommufd-guest-test; this program uses only edu's BAR and DMA engine.
#[allow(dead_code)]
#[path = "../iommufd-guest-test/edu.rs"]
mod edu;
mod edu_isolation;
mod huge_buffer;
mod nic_flood;
#[path = "../iommufd-guest-test/report.rs"]
mod report;
mod vfio_type1;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    match argv.as_slice() {
        [_, "blk-read", dev, mib] => match mib.parse() {
            Ok(mib) => blk_read::blk_read(dev, mib),
            Err(_) => ExitCode::from(2),
        },
        [_, "nic-flood", a, b, secs] => match secs.parse() {
            Ok(secs) => nic_flood::nic_flood(a, b, secs),
            Err(_) => ExitCode::from(2),
        },
        [_, "edu", bdf] => edu_isolation::edu_isolation(bdf),
        _ => {
            eprintln!(
                "usage: vm-guest-tool blk-read DEV MIB | nic-flood IF_A IF_B SECONDS | edu PCI-BDF"
            );
            ExitCode::from(2)
        }
    }
}
