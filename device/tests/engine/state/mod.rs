//! The device-state stream (PROTOCOL.md §12): a state saved on one engine and loaded on
//! another gives the same device (`round_trip`), streams that do not fit are refused with the
//! difference named and the destination unchanged (`refused`), hostile bytes never panic
//! (`hostile`).

mod hostile;
mod refused;
mod rich;
mod round_trip;
