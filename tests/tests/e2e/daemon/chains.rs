//! Descriptor chains of every shape through the daemon: splits, indirect tables, and malformed
//! chains. Each is answered exactly (a status, or used length 0 with nothing written) and the
//! daemon keeps serving afterwards.

use super::vm::*;
use serde_json::json;
use virtio_iommu_spec::Status;
use virtio_iommu_testkit::memory::{GLOBAL_BASE, GLOBAL_SIZE};
use virtio_iommu_testkit::rawq::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, POISON};
use virtio_iommu_testkit::Chain;

/// Largest writable part the daemon answers (a 64 KiB PROBE area plus the tail).
const MAX_WRITABLE: u32 = 64 * 1024 + 4;
/// A descriptor length far beyond guest RAM, yet small enough that the chain stays under the
/// 2^32 bytes at which virtio-queue stops iterating (so the daemon itself must refuse it).
const HUGE: u32 = 0x8000_0000;

fn ones(n: usize) -> Vec<usize> {
    vec![1; n]
}

#[test]
fn split_and_indirect_requests() {
    let mut vm = Vm::start(&[]);
    let a = bytes(&attach(1, 1));
    // Readable part over three descriptors, tail over two.
    let c = vm.submit(
        &Chain::new()
            .readable_split(&a, &[3, 9])
            .writable_split(&[1, 3]),
    );
    assert_eq!(reply_status(&c, 4), Status::Ok);
    // Through an indirect table.
    let m = bytes(&map(1, 0x1000, 0x1fff, 0x1000));
    let c = vm.submit(&Chain::request(&m, 4).indirect());
    assert_eq!(reply_status(&c, 4), Status::Ok);
    // Every byte in its own descriptor, direct (40 descriptors) and indirect.
    let m2 = bytes(&map(1, 0x2000, 0x2fff, 0x2000));
    let c = vm.submit(
        &Chain::new()
            .readable_split(&m2, &ones(36))
            .writable_split(&[1; 4]),
    );
    assert_eq!(reply_status(&c, 4), Status::Ok);
    let u = bytes(&unmap(1, 0x2000, 0x2fff));
    let chain = Chain::new()
        .readable_split(&u, &ones(28))
        .writable_split(&[1; 4])
        .indirect();
    assert_eq!(reply_status(&vm.submit(&chain), 4), Status::Ok);
    // A PROBE whose area is spread over odd pieces; empty descriptors are harmless.
    let p = bytes(&probe(3));
    let chain = Chain::new()
        .readable(Vec::new())
        .readable_split(&p, &[5, 60])
        .writable_split(&[7, 0, 500, 13]);
    let (status, area) = probe_reply(&vm.submit(&chain));
    assert_eq!(status, Status::Ok);
    assert_eq!(area[..4], [1, 0, 20, 0]);
    assert!(area[24..].iter().all(|b| *b == 0));
    assert_eq!(
        vm.domains(),
        json!([domain(1, &[1], &[mapping(0x1000, 0x1fff, 0x1000, 3)])])
    );
}

