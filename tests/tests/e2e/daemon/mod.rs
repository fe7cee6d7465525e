//! The daemon driven with raw descriptor chains ([`vm::Vm`]).

mod chains;
mod config;
mod control;
mod dirty_log;
mod hostile;
mod lifecycle;
mod notifications;
mod polling;
mod requests;
mod restart;
mod state;
pub mod vm;
