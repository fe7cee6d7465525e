//! Shared code of the fuzz targets: the checks each target runs on one input, and the seed
//! inputs that build valid structures (written to `corpus/` by `examples/make_seeds.rs`).
//!
//! The checks live here, not in `fuzz_targets/`, so that regression tests can replay a crash
//! input without libFuzzer.

pub mod backend;
pub mod backend_seeds;
pub mod code;
pub mod device;
pub mod engine;
pub mod seeds;
pub mod spec;
pub mod table_seeds;
pub mod tables;
