//! Seeds of `backend_events`: valid ATTACH/MAP/UNMAP/DETACH/PROBE chains on the requestq
//! (direct and indirect, EVENT_IDX off and on), fault events into eventq buffers, the
//! impossible avail index and the reset that recovers from it, a full 256-entry ring served
//! across wake-ups, and malformed chains.

use virtio_iommu_spec::request::{Attach, AttachFlags, Detach, Map, MapFlags, Probe, Unmap};
use virtio_iommu_spec::Request;

use crate::backend::{BackendOp, BackendScenario, Setup, DATA};

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;

fn desc(queue: u8, index: u16, addr: u64, len: u32, flags: u16, next: u16) -> BackendOp {
    BackendOp::Desc {
        queue,
        index,
        addr,
        len,
        flags,
        next,
    }
}

fn gpa(a: u64) -> u32 {
    u32::try_from(a).unwrap_or(u32::MAX)
}

/// A request chain at `head` and `head + 1`: the request's bytes at `DATA + 0x100 * head`, a
/// `reply`-byte writable buffer 0x80 bytes further.
fn chain(head: u16, r: &Request, reply: u32) -> Vec<BackendOp> {
    let bytes = r.encode();
    let bytes = bytes.as_bytes();
    let at = DATA + 0x100 * u64::from(head);
    vec![
        BackendOp::Write(gpa(at), bytes.to_vec()),
        desc(
            0,
            head,
            at,
            u32::try_from(bytes.len()).unwrap_or(0),
            NEXT,
            head + 1,
        ),
        desc(0, head + 1, at + 0x80, reply, WRITE, 0),
    ]
}

fn attach(domain: u32, endpoint: u32) -> Request {
    Request::Attach(Attach {
        domain,
        endpoint,
        flags: AttachFlags::empty(),
    })
}

fn publish(queue: u8, heads: &[u16]) -> BackendOp {
    BackendOp::Publish {
        queue,
        heads: heads.to_vec(),
    }
}

