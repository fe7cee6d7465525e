//! The guest memory the backend is given, and byte patterns to check DMA with.

use std::fs::OpenOptions;
use std::path::Path;

use vhost_device_iommu::GuestRam;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryAtomic};

pub const MIB: u64 = 1 << 20;

/// Guest memory for the host: 1 MiB at `gpa`, backed by a tmpfs file when `file` is given
/// (so the backend can use IOMMU_IOAS_MAP_FILE), else anonymous memory (IOMMU_IOAS_MAP).
pub fn guest_memory(gpa: u64, file: Option<&Path>) -> GuestMemoryAtomic<GuestRam> {
    let size = usize::try_from(MIB).expect("1 MiB fits usize");
    let mem = match file {
        Some(p) => {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(p)
                .expect("memory file");
            f.set_len(MIB).expect("size memory file");
            GuestRam::from_ranges_with_files([(
                GuestAddress(gpa),
                size,
                Some(FileOffset::new(f, 0)),
            )])
        }
        None => GuestRam::from_ranges(&[(GuestAddress(gpa), size)]),
    };
    GuestMemoryAtomic::new(mem.expect("guest memory"))
}

pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            u8::try_from(i % 256)
                .unwrap_or(0)
                .wrapping_mul(7)
                .wrapping_add(seed)
        })
        .collect()
}

pub fn read_mem(mem: &GuestMemoryAtomic<GuestRam>, gpa: u64, len: usize) -> Vec<u8> {
    use vm_memory::GuestAddressSpace;
    let mut buf = vec![0; len];
    mem.memory()
        .read_slice(&mut buf, GuestAddress(gpa))
        .expect("read guest memory");
    buf
}

pub fn write_mem(mem: &GuestMemoryAtomic<GuestRam>, gpa: u64, data: &[u8]) {
    use vm_memory::GuestAddressSpace;
    mem.memory()
        .write_slice(data, GuestAddress(gpa))
        .expect("write guest memory");
}

/// The daemon-side virtual address of guest-physical `gpa`.
pub fn host_address(mem: &GuestMemoryAtomic<GuestRam>, gpa: u64) -> u64 {
    use vm_memory::{GuestAddressSpace, GuestMemoryBackend};
    let p = mem
        .memory()
        .get_host_address(GuestAddress(gpa))
        .expect("gpa in guest memory");
    p as usize as u64
}
