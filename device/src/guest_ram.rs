//! The guest memory type of the whole crate, in one place.
//!
//! Its regions carry the migration's dirty-page log ([`LogBitmap`]): once the frontend hands a
//! log over with SET_LOG_BASE (live migration), every write through vm-memory (`Bytes`
//! writes, `VolatileSlice` stores and copies, virtio-queue's used-ring updates) sets the bit of
//! each page it touches. Until then a write only finds that no log is set.

use crate::log_bitmap::LogBitmap;

/// Guest RAM as the vhost-user library maps it, with the dirty-page log of migration.
pub type GuestRam = vm_memory::GuestMemoryMmap<LogBitmap>;