#[test]
fn malformed_chains() {
    let mut vm = Vm::start(&[]);
    let a = bytes(&attach(1, 1));

    // Too short / too long readable part: S_INVAL.
    assert_eq!(
        reply_status(&vm.submit(&Chain::request(&a[..19], 4)), 4),
        Status::Inval
    );
    let mut long = a.clone();
    long.push(0);
    assert_eq!(
        reply_status(&vm.submit(&Chain::request(&long, 4)), 4),
        Status::Inval
    );
    // Much too long (past what the daemon gathers): still S_INVAL.
    let mut huge = a.clone();
    huge.resize(4000, 0);
    assert_eq!(
        reply_status(&vm.submit(&Chain::request(&huge, 4)), 4),
        Status::Inval
    );
    assert_eq!(vm.domains(), json!([]));
    vm.assert_alive();

    // Used length 0, nothing written.
    let unanswered: Vec<(Chain, usize, &str)> = vec![
        (
            Chain::new().writable(4).readable(a.clone()),
            4,
            "readable after writable",
        ),
        (
            Chain::new()
                .readable_split(&a, &[10])
                .writable(2)
                .readable(Vec::new())
                .writable(2),
            4,
            "readable between writables",
        ),
        (Chain::new().readable(a.clone()), 0, "no writable part"),
        (Chain::request(&a, 3), 3, "writable part under 4 bytes"),
        (
            Chain::new().readable(a.clone()).writable_split(&[1, 1, 1]),
            3,
            "3 one-byte tails",
        ),
        (
            Chain::new().raw(0x1000, 20, 0).writable(4),
            4,
            "readable below guest RAM",
        ),
        (
            Chain::new()
                .raw(GLOBAL_BASE + GLOBAL_SIZE - 8, 20, 0)
                .writable(4),
            4,
            "readable straddling the end of guest RAM",
        ),
        (
            Chain::new()
                .readable(a.clone())
                .raw(GLOBAL_BASE, HUGE, 0)
                .writable(4),
            4,
            "2 GiB readable descriptor",
        ),
        (
            Chain::request(&bytes(&probe(1)), MAX_WRITABLE + 4),
            MAX_WRITABLE as usize + 4,
            "writable over 64 KiB",
        ),
        (
            Chain::new()
                .readable(bytes(&probe(1)))
                .writable_split(&[40_000, 40_000]),
            80_000,
            "writable over 64 KiB in two pieces",
        ),
        (
            Chain::new().readable(bytes(&probe(1))).writable(16).raw(
                GLOBAL_BASE,
                HUGE,
                DESC_F_WRITE,
            ),
            16,
            "2 GiB writable descriptor",
        ),
        (
            Chain::new().writable(4).readable(a.clone()).indirect(),
            4,
            "readable after writable, indirect",
        ),
    ];
    for (chain, writable, why) in &unanswered {
        let c = vm.submit(chain);
        assert_eq!(c.len, 0, "{why}");
        assert_eq!(c.written, vec![POISON; *writable], "{why}");
    }
    assert_eq!(vm.domains(), json!([]), "no ATTACH took effect");
    vm.assert_alive();

    // Exactly 64 KiB of properties area is still answered.
    let c = vm.submit(&Chain::request(&bytes(&probe(1)), MAX_WRITABLE));
    let (status, area) = probe_reply(&c);
    assert_eq!(
        (status, area.len(), &area[..4]),
        (Status::Ok, 65536, &[1, 0, 20, 0][..])
    );
    assert!(area[24..].iter().all(|b| *b == 0));

    // A reply that cannot be written (tail outside guest RAM, or straddling its end): used
    // length 0, and the request does not take effect.
    let end = GLOBAL_BASE + GLOBAL_SIZE;
    for (tail, why) in [
        (0x2000, "below RAM"),
        (end - 2, "straddling the end of RAM"),
    ] {
        let c = vm.submit(&Chain::new().readable(a.clone()).raw(tail, 4, DESC_F_WRITE));
        assert_eq!(c.len, 0, "{why}");
        let c = vm.submit(
            &Chain::new()
                .readable(a.clone())
                .writable(2)
                .raw(tail, 4, DESC_F_WRITE),
        );
        assert_eq!((c.len, c.written), (0, vec![POISON; 2]), "{why}");
    }
    assert_eq!(vm.domains(), json!([]), "no ATTACH took effect");
    assert_eq!(vm.stats()["attach"]["ok"], json!(0));

    // Broken indirect tables: a length that is not a multiple of 16, a table outside RAM,
    // an indirect descriptor inside an indirect table, and indirect together with NEXT.
    let table = memory().alloc_pages(1).unwrap();
    let desc = |addr: u64, len: u32, flags: u16, next: u16| {
        let mut d = addr.to_le_bytes().to_vec();
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&next.to_le_bytes());
        d
    };
    let req = memory().alloc_pages(1).unwrap();
    memory().write(req, &a).unwrap();
    let mut t = desc(req, 20, DESC_F_NEXT, 1);
    t.extend(desc(table + 0x800, 4, DESC_F_WRITE | DESC_F_INDIRECT, 0));
    memory().write(table, &t).unwrap();
    let nested = memory().alloc_pages(1).unwrap();
    memory()
        .write(nested, &desc(table, 32, DESC_F_INDIRECT, 0))
        .unwrap();
    for (chain, why) in [
        (
            Chain::new().raw(table, 17, DESC_F_INDIRECT),
            "table length 17",
        ),
        (
            Chain::new().raw(0x1000, 32, DESC_F_INDIRECT),
            "table outside RAM",
        ),
        (
            Chain::new().raw(table, 32, DESC_F_INDIRECT),
            "indirect flag inside a table",
        ),
        (
            Chain::new().raw(nested, 16, DESC_F_INDIRECT),
            "table pointing to a table",
        ),
        (
            Chain::new().raw(table, 32, DESC_F_INDIRECT).writable(4),
            "indirect descriptor with NEXT",
        ),
    ] {
        let c = vm.submit(&chain);
        assert_eq!(c.len, 0, "{why}");
        vm.assert_alive();
    }
    for gpa in [table, req, nested] {
        memory().free_pages(gpa, 1).unwrap();
    }
    assert_eq!(vm.domains(), json!([]), "no ATTACH took effect");
    assert_eq!(vm.send(&attach(1, 1)), Status::Ok);
    vm.assert_alive();
}

