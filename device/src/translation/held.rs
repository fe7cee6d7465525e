//! Guest requests whose used-ring entry waits for clients' acknowledgements
//! (spec/TRANSLATION.md §4.2), kept by the queue thread. At most one per chain in flight, so
//! bounded by the ring size.

use super::hold_id::HoldId;

/// A request processed but not yet returned to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldReply {
    /// What it waits for.
    pub hold: HoldId,
    /// Its chain's head.
    pub head: u16,
    /// Its used length.
    pub used: u32,
}

/// The held requests of one vhost-user connection.
#[derive(Debug, Default)]
pub struct HeldReplies {
    held: Vec<HeldReply>,
}

impl HeldReplies {
    /// Holds a reply.
    pub fn push(&mut self, r: HeldReply) {
        self.held.push(r);
    }

    /// Takes the replies whose hold is in `completed`, in the order they were held.
    pub fn release(&mut self, completed: &[HoldId]) -> Vec<HeldReply> {
        if completed.is_empty() || self.held.is_empty() {
            return Vec::new();
        }
        let (done, keep) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|r| completed.contains(&r.hold));
        self.held = keep;
        done
    }

    /// Drops every held reply (the guest reset its rings); returns how many.
    pub fn clear(&mut self) -> usize {
        std::mem::take(&mut self.held).len()
    }

    /// Replies held now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether none is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}
