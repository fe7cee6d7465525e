//! The guest driver against the daemon ([`vm::Vm`]).

mod bypass;
mod errors;
mod translate;
pub mod vm;
