//! `RingIovas`: where the driver put each queue's rings, as I/O virtual addresses.
//!
//! With VIRTIO_F_ACCESS_PLATFORM negotiated, a frontend that knows of the IOMMU (QEMU with
//! `iommu_platform=on` behind a vIOMMU) sends SET_VRING_ADDR with IOVAs. vhost-user-backend
//! would turn them into guest-physical addresses through the memory table and refuse them, so
//! [`crate::frontend_shim`] records them here and hands the library an address it accepts; the
//! queue thread puts these back on the queue before it touches the rings.

use std::sync::{Mutex, PoisonError};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use crate::backend::NUM_QUEUES;

/// One queue's descriptor table, avail ring and used ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rings {
    /// Descriptor table.
    pub desc: u64,
    /// Avail ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
}

impl Rings {
    /// The addresses `q` uses now.
    #[must_use]
    pub fn of(q: &Queue) -> Self {
        Rings {
            desc: q.desc_table(),
            avail: q.avail_ring(),
            used: q.used_ring(),
        }
    }

    /// Puts these addresses on `q`.
    ///
    /// # Errors
    /// An address is misaligned for its area (the queue keeps its old addresses).
    pub fn apply(self, q: &mut Queue) -> Result<(), virtio_queue::Error> {
        let old = Rings::of(q);
        let set = |q: &mut Queue, r: Rings| {
            q.try_set_desc_table_address(GuestAddress(r.desc))?;
            q.try_set_avail_ring_address(GuestAddress(r.avail))?;
            q.try_set_used_ring_address(GuestAddress(r.used))
        };
        set(q, self).inspect_err(|_| {
            // The old addresses were accepted before, so they are again.
            let _ = set(q, old);
        })
    }
}

/// The ring IOVAs the frontend last set for each queue, shared by the connection's shim and its
/// queue thread.
#[derive(Debug, Default)]
pub struct RingIovas {
    slots: Mutex<[Option<Rings>; NUM_QUEUES]>,
}

impl RingIovas {
    /// Records `rings` for queue `index`; an index past the device's queues is ignored (the
    /// library refuses that SET_VRING_ADDR itself).
    pub fn set(&self, index: usize, rings: Rings) {
        if let Some(slot) = self.lock().get_mut(index) {
            *slot = Some(rings);
        }
    }

    /// What queue `index` was last given, if any.
    #[must_use]
    pub fn get(&self, index: usize) -> Option<Rings> {
        self.lock().get(index).copied().flatten()
    }

    /// Forgets every queue (a new connection).
    pub fn clear(&self) {
        *self.lock() = [None; NUM_QUEUES];
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Option<Rings>; NUM_QUEUES]> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_sets_all_three_or_none() {
        let mut q = Queue::new(16).unwrap();
        let good = Rings {
            desc: 0x40_0000_1000,
            avail: 0x40_0000_2000,
            used: 0x40_0000_3000,
        };
        good.apply(&mut q).unwrap();
        assert_eq!(Rings::of(&q), good);
        // A used ring must be 4-byte aligned: nothing changes.
        let bad = Rings {
            desc: 0x1000,
            avail: 0x2000,
            used: 0x3002,
        };
        assert!(bad.apply(&mut q).is_err());
        assert_eq!(Rings::of(&q), good);
    }

    #[test]
    fn slots_keep_the_last_addresses_of_each_queue() {
        let t = RingIovas::default();
        assert_eq!(t.get(0), None);
        let r = Rings {
            desc: 1 << 12,
            avail: 2 << 12,
            used: 3 << 12,
        };
        t.set(0, r);
        t.set(NUM_QUEUES, r);
        assert_eq!(t.get(0), Some(r));
        assert_eq!(t.get(NUM_QUEUES), None);
        t.clear();
        assert_eq!(t.get(0), None);
    }
}
