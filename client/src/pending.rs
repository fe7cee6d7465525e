//! `TRANSLATE`s waiting for their reply, by tag (at most 64, §2.3).

use std::collections::HashMap;

use virtio_iommu_spec::translation::{TranslateFault, MAX_OUTSTANDING};

use crate::endpoint_tlb::TlbKey;

/// How a `TRANSLATE` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Translated: the ranges are in the key's IOTLB.
    Cached,
    /// Not permitted.
    Fault(TranslateFault),
    /// `INVAL`.
    Invalid,
    /// `UNSUPP`.
    Unsupported,
    /// A well-formed reply that breaks the protocol's rules.
    BadReply(&'static str),
    /// The connection ended first.
    Disconnected,
}

/// One request in flight.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    /// Whose IOTLB the reply's ranges go to.
    pub key: TlbKey,
    /// The first address asked for (the reply's first range must contain it).
    pub iova: u64,
    /// The access asked for: READ and/or WRITE (`MapFlags` bits, as ranges carry them).
    pub perm: virtio_iommu_spec::request::MapFlags,
    /// The connection it was sent on.
    pub generation: u64,
}

#[derive(Debug)]
struct Slot {
    request: Request,
    outcome: Option<Outcome>,
}

/// The table of requests in flight.
#[derive(Debug, Default)]
pub struct Pending {
    slots: HashMap<u64, Slot>,
    next_tag: u64,
}

impl Pending {
    /// Whether another request may be sent.
    #[must_use]
    pub fn has_room(&self) -> bool {
        self.slots.len() < MAX_OUTSTANDING
    }

    /// Records a request; returns its tag.
    pub fn add(&mut self, request: Request) -> u64 {
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1);
        self.slots.insert(
            tag,
            Slot {
                request,
                outcome: None,
            },
        );
        tag
    }

    /// The request behind `tag` if it was sent on connection `generation` and is unanswered.
    #[must_use]
    pub fn waiting(&self, tag: u64, generation: u64) -> Option<Request> {
        self.slots
            .get(&tag)
            .filter(|s| s.outcome.is_none() && s.request.generation == generation)
            .map(|s| s.request)
    }

    /// Records `outcome` for `tag`.
    pub fn complete(&mut self, tag: u64, outcome: Outcome) {
        if let Some(s) = self.slots.get_mut(&tag) {
            s.outcome.get_or_insert(outcome);
        }
    }

    /// Ends every unanswered request of connection `generation` with `Disconnected`.
    pub fn disconnect(&mut self, generation: u64) {
        for s in self.slots.values_mut() {
            if s.request.generation == generation {
                s.outcome.get_or_insert(Outcome::Disconnected);
            }
        }
    }

    /// Removes `tag`'s slot, giving its outcome if it has one.
    pub fn take(&mut self, tag: u64) -> Option<Outcome> {
        let done = self.slots.get(&tag)?.outcome?;
        self.slots.remove(&tag);
        Some(done)
    }

    /// Forgets `tag` (its waiter gave up); a late reply is then ignored.
    pub fn forget(&mut self, tag: u64) {
        self.slots.remove(&tag);
    }
}
