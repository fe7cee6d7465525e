//! The backend's whole event path on real rings (see `virtio_iommu_fuzz::backend`).
#![no_main]

use virtio_iommu_fuzz::backend::{run, BackendScenario};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    run(&BackendScenario::decode(data));
});
