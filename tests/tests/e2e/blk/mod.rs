//! The blk backend driven by `virtio-drivers`' own `VirtIOBlk` over the mini-VMM transport.

mod confined;
mod confined_hal;
mod unconfined;
pub mod vm;
