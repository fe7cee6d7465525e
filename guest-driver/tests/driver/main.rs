//! The driver against a fake device (`fake`): every request's exact bytes, statuses and used
//! lengths, initialisation, batches and events, the vSVA tables and requests, and a device that
//! misbehaves (`hostile`). One test binary; each module is one concern.

mod batch_events;
mod fake;
mod hostile;
mod init;
mod logs;
mod requests;
mod sva_requests;
mod sva_tables;
