//! End to end against the real daemon, spawned as a child process and driven through the
//! mini-VMM: one test binary, a module per layer.
//!
//! - [`daemon`]: raw descriptor chains on the rings (every request type, malformed chains,
//!   config space, control socket, lifecycle: reconnects, reset vs pause, signals).
//! - [`driver`]: the unmodified guest driver over the vhost-user transport.
//! - [`sva`]: vSVA with both table formats: DMA through bound tables, page requests, hostile
//!   tables.
//! - [`blk`]: the vhost-user-blk backend under `virtio-drivers`' `VirtIOBlk`, unconfined and
//!   confined by the daemon.
//! - [`translation`]: the translation socket (TRANSLATE, INVALIDATE and strict completion,
//!   protocol errors, page requests).

mod blk;
mod daemon;
mod driver;
mod sva;
mod translation;
