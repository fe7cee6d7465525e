//! Where the two rings were: what tells a restarted daemon's first ring start apart as a
//! resume (the frontend's bases) or a guest reset (back at 0 after progress).

use crate::backend::NUM_QUEUES;

/// Each ring's next avail position and, once started, its addresses (descriptor table, avail,
/// used).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingMarks {
    /// `next_avail` of each ring.
    pub next_avail: [u16; NUM_QUEUES],
    /// The ring addresses at the last start.
    pub addrs: Option<[[u64; 3]; NUM_QUEUES]>,
}

/// Positions, a flag, then six addresses when it is set.
const LEN_WITHOUT: usize = 2 * NUM_QUEUES + 1;
const LEN_WITH: usize = LEN_WITHOUT + 8 * 3 * NUM_QUEUES;

impl RingMarks {
    pub(super) fn encode_into(&self, out: &mut Vec<u8>) {
        for n in self.next_avail {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.push(u8::from(self.addrs.is_some()));
        for a in self.addrs.iter().flatten().flatten() {
            out.extend_from_slice(&a.to_le_bytes());
        }
    }

    pub(super) fn decode(p: &[u8]) -> Option<RingMarks> {
        let mut next_avail = [0u16; NUM_QUEUES];
        for (i, n) in next_avail.iter_mut().enumerate() {
            *n = u16::from_le_bytes([*p.get(2 * i)?, *p.get(2 * i + 1)?]);
        }
        let addrs = match (p.get(2 * NUM_QUEUES)?, p.len()) {
            (0, LEN_WITHOUT) => None,
            (1, LEN_WITH) => {
                let mut a = [[0u64; 3]; NUM_QUEUES];
                let words = p[LEN_WITHOUT..].chunks_exact(8);
                for (slot, w) in a.iter_mut().flatten().zip(words) {
                    *slot = u64::from_le_bytes(w.try_into().ok()?);
                }
                Some(a)
            }
            _ => return None,
        };
        Some(RingMarks { next_avail, addrs })
    }
}
