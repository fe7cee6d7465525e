//! `vhost-device-iommu`: a vhost-user virtio-iommu device backend.

use std::process::ExitCode;

use clap::Parser;
use log::error;
use vhost_device_iommu::args::{Args, DaemonConfig};
use vhost_device_iommu::daemon::{block_stop_signals, Daemon};

fn main() -> ExitCode {
    // Microseconds: a request's debug lines are tens of microseconds apart.
    env_logger::Builder::from_default_env()
        .format_timestamp_micros()
        .init();
    // Before any thread exists, so that only the signal thread takes SIGINT/SIGTERM.
    block_stop_signals();
    let result = DaemonConfig::try_from(Args::parse())
        .and_then(Daemon::new)
        .and_then(|d| d.stop_on_signals().and_then(|()| d.run()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("vhost-device-iommu: {e}");
            ExitCode::FAILURE
        }
    }
}
