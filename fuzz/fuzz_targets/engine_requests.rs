//! The engine with the emulated host under arbitrary request sequences (see
//! `virtio_iommu_fuzz::engine`).
#![no_main]

use virtio_iommu_fuzz::engine::{run, EngineScenario};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    run(&EngineScenario::decode(data));
});