/// Seeds of `backend_events`.
#[must_use]
pub fn backend_events() -> Vec<BackendScenario> {
    let map = Request::Map(Map {
        domain: 1,
        virt_start: 0x1000,
        virt_end: 0x1fff,
        phys_start: 0x8000,
        flags: MapFlags::READ | MapFlags::WRITE,
    });
    let unmap = Request::Unmap(Unmap {
        domain: 1,
        virt_start: 0,
        virt_end: u64::MAX,
    });
    let detach = Request::Detach(Detach {
        domain: 1,
        endpoint: 0,
    });
    let mut basic = chain(0, &attach(1, 0), 4);
    basic.extend(chain(2, &map, 4));
    basic.extend([publish(0, &[0, 2]), BackendOp::Kick(0)]);
    basic.extend(chain(4, &unmap, 4));
    basic.extend([publish(0, &[4]), BackendOp::Kick(0)]);
    basic.extend(chain(6, &detach, 4));
    basic.extend([publish(0, &[6]), BackendOp::Kick(0)]);
    let basic = BackendScenario {
        setup: Setup {
            event_idx: false,
            boot_bypass: false,
            size_log2: 4,
        },
        ops: basic,
    };

    // EVENT_IDX: used_event set, a PROBE through an indirect table (readable request, then
    // a 512-byte properties area and the tail).
    let probe = Request::Probe(Probe { endpoint: 8 }).encode();
    let probe = probe.as_bytes();
    let table = DATA + 0x800;
    let mut indirect = chain(0, &attach(1, 8), 4);
    indirect.extend([
        BackendOp::UsedEvent { queue: 0, idx: 0 },
        publish(0, &[0]),
        BackendOp::Kick(0),
        BackendOp::Write(gpa(DATA + 0x900), probe.to_vec()),
        BackendOp::Write(
            gpa(table),
            [
                desc_bytes(DATA + 0x900, probe.len(), NEXT, 1),
                desc_bytes(DATA + 0xa00, 512 + 4, WRITE, 0),
            ]
            .concat(),
        ),
        desc(0, 2, table, 32, INDIRECT, 0),
        BackendOp::UsedEvent { queue: 0, idx: 1 },
        publish(0, &[2]),
        BackendOp::Kick(0),
    ]);
    let indirect = BackendScenario {
        setup: Setup {
            event_idx: true,
            boot_bypass: false,
            size_log2: 3,
        },
        ops: indirect,
    };

    // The impossible avail index: 17 ahead on a 16-entry ring. The ring stops; the guest's
    // reset (index back to 0, rings restarted at 0) serves it again.
    let mut impossible = chain(0, &attach(1, 0), 4);
    impossible.extend([
        BackendOp::AvailIdx { queue: 0, idx: 17 },
        BackendOp::Kick(0),
        BackendOp::Kick(2),
        BackendOp::Kick(0),
        BackendOp::AvailIdx { queue: 0, idx: 0 },
        BackendOp::Restart(0),
        publish(0, &[0]),
        BackendOp::Kick(0),
        BackendOp::Restart(1),
        BackendOp::Kick(0),
    ]);
    let impossible = BackendScenario {
        setup: Setup {
            event_idx: true,
            boot_bypass: false,
            size_log2: 4,
        },
        ops: impossible,
    };

    // Faults into eventq buffers: two faults, two 64-byte buffers, a third fault waiting.
    let mut events = chain(0, &attach(1, 0), 4);
    events.extend([
        publish(0, &[0]),
        BackendOp::Kick(0),
        BackendOp::Fault {
            endpoint: 0,
            iova: 0x9000,
        },
        desc(1, 0, DATA + 0x1000, 64, WRITE, 0),
        desc(1, 1, DATA + 0x1040, 64, WRITE, 0),
        publish(1, &[0, 1]),
        BackendOp::Kick(1),
        BackendOp::Fault {
            endpoint: 0,
            iova: 0xa000,
        },
        BackendOp::Fault {
            endpoint: 0,
            iova: 0xb000,
        },
        BackendOp::Kick(2),
    ]);
    let events = BackendScenario {
        setup: Setup {
            event_idx: false,
            boot_bypass: false,
            size_log2: 1,
        },
        ops: events,
    };

    // A full 256-entry ring (one chain published 256 times): one wake-up's budget, the rest
    // on the wake-up it queues.
    let mut full = chain(0, &attach(1, 0), 4);
    full.extend([
        publish(0, &[0; 255]),
        publish(0, &[0]),
        BackendOp::Kick(0),
        BackendOp::Kick(2),
    ]);
    let full = BackendScenario {
        setup: Setup {
            event_idx: true,
            boot_bypass: false,
            size_log2: 8,
        },
        ops: full,
    };

    // Malformed chains on a 4-entry ring: a looping chain, readable after writable, a buffer
    // outside RAM, a head outside the table (the ring stops there).
    let hostile = BackendScenario {
        setup: Setup {
            event_idx: false,
            boot_bypass: true,
            size_log2: 2,
        },
        ops: vec![
            desc(0, 0, DATA, 20, NEXT, 0),
            desc(0, 1, DATA + 0x100, 4, WRITE | NEXT, 2),
            desc(0, 2, DATA, 20, 0, 0),
            desc(0, 3, 0x2_0000_0000, 4, WRITE, 0),
            publish(0, &[0, 1, 3]),
            BackendOp::Kick(0),
            BackendOp::Kick(3),
            publish(0, &[7, 0]),
            BackendOp::Kick(0),
            BackendOp::Kick(0),
        ],
    };
    vec![basic, indirect, impossible, events, full, hostile]
}

fn desc_bytes(addr: u64, len: usize, flags: u16, next: u16) -> Vec<u8> {
    let mut d = Vec::with_capacity(16);
    d.extend_from_slice(&addr.to_le_bytes());
    d.extend_from_slice(&u32::try_from(len).unwrap_or(0).to_le_bytes());
    d.extend_from_slice(&flags.to_le_bytes());
    d.extend_from_slice(&next.to_le_bytes());
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_seeds_encode_decode_and_run() {
        let o: Vec<_> = backend_events()
            .iter()
            .map(|s| {
                assert_eq!(BackendScenario::decode(&s.encode()), *s);
                crate::backend::run(s)
            })
            .collect();
        let got = |x: &crate::backend::BackendOutcome| (x.used, x.answered, x.left);
        // ATTACH, MAP, UNMAP, DETACH: each answered.
        assert_eq!(got(&o[0]), ([4, 0], [4, 0], 0), "{:?}", o[0]);
        // EVENT_IDX: the ATTACH and the PROBE through its indirect table answered.
        assert_eq!(got(&o[1]), ([2, 0], [2, 0], 0), "{:?}", o[1]);
        // The impossible index: three events take nothing; after the reset the chain is
        // served; the resume at 1 leaves the eventq's index impossible (nothing taken).
        assert_eq!(got(&o[2]), ([1, 0], [1, 0], 4), "{:?}", o[2]);
        // Two of three faults delivered, one per buffer.
        assert_eq!(got(&o[3]), ([1, 2], [1, 2], 1), "{:?}", o[3]);
        // The full ring: all 256 chains in one wake-up's budget.
        assert_eq!(got(&o[4]), ([256, 0], [256, 0], 0), "{:?}", o[4]);
        // Malformed chains come back unanswered; the head outside the table stops the ring.
        assert_eq!(got(&o[5]), ([3, 0], [0, 0], 2), "{:?}", o[5]);
    }
}
