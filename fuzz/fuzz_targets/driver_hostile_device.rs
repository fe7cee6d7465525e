//! The guest driver against a hostile device (see `virtio_iommu_fuzz::device`).
#![no_main]

use virtio_iommu_fuzz::device::{run, Scenario};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    run(&Scenario::decode(data));
});