/// A chain whose descriptors loop back onto themselves ends (bounded by the queue size) and
/// is returned unanswered.
#[test]
fn looping_chain() {
    let mut vm = Vm::start(&[]);
    // Build a normal two-descriptor chain, then point the tail descriptor's `next` back at the
    // head before the device is kicked.
    let head = vm
        .rq
        .submit(&Chain::request(&bytes(&attach(1, 1)), 4))
        .unwrap();
    let desc_table = vm.rq.config().desc;
    let head_desc = desc_table + u64::from(head) * 16;
    let next = memory().load_u16(head_desc + 14).unwrap();
    let tail_desc = desc_table + u64::from(next) * 16;
    let flags = memory().load_u16(tail_desc + 12).unwrap();
    memory()
        .store_u16(tail_desc + 12, flags | DESC_F_NEXT)
        .unwrap();
    memory().store_u16(tail_desc + 14, head).unwrap();
    vm.rq.kick(&vm.fe).unwrap();
    let c = vm.rq.wait_used(WAIT).unwrap();
    assert_eq!((c.head, c.len), (head, 0));
    vm.assert_alive();
}

/// A driver publishing an avail index more than a ring ahead of the device (impossible for a
/// correct driver) gets that queue stopped: one log line, no busy loop, the control socket and
/// GET_VRING_BASE still answer, and a guest reset brings the queue back.
#[test]
fn impossible_avail_index_stops_the_queue() {
    const EVENT_IDX: u64 = 1 << 29;
    for event_idx in [true, false] {
        let mut vm = Vm::start_with(&[], |f| if event_idx { f } else { f & !EVENT_IDX });
        assert_eq!(vm.send(&attach(1, 1)), Status::Ok);
        let next = vm.rq.avail_idx();
        vm.rq
            .publish_avail_idx(next.wrapping_add(RQ_SIZE + 1))
            .unwrap();
        vm.rq.kick(&vm.fe).unwrap();
        std::thread::sleep(QUIET);
        let pid = vm.daemon.pid();
        let before = cpu_ticks(pid);
        for _ in 0..5 {
            vm.rq.kick(&vm.fe).unwrap();
            std::thread::sleep(QUIET);
        }
        // Idle while stopped: well under 10 % of one core over half a second.
        let spent = cpu_ticks(pid) - before;
        assert!(
            spent < 5,
            "daemon used {spent} ticks while its queue was stopped"
        );
        assert_eq!(vm.stats()["domains"], json!(1));
        let log = vm.daemon.stderr();
        assert_eq!(
            log.matches("the queue is stopped").count(),
            1,
            "event_idx {event_idx}: {log}"
        );
        assert!(!log.contains("Iterator error"), "{log}");
        assert_eq!(vm.rq.device_used_idx().unwrap(), 1);
        // GET_VRING_BASE answers; the guest resets and the queue serves again.
        let Vm { fe, rq, eq, .. } = &mut vm;
        let bases = fe
            .guest_reset(|| {
                rq.reset()?;
                eq.reset()
            })
            .unwrap();
        assert_eq!(bases[0], Some(1));
        assert_eq!(vm.send(&attach(2, 1)), Status::Ok);
        assert_eq!(vm.domains(), json!([domain(2, &[1], &[])]));
    }
}

/// A flood of malformed chains is answered chain by chain, but logged at most ten times per
/// window (the guest must not be able to fill the host's disk through our log).
#[test]
fn malformed_chain_logs_are_rate_limited() {
    let mut vm = Vm::start(&[]);
    let a = bytes(&attach(1, 1));
    for _ in 0..40 {
        let c = vm.submit(&Chain::new().writable(4).readable(a.clone()));
        assert_eq!(c.len, 0);
    }
    assert_eq!(vm.send(&attach(1, 1)), Status::Ok);
    let log = vm.daemon.stderr();
    assert_eq!(
        log.matches("malformed descriptor chain").count(),
        10,
        "{log}"
    );
}
