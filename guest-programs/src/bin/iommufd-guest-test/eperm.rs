//! The EPERM path: no MSI isolation, and the hint the error gives.

use std::process::ExitCode;

use vhost_device_iommu::host::iommufd::{IommufdConfig, IommufdHost, VfioEndpoint};

use crate::report::Report;

/// Without interrupt remapping (virtio-iommu on x86, no `allow_unsafe_interrupts`) the bind is
/// refused with EPERM, and the error must tell the operator what to do.
pub fn eperm_test(bdf: &str) -> ExitCode {
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
