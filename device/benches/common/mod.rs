//! Requests shared by the benchmarks (on the test kit's builders): 4 KiB MAP/UNMAP in domain 1,
//! and a direct engine call.

use vhost_device_iommu::engine::Engine;
use virtio_iommu_spec::Request;
use virtio_iommu_testkit::requests as req;

/// Mapping size of every benchmark request.
pub const PAGE: u64 = 0x1000;

/// MAP of one page at `iova` (identity-ish output, kept inside a 48-bit range).
pub fn map_req(iova: u64) -> Request {
    req::map(1, iova, iova + PAGE - 1, iova & 0xffff_ffff_f000)
}

/// UNMAP of the page at `iova`.
pub fn unmap_req(iova: u64) -> Request {
    req::unmap(1, iova, iova + PAGE - 1)
}

/// Sends a request straight to the engine (setup and untimed cleanup); returns the status.
pub fn send(v: &mut Engine, r: &Request) -> u8 {
    let mut w = [0xffu8; 4];
    assert_eq!(v.handle_request(r.encode().as_bytes(), &mut w), 4);
    w[0]
}
