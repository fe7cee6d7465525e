//! The translation service (`--translation-socket`, spec/TRANSLATION.md): device backends ask
//! the daemon what an endpoint's IOVA translates to, cache the answer, and drop it when the
//! daemon pushes an INVALIDATE; the guest's UNMAP, DETACH or INVALIDATE completes only once
//! every client that may hold an affected translation acknowledged (or was cut off).
//!
//! - [`Hub`] (`hub.rs`): what the queue thread and the service thread share; the queue thread
//!   calls [`Hub::invalidate`] after every state change and holds the guest request's reply
//!   ([`HeldReplies`], `held.rs`) until [`Hub::take_completed`] names its [`HoldId`].
//! - `registry.rs`: the clients ([`peer.rs`](self)) and the holds (`holds.rs`) behind the hub's
//!   lock, the acknowledgement bound and the cut-off.
//! - `scope.rs`: which INVALIDATE messages one client gets for one engine record.
//! - `service.rs`: the service thread (accept, read, TRANSLATE, page-request waits, timeouts),
//!   `connection.rs` its framing of the input, `translate.rs` the TRANSLATE checks and reply,
//!   `busy_poll.rs` the bounded spinning before it sleeps (`--translation-poll-us`).
//! - `config.rs`, `stats.rs`: the validated flags and the counters.

pub(crate) mod busy_poll;
mod config;
mod connection;
mod held;
mod hold_id;
mod holds;
mod hub;
mod peer;
mod registry;
mod scope;
mod service;
mod stats;
mod translate;

use std::os::unix::net::UnixListener;
use std::sync::Arc;

pub use config::{TranslationConfig, DEFAULT_POLL_US, MAX_POLL_US};
pub use held::{HeldReplies, HeldReply};
pub use hold_id::HoldId;
pub use hub::Hub;
pub use scope::{scopes, Scope, WIDEN_AT};
pub use stats::TranslationStats;

use crate::backend::{lock, SharedEngine};
use crate::control::WakeSlot;
use crate::error::{Error, Result};

/// Binds the translation socket, turns on the engine's invalidation records and serves the
/// socket from a thread for the life of the process.
///
/// # Errors
/// The socket cannot be bound, or the thread's resources cannot be created.
pub fn spawn(config: TranslationConfig, engine: SharedEngine, wake: WakeSlot) -> Result<Arc<Hub>> {
    let path = config.path.clone();
    let bind_err = |err| Error::TranslationSocket {
        path: path.clone(),
        err,
    };
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(bind_err)?;
    let hub = Arc::new(Hub::new(config, wake)?);
    let svc = service::Service::new(listener, hub.clone(), engine.clone()).map_err(bind_err)?;
    lock(&engine).track_invalidations(true);
    service::announce(&path);
    std::thread::Builder::new()
        .name("translation".into())
        .spawn(move || svc.run())?;
    Ok(hub)
}
