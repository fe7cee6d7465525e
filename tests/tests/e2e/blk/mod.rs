//! The blk backend driven by `virtio-drivers`' own `VirtIOBlk` over the mini-VMM transport.

mod confined;
mod confined_hal;
mod page_request;
mod unconfined;
pub mod vm;
