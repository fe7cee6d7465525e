//! Spec decoders with round-trip checks (see `virtio_iommu_fuzz::spec`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| virtio_iommu_fuzz::spec::check(data));
