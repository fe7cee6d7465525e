//! Requests shared by the benchmarks: 4 KiB MAP/UNMAP in domain 1, and a direct engine call.

use vhost_device_iommu::engine::Engine;
use virtio_iommu_spec::request::{Map, MapFlags, Unmap};
use virtio_iommu_spec::Request;

/// Mapping size of every benchmark request.
pub const PAGE: u64 = 0x1000;

/// MAP of one page at `iova` (identity-ish output, kept inside a 48-bit range).
pub fn map_req(iova: u64) -> Request {
    Request::Map(Map {
        domain: 1,
        virt_start: iova,
        virt_end: iova + PAGE - 1,
        phys_start: iova & 0xffff_ffff_f000,
        flags: MapFlags::READ | MapFlags::WRITE,
    })
}

/// UNMAP of the page at `iova`.
pub fn unmap_req(iova: u64) -> Request {
    Request::Unmap(Unmap {
        domain: 1,
        virt_start: iova,
        virt_end: iova + PAGE - 1,
    })
}

/// Sends a request straight to the engine (setup and untimed cleanup); returns the status.
pub fn send(v: &mut Engine, r: &Request) -> u8 {
    let mut w = [0xffu8; 4];
    assert_eq!(v.handle_request(r.encode().as_bytes(), &mut w), 4);
    w[0]
}
