//! `INVAL_ACK`s that must wait for pins ([`EndpointTlb::pin`]): sent in order by a thread of
//! the connection's own, so that its reader thread keeps reading while they wait. A pinned
//! access may be waiting for a `TRANSLATE_REPLY` only the reader delivers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;

use log::debug;
use virtio_iommu_spec::translation::{ClientMessage, InvalAck};

use crate::endpoint_tlb::EndpointTlb;
use crate::error::Error;
use crate::session::Session;

/// Acknowledgements that may wait for pins at once; one more closes the connection (the
/// daemon sends far fewer: it waits for the acks of what it holds the guest for).
pub const MAX_WAITING_ACKS: usize = 1024;

/// One acknowledgement waiting for the pins of `tlbs`.
struct Job {
    seq: u64,
    tlbs: Vec<Arc<EndpointTlb>>,
}

/// The acknowledging side of one connection. Dropping it ends its thread once the
/// acknowledgements queued before are sent.
#[derive(Debug)]
pub struct Acker {
    jobs: Sender<Job>,
    /// Jobs queued and not yet sent: while there are any, later acknowledgements queue behind
    /// them (an `INVAL_ACK` acknowledges every lower sequence number too).
    backlog: Arc<AtomicUsize>,
}

impl Acker {
    /// Starts the thread of `session`.
    ///
    /// # Errors
    /// The thread cannot be created.
    pub fn spawn(session: Arc<Session>) -> Result<Acker, Error> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let backlog = Arc::new(AtomicUsize::new(0));
        let left = backlog.clone();
        std::thread::Builder::new()
            .name("viommu-client-acker".into())
            .spawn(move || {
                for job in rx {
                    for t in &job.tlbs {
                        t.wait_unpinned();
                    }
                    debug!("invalidate seq {}: acknowledged after the pins", job.seq);
                    let sent = session.send(&ClientMessage::InvalAck(InvalAck { seq: job.seq }));
                    left.fetch_sub(1, Ordering::Release);
                    if sent.is_err() {
                        // The reader sees the connection end and drops everything.
                        session.close();
                    }
                }
            })
            .map_err(Error::Io)?;
        Ok(Acker { jobs, backlog })
    }

    /// Acknowledges `seq` once no pin taken on `tlbs` before their entries were dropped is
    /// held: at once when none is held and no earlier acknowledgement waits, else from the
    /// thread.
    ///
    /// # Errors
    /// The acknowledgement cannot be sent or queued, or [`MAX_WAITING_ACKS`] already wait (the
    /// reader then closes the connection: everything cached is dropped).
    pub fn ack(
        &self,
        session: &Session,
        seq: u64,
        tlbs: Vec<Arc<EndpointTlb>>,
    ) -> Result<(), Error> {
        let waiting = self.backlog.load(Ordering::Acquire);
        if waiting == 0 && tlbs.iter().all(|t| t.unpinned()) {
            return session.send(&ClientMessage::InvalAck(InvalAck { seq }));
        }
        if waiting >= MAX_WAITING_ACKS {
            return Err(Error::BadReply("too many INVALIDATEs waiting for pins"));
        }
        self.backlog.fetch_add(1, Ordering::AcqRel);
        self.jobs
            .send(Job { seq, tlbs })
            .map_err(|_| Error::Disconnected)
    }
}
