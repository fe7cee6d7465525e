//! Which acknowledgements each held guest request still waits for.

use std::collections::BTreeMap;

use super::hold_id::HoldId;

/// Held completions: per hold, the highest sequence number each client must acknowledge.
#[derive(Debug, Default)]
pub(super) struct Holds {
    waiting: BTreeMap<u64, BTreeMap<u64, u64>>,
    next: u64,
    completed: Vec<HoldId>,
}

impl Holds {
    /// A hold waiting for `acks` (client → sequence number); `None` when there is nothing to
    /// wait for.
    pub(super) fn add(&mut self, acks: BTreeMap<u64, u64>) -> Option<HoldId> {
        if acks.is_empty() {
            return None;
        }
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        self.waiting.insert(id, acks);
        Some(HoldId(id))
    }

    fn settle(&mut self, client: u64, done: impl Fn(u64) -> bool) -> usize {
        let mut n = 0;
        self.waiting.retain(|id, acks| {
            if acks.get(&client).is_some_and(|s| done(*s)) {
                acks.remove(&client);
            }
            if acks.is_empty() {
                self.completed.push(HoldId(*id));
                n += 1;
                false
            } else {
                true
            }
        });
        n
    }

    /// `client` acknowledged every sequence number up to `seq`; returns the holds completed.
    pub(super) fn ack(&mut self, client: u64, seq: u64) -> usize {
        self.settle(client, |s| s <= seq)
    }

    /// `client` is gone (closed or cut off): nothing waits for it; returns the holds completed.
    pub(super) fn drop_client(&mut self, client: u64) -> usize {
        self.settle(client, |_| true)
    }

    /// Holds completed since the last call.
    pub(super) fn take_completed(&mut self) -> Vec<HoldId> {
        std::mem::take(&mut self.completed)
    }

    /// Holds still waiting.
    pub(super) fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_completes_with_its_last_ack() {
        let mut h = Holds::default();
        assert_eq!(h.add(BTreeMap::new()), None);
        let a = h.add(BTreeMap::from([(1, 5), (2, 1)])).unwrap();
        let b = h.add(BTreeMap::from([(1, 6)])).unwrap();
        assert_eq!(h.ack(1, 4), 0);
        assert_eq!(h.ack(1, 5), 0);
        assert!(h.take_completed().is_empty());
        assert_eq!(h.ack(2, 1), 1);
        assert_eq!(h.take_completed(), vec![a]);
        assert_eq!(h.drop_client(1), 1);
        assert_eq!(h.take_completed(), vec![b]);
        assert_eq!(h.waiting(), 0);
    }
}
