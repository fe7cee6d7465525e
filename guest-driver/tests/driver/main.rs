//! The driver against a fake device (`fake`): every request's exact bytes, statuses and used
//! lengths, initialisation, batches and events, and the vSVA tables and requests. One test
//! binary; each module is one concern.

mod batch_events;
mod fake;
mod init;
mod requests;
mod sva_requests;
mod sva_tables;
