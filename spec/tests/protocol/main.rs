//! The protocol crate from the outside: byte vectors for every layout and the decoders' error
//! paths, and property tests that no input makes a decoder panic. One test binary.

mod events_probe;
mod never_panics;
mod requests;
mod translation;
