//! Guest requests whose used-ring entry waits for clients' acknowledgements
//! (spec/TRANSLATION.md §4.2), kept by the queue thread. At most one per chain in flight, so
//! bounded by the ring size.
//!
//! Replies leave in ring order: a reply behind a held one waits for it too. The used index
//! then always counts a prefix of the ring's chains, which is what a frontend that lost its
//! backend resumes from (it restarts the ring at the used index in guest memory): an entry
//! published ahead of an older held one would be taken and answered a second time.

use super::hold_id::HoldId;

/// A request processed but not yet returned to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldReply {
    /// What it waits for: acknowledgements, or (`None`) only the replies ahead of it.
    pub hold: Option<HoldId>,
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

    /// Marks the replies whose hold is in `completed` as ready and takes the ready ones at
    /// the front, in ring order.
    pub fn release(&mut self, completed: &[HoldId]) -> Vec<HeldReply> {
        for r in &mut self.held {
            if r.hold.is_some_and(|h| completed.contains(&h)) {
                r.hold = None;
            }
        }
        let ready = self.held.iter().take_while(|r| r.hold.is_none()).count();
        self.held.drain(..ready).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn r(hold: Option<HoldId>, head: u16) -> HeldReply {
        HeldReply {
            hold,
            head,
            used: 4,
        }
    }

    #[test]
    fn replies_leave_in_ring_order() {
        let (a, b) = (HoldId(1), HoldId(2));
        let mut h = HeldReplies::default();
        h.push(r(Some(a), 0));
        h.push(r(None, 1));
        h.push(r(Some(b), 2));
        h.push(r(None, 3));
        assert!(h.release(&[b]).is_empty(), "behind the first hold");
        let heads: Vec<u16> = h.release(&[a]).iter().map(|x| x.head).collect();
        assert_eq!(heads, [0, 1, 2, 3]);
        assert!(h.is_empty());
    }
}
