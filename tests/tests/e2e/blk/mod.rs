//! The blk backend driven by `virtio-drivers`' own `VirtIOBlk` over the mini-VMM transport.

mod unconfined;
pub mod vm;
