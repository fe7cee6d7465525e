//! The engine on the emulated host, without sockets: one test binary, a module per concern.
//! `common` and `sva::guest` hold what the modules share.

mod common;
mod device;
mod dma;
mod hostile;
mod model;
mod requests;
mod sva;
mod translation;
