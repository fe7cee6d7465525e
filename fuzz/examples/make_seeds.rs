//! Writes the seed corpus of every target: `cargo run --example make_seeds` (in `fuzz/`).
use std::fs;
use std::path::Path;

fn write(target: &str, seeds: &[Vec<u8>]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir).expect("corpus directory");
    for (i, s) in seeds.iter().enumerate() {
        fs::write(dir.join(format!("seed-{i:02}")), s).expect("seed file");
    }
    println!("{target}: {} seeds in {}", seeds.len(), dir.display());
}

fn main() {
    write("spec_decode", &virtio_iommu_fuzz::seeds::spec_decode());
    let scenarios: Vec<Vec<u8>> = virtio_iommu_fuzz::seeds::driver_hostile_device()
        .iter()
        .map(virtio_iommu_fuzz::device::Scenario::encode)
        .collect();
    write("driver_hostile_device", &scenarios);
    let engine: Vec<Vec<u8>> = virtio_iommu_fuzz::seeds::engine_requests()
        .iter()
        .map(virtio_iommu_fuzz::engine::EngineScenario::encode)
        .collect();
    write("engine_requests", &engine);
    let walks: Vec<Vec<u8>> = virtio_iommu_fuzz::table_seeds::table_walk()
        .iter()
        .map(virtio_iommu_fuzz::tables::WalkScenario::encode)
        .collect();
    write("table_walk", &walks);
    let backend: Vec<Vec<u8>> = virtio_iommu_fuzz::backend_seeds::backend_events()
        .iter()
        .map(virtio_iommu_fuzz::backend::BackendScenario::encode)
        .collect();
    write("backend_events", &backend);
}
