//! The guest table walkers over arbitrary guest memory (see `virtio_iommu_fuzz::tables`).
#![no_main]

use virtio_iommu_fuzz::tables::{run, WalkScenario};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    run(&WalkScenario::decode(data));
});
