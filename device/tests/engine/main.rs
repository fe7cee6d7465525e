//! The engine on the emulated host, without sockets: one test binary, a module per concern.
//! `common` and `sva::guest` hold what the modules share; `counting_alloc` is the binary's
//! allocator, so `footprint` can measure the state's memory.

mod budget;
mod common;
mod counting_alloc;
mod device;
mod dirty_log;
mod dma;
mod footprint;
mod hostile;
mod model;
mod requests;
mod state;
mod sva;
mod translation;

#[global_allocator]
static ALLOC: counting_alloc::Counting = counting_alloc::Counting;
