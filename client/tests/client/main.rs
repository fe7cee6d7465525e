//! The client against a fake daemon on a real socket: HELLO, TRANSLATE and the IOTLB hit,
//! INVALIDATE (dropped before the ack, and only after the accesses using it), faults not
//! cached, reconnection after a daemon restart, bounded waits, hostile replies; `ConfinedMemory`
//! (the fast hit and the `IommuMemory` path, the ack after its accesses); `PinnedMemory` (the
//! ack after the view, misses under it, acks in order); wire order kept whichever thread reads
//! (busy-polling off, at the default, long).
//!
//! `VIOMMU_TEST_POLL_US=N` runs every test with `busy_poll` N µs (default: the config's, 50),
//! so that the whole suite runs with polling on and off.

mod fake;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fake::Fake;
use virtio_iommu_client::{Client, ClientConfig, ConfinedMemory, EndpointRange, Error};
use virtio_iommu_spec::event::{FaultFlags, FaultReason};
use virtio_iommu_spec::request::MapFlags;
use virtio_iommu_spec::translation::{
    DaemonMessage, Endpoints, HelloStatus, Invalidate, Pasids, TranslateFlags,
};
use vm_memory::iommu::MappedRange;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, IommuMemory, Permissions};

const EP: u32 = 8;
const RW: MapFlags = MapFlags::READ.union(MapFlags::WRITE);

fn config(fake: &Fake) -> ClientConfig {
    let mut c = ClientConfig::new(
        &fake.path,
        vec![EndpointRange {
            first: EP,
            last: EP,
        }],
    );
    c.reply_timeout = Duration::from_millis(500);
    c.retry_interval = Duration::from_millis(0);
    if let Some(us) = std::env::var("VIOMMU_TEST_POLL_US")
        .ok()
        .and_then(|u| u.parse().ok())
    {
        c.busy_poll = Duration::from_micros(us);
    }
    c
}

fn gpas(
    client: &Client,
    iova: u64,
    len: usize,
    access: Permissions,
) -> Result<Vec<(u64, usize)>, Error> {
    let t = client.translator(EP, None);
    let it = t.translate_typed(iova, len, access)?;
    Ok(it
        .map(|MappedRange { base, length }| (base.0, length))
        .collect())
}

/// 64 KiB of guest-physical memory at 0.
fn ram() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
}

/// A client whose `ConfinedMemory` has the page at IOVA 0x10000 (guest-physical 0x4000) cached.
fn one_cached_page() -> (Fake, Client, ConfinedMemory<GuestMemoryMmap>) {
    let fake = Fake::start();
    fake.map(EP, 0x10000, 0x10fff, 0x4000, RW);
    let client = Client::connect(config(&fake)).unwrap();
    let dma = ConfinedMemory::new(ram(), client.translator(EP, None));
    dma.read_obj::<u8>(GuestAddress(0x10000)).unwrap();
    (fake, client, dma)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_miss_asks_the_daemon_once_and_the_hit_does_not() {
    let fake = Fake::start();
    fake.map(EP, 0x10000, 0x1ffff, 0x40000, RW);
    let client = Client::connect(config(&fake)).unwrap();
    assert_eq!(fake.with(|s| s.hellos), 1);
    assert_eq!(
        gpas(&client, 0x10100, 0x100, Permissions::Read).unwrap(),
        [(0x40100, 0x100)]
    );
    assert_eq!(
        fake.with(|s| s.translates.clone()),
        [(EP, 0x10100, 0x100, TranslateFlags::READ)]
    );
    // The whole mapping was cached: other addresses and writes inside it are hits.
    assert_eq!(
        gpas(&client, 0x1f000, 0x1000, Permissions::ReadWrite).unwrap(),
        [(0x4f000, 0x1000)]
    );
    assert_eq!(fake.translates(), 1);
    assert_eq!(
        client
            .stats()
            .translates
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn iommu_memory_reads_and_writes_at_iovas() {
    let fake = Fake::start();
    fake.map(EP, 0x10_0000, 0x10_1fff, 0x2000, RW);
    let client = Client::connect(config(&fake)).unwrap();
    let ram = ram();
    let dma = IommuMemory::new(ram, client.translator(EP, None), true, ());
    // Across the page boundary of the mapping.
    dma.write_slice(b"confined!", GuestAddress(0x10_0ffc))
        .unwrap();
    let phys = dma.get_backend();
    let mut b = [0u8; 9];
    phys.read_slice(&mut b, GuestAddress(0x2ffc)).unwrap();
    assert_eq!(&b, b"confined!");
    // Outside the mapping: refused, nothing written.
    assert!(dma.write_slice(b"x", GuestAddress(0x10_2000)).is_err());
}

#[test]
fn invalidate_drops_the_entry_before_the_ack() {
    let fake = Fake::start();
    fake.map(EP, 0x10000, 0x1ffff, 0x40000, RW);
    let client = Client::connect(config(&fake)).unwrap();
    gpas(&client, 0x10000, 1, Permissions::Read).unwrap();
    // The daemon unmaps, then remaps elsewhere: after the ack the client must ask again.
    fake.with(|s| s.maps.clear());
    let seq = fake.invalidate(Some(EP), 0x10000, 0x1ffff);
    assert!(fake.wait_ack(seq, Duration::from_secs(5)));
    fake.map(EP, 0x10000, 0x1ffff, 0x90000, RW);
    assert_eq!(
        gpas(&client, 0x10000, 1, Permissions::Read).unwrap(),
        [(0x90000, 1)]
    );
    assert_eq!(fake.translates(), 2);
    // Another endpoint's invalidation leaves ours cached (and is acked all the same).
    let seq = fake.invalidate(Some(99), 0, u64::MAX);
    assert!(fake.wait_ack(seq, Duration::from_secs(5)));
    gpas(&client, 0x10000, 1, Permissions::Read).unwrap();
    assert_eq!(fake.translates(), 2);
    // Everything, all endpoints.
    let seq = fake.invalidate(None, 0, u64::MAX);
    assert!(fake.wait_ack(seq, Duration::from_secs(5)));
    gpas(&client, 0x10000, 1, Permissions::Read).unwrap();
    assert_eq!(fake.translates(), 3);
}

#[test]
fn the_ack_waits_for_accesses_still_using_the_translation() {
    let fake = Fake::start();
    fake.map(EP, 0x10000, 0x1ffff, 0x40000, RW);
    let client = Client::connect(config(&fake)).unwrap();
    let t = client.translator(EP, None);
    // An access in progress holds its translation.
    let in_use = t
        .translate_typed(0x10000, 0x10, Permissions::Write)
        .unwrap();
    let seq = fake.invalidate(Some(EP), 0x10000, 0x1ffff);
    assert!(
        !fake.wait_ack(seq, Duration::from_millis(200)),
        "acked while an access used the translation"
    );
    drop(in_use);
    assert!(fake.wait_ack(seq, Duration::from_secs(5)));
}

#[test]
fn faults_are_reported_and_never_cached() {
    let fake = Fake::start();
    fake.map(EP, 0x10000, 0x10fff, 0x40000, MapFlags::READ);
    let client = Client::connect(config(&fake)).unwrap();
    // A write to a read-only mapping.
    match gpas(&client, 0x10000, 4, Permissions::Write) {
        Err(Error::Fault {
            reason: FaultReason::Mapping,
            flags,
            address: 0x10000,
        }) => assert_eq!(flags, FaultFlags::WRITE | FaultFlags::ADDRESS),
        other => panic!("{other:?}"),
    }
    // Unmapped: asked every time.
    for _ in 0..2 {
        assert!(matches!(
            gpas(&client, 0x80000, 4, Permissions::Read),
            Err(Error::Fault { .. })
        ));
    }
    assert_eq!(fake.translates(), 3);
    // The read is fine, and a cached READ range does not serve a write.
    gpas(&client, 0x10000, 4, Permissions::Read).unwrap();
    assert!(gpas(&client, 0x10000, 4, Permissions::Write).is_err());
    assert_eq!(fake.translates(), 5);
}

#[test]
fn a_partial_answer_is_continued_from_its_end() {
    let fake = Fake::start();
    fake.map(EP, 0x10000, 0x2ffff, 0x40000, RW);
    // Each range covers one page and a reply at most 8: 16 pages take two round trips.
    fake.with(|s| s.split = Some(0x1000));
    let client = Client::connect(config(&fake)).unwrap();
    let got = gpas(&client, 0x10000, 0x10000, Permissions::Read).unwrap();
    let total: usize = got.iter().map(|g| g.1).sum();
    assert_eq!(total, 0x10000);
    assert_eq!(
        got.first(),
        Some(&(0x40000, 0x10000)),
        "merged contiguous ranges"
    );
    let asked = fake.with(|s| s.translates.clone());
    assert_eq!(asked.len(), 2);
    assert_eq!((asked[1].1, asked[1].2), (0x18000, 0x8000));
}

#[test]
fn a_daemon_restart_drops_the_cache_and_the_client_reconnects() {
    let fake = Fake::start();
    fake.map(EP, 0x10000, 0x1ffff, 0x40000, RW);
    let client = Client::connect(config(&fake)).unwrap();
    gpas(&client, 0x10000, 1, Permissions::Read).unwrap();
    fake.drop_connection();
    wait_for("the client sees the connection end", || !client.connected());
    fake.with(|s| {
        s.maps.clear();
        s.maps.push(fake::Map {
            endpoint: EP,
            iova: 0x10000,
            last: 0x1ffff,
            paddr: 0x70000,
            perm: RW,
        });
    });
    assert_eq!(
        gpas(&client, 0x10000, 1, Permissions::Read).unwrap(),
        [(0x70000, 1)],
        "nothing cached survived the connection"
    );
    assert_eq!(fake.with(|s| s.hellos), 2);
    assert_eq!(
        client
            .stats()
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[test]
fn waits_are_bounded() {
    let fake = Fake::start();
    fake.with(|s| s.mute = true);
    let client = Client::connect(config(&fake)).unwrap();
    let t0 = Instant::now();
    assert!(matches!(
        gpas(&client, 0x10000, 1, Permissions::Read),
        Err(Error::Timeout(_))
    ));
    assert!(t0.elapsed() < Duration::from_secs(3));
    // Nobody listening: a connect error, at once.
    let dir = tempfile::tempdir().unwrap();
    let cfg = ClientConfig::new(
        dir.path().join("none"),
        vec![EndpointRange { first: 0, last: 0 }],
    );
    assert!(matches!(Client::connect(cfg), Err(Error::Connect(_))));
}

#[test]
fn a_refused_hello_is_a_typed_error() {
    let fake = Fake::start();
    fake.with(|s| s.refuse = Some(HelloStatus::InvalidRanges));
    assert!(matches!(
        Client::connect(config(&fake)),
        Err(Error::Refused(HelloStatus::InvalidRanges))
    ));
}

/// A TRANSLATE_REPLY header with `nr_ranges` = 1 and status OK for `tag`, then one range.
fn raw_reply(tag: u64, iova: u64, last: u64, paddr: u64, perm: u32) -> Vec<u8> {
    let mut v = vec![0x82, 0, 0, 0, 64, 0, 0, 0];
    v.extend_from_slice(&tag.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&[0; 16]);
    v.extend_from_slice(&iova.to_le_bytes());
    v.extend_from_slice(&last.to_le_bytes());
    v.extend_from_slice(&paddr.to_le_bytes());
    v.extend_from_slice(&perm.to_le_bytes());
    v.extend_from_slice(&[0; 4]);
    v
}

#[test]
fn hostile_replies_are_refused_and_never_cached() {
    let fake = Fake::start();
    fake.map(EP, 0x10000, 0x1ffff, 0x40000, RW);
    let client = Client::connect(config(&fake)).unwrap();
    // Tags start at 0. A range that does not contain the address asked for.
    fake.with(|s| s.raw_reply = Some(raw_reply(0, 0x50000, 0x50fff, 0, 3)));
    assert!(matches!(
        gpas(&client, 0x10000, 1, Permissions::Read),
        Err(Error::BadReply(_))
    ));
    // A range without the permission asked for.
    fake.with(|s| s.raw_reply = Some(raw_reply(1, 0x10000, 0x10fff, 0, 1)));
    assert!(matches!(
        gpas(&client, 0x10000, 1, Permissions::Write),
        Err(Error::BadReply(_))
    ));
    // A reply for a tag never sent is ignored: the real request times out.
    fake.with(|s| s.raw_reply = Some(raw_reply(77, 0x10000, 0x10fff, 0, 3)));
    assert!(matches!(
        gpas(&client, 0x10000, 1, Permissions::Read),
        Err(Error::Timeout(_))
    ));
    // Still connected, and the good answer works.
    assert_eq!(
        gpas(&client, 0x10000, 1, Permissions::Read).unwrap(),
        [(0x40000, 1)]
    );
    // An oversized message is a protocol error: the connection closes, the cache goes.
    fake.send_raw(&[0x82, 0, 0, 0, 0xff, 0xff, 0, 0]);
    wait_for("the client closes the connection", || !client.connected());
    let before = fake.translates();
    gpas(&client, 0x10000, 1, Permissions::Read).unwrap();
    assert_eq!(
        fake.translates(),
        before + 1,
        "asked again after reconnecting"
    );
}

#[test]
fn invalid_ranges_are_refused_without_asking() {
    let fake = Fake::start();
    let client = Client::connect(config(&fake)).unwrap();
    assert!(matches!(
        gpas(&client, u64::MAX - 1, 4, Permissions::Read),
        Err(Error::BadRange { .. })
    ));
    assert_eq!(gpas(&client, 0x1000, 0, Permissions::Read).unwrap(), []);
    assert_eq!(fake.translates(), 0);
}

#[test]
fn confined_memory_reads_and_writes_at_iovas_inside_and_across_ranges() {
    let fake = Fake::start();
    fake.map(EP, 0x10_0000, 0x10_1fff, 0x2000, RW);
    // Adjacent IOVAs, apart in guest-physical memory: an access across both is two slices.
    fake.map(EP, 0x10_2000, 0x10_2fff, 0x8000, RW);
    fake.map(EP, 0x20_0000, 0x20_0fff, 0x9000, MapFlags::READ);
    let client = Client::connect(config(&fake)).unwrap();
    let ram = ram();
    let dma = ConfinedMemory::new(ram.clone(), client.translator(EP, None));
    // A miss, then the same range's hits (inside one range: no second TRANSLATE).
    dma.write_slice(b"confined!", GuestAddress(0x10_0ffc))
        .unwrap();
    dma.write_obj(0x1122_3344_u32, GuestAddress(0x10_1100))
        .unwrap();
    assert_eq!(fake.translates(), 1);
    let mut b = [0u8; 9];
    ram.read_slice(&mut b, GuestAddress(0x2ffc)).unwrap();
    assert_eq!(&b, b"confined!");
    assert_eq!(
        ram.read_obj::<u32>(GuestAddress(0x3100)).unwrap(),
        0x1122_3344
    );
    // Across the two ranges.
    dma.write_slice(b"split", GuestAddress(0x10_1ffe)).unwrap();
    ram.read_slice(&mut b[..2], GuestAddress(0x3ffe)).unwrap();
    assert_eq!(&b[..2], b"sp");
    ram.read_slice(&mut b[..3], GuestAddress(0x8000)).unwrap();
    assert_eq!(&b[..3], b"lit");
    let mut back = [0u8; 5];
    dma.read_slice(&mut back, GuestAddress(0x10_1ffe)).unwrap();
    assert_eq!(&back, b"split");
    // Read-only: reads pass, writes are refused and write nothing.
    ram.write_obj(0x55_u8, GuestAddress(0x9010)).unwrap();
    assert_eq!(dma.read_obj::<u8>(GuestAddress(0x20_0010)).unwrap(), 0x55);
    assert!(dma.write_obj(0xaa_u8, GuestAddress(0x20_0010)).is_err());
    assert_eq!(ram.read_obj::<u8>(GuestAddress(0x9010)).unwrap(), 0x55);
    assert!(dma.check_range(GuestAddress(0x20_0000), 0x1000, Permissions::Read));
    assert!(!dma.check_range(GuestAddress(0x20_0000), 0x1000, Permissions::Write));
    // Unmapped: refused, nothing written.
    assert!(dma.write_slice(b"x", GuestAddress(0x10_3000)).is_err());
    assert!(!dma.check_range(GuestAddress(0x10_3000), 1, Permissions::Read));
}

#[test]
fn confined_memory_holds_its_translation_until_the_access_ends_and_asks_again_after() {
    let fake = Fake::start();
    fake.map(EP, 0x10000, 0x1ffff, 0x4000, RW);
    let client = Client::connect(config(&fake)).unwrap();
    let ram = ram();
    let dma = ConfinedMemory::new(ram.clone(), client.translator(EP, None));
    dma.write_obj(7_u64, GuestAddress(0x10000)).unwrap();
    // An access in progress (its slices not yet used up) holds the cached range.
    let in_use = dma
        .get_slices(GuestAddress(0x10008), 8, Permissions::Write)
        .unwrap();
    fake.with(|s| s.maps.clear());
    let seq = fake.invalidate(Some(EP), 0x10000, 0x1ffff);
    assert!(
        !fake.wait_ack(seq, Duration::from_millis(200)),
        "acked while an access used the translation"
    );
    drop(in_use);
    assert!(fake.wait_ack(seq, Duration::from_secs(5)));
    // After the ack nothing of the old translation is used: unmapped now, so refused...
    assert!(dma.read_obj::<u64>(GuestAddress(0x10000)).is_err());
    // ...and mapped elsewhere, the new place.
    fake.map(EP, 0x10000, 0x1ffff, 0x8000, RW);
    ram.write_obj(9_u64, GuestAddress(0x8000)).unwrap();
    assert_eq!(dma.read_obj::<u64>(GuestAddress(0x10000)).unwrap(), 9);
    assert_eq!(fake.translates(), 3);
}

#[test]
fn a_pinned_view_delays_the_ack_of_its_rings_without_blocking_misses() {
    let fake = Fake::start();
    // The "rings": two pages; a buffer elsewhere, not cached yet.
    fake.map(EP, 0x10000, 0x11fff, 0x4000, RW);
    fake.map(EP, 0x30000, 0x30fff, 0x9000, RW);
    let client = Client::connect(config(&fake)).unwrap();
    let ram = ram();
    let dma = ConfinedMemory::new(ram.clone(), client.translator(EP, None));
    dma.write_obj(1_u16, GuestAddress(0x10000)).unwrap();
    let rings = [
        (GuestAddress(0x10000), 0x1000, Permissions::Read),
        (GuestAddress(0x11000), 0x100, Permissions::Write),
        // Not mapped: reached access by access, and refused.
        (GuestAddress(0x50000), 0x100, Permissions::Read),
    ];
    let view = dma.pinned(&rings);
    assert_eq!(view.pinned_rings(), 2);
    assert_eq!(
        fake.translates(),
        1,
        "both ring pages came with the first miss"
    );
    // The guest unmaps the rings while the view lives: the ack waits for the view...
    fake.with(|s| s.maps.retain(|m| m.iova != 0x10000));
    let seq = fake.invalidate(Some(EP), 0x10000, 0x11fff);
    assert!(
        !fake.wait_ack(seq, Duration::from_millis(200)),
        "acked while a view pinned the rings"
    );
    // ...the pinned rings are still reached at their old place...
    view.write_obj(0xbeef_u16, GuestAddress(0x11004)).unwrap();
    assert_eq!(ram.read_obj::<u16>(GuestAddress(0x5004)).unwrap(), 0xbeef);
    // ...and a buffer access under the view may still miss: its reply is read meanwhile.
    view.write_obj(0x77_u8, GuestAddress(0x30010)).unwrap();
    assert_eq!(ram.read_obj::<u8>(GuestAddress(0x9010)).unwrap(), 0x77);
    assert!(view.read_obj::<u8>(GuestAddress(0x50000)).is_err());
    // A read-only buffer under the view: the read is answered from the range the view
    // remembers, the write refused and nothing written.
    fake.map(EP, 0x40000, 0x40fff, 0xa000, MapFlags::READ);
    ram.write_obj(0x5a_u8, GuestAddress(0xa008)).unwrap();
    assert_eq!(view.read_obj::<u8>(GuestAddress(0x40008)).unwrap(), 0x5a);
    assert!(view.write_obj(0xa5_u8, GuestAddress(0x40008)).is_err());
    assert_eq!(ram.read_obj::<u8>(GuestAddress(0xa008)).unwrap(), 0x5a);
    // A buffer access across the end of its range is refused past the end.
    assert!(view
        .read_slice(&mut [0u8; 8], GuestAddress(0x40ffc))
        .is_err());
    drop(view);
    assert!(fake.wait_ack(seq, Duration::from_secs(5)));
    // After the ack the rings are gone: a new view does not pin them, the access is refused.
    let view = dma.pinned(&rings);
    assert_eq!(view.pinned_rings(), 0);
    assert!(view.read_obj::<u16>(GuestAddress(0x10000)).is_err());
    assert_eq!(
        ram.read_obj::<u8>(GuestAddress(0x9010)).unwrap(),
        0x77,
        "the buffer stays cached: the invalidation covered the rings only"
    );
}

#[test]
fn acks_stay_in_order_behind_one_that_waits_for_a_pin() {
    let (fake, _client, dma) = one_cached_page();
    let view = dma.pinned(&[(GuestAddress(0x10000), 0x1000, Permissions::Read)]);
    let first = fake.invalidate(Some(EP), 0x10000, 0x10fff);
    // Of another endpoint: nothing pinned, yet acknowledged only after the first (an ack
    // acknowledges every lower sequence number).
    let second = fake.invalidate(Some(EP + 1), 0, u64::MAX);
    assert!(!fake.wait_ack(second, Duration::from_millis(200)));
    drop(view);
    assert!(fake.wait_ack(first, Duration::from_secs(5)));
    assert!(fake.wait_ack(second, Duration::from_secs(5)));
}

#[test]
fn too_many_acks_waiting_for_a_pin_close_the_connection() {
    let (fake, client, dma) = one_cached_page();
    let view = dma.pinned(&[(GuestAddress(0x10000), 0x1000, Permissions::Read)]);
    fake.invalidate(Some(EP), 0x10000, 0x10fff);
    for _ in 0..virtio_iommu_client::MAX_WAITING_ACKS {
        fake.invalidate(Some(EP + 1), 0, u64::MAX);
    }
    wait_for("the client closes the connection", || !client.connected());
    drop(view);
    // Everything cached was dropped; the next access reconnects and asks again.
    assert_eq!(dma.read_obj::<u8>(GuestAddress(0x10000)).unwrap(), 0);
    assert_eq!(fake.with(|s| s.hellos), 2);
}

/// INVALIDATE `seq` of endpoint `EP`'s `first..=last`, as bytes.
fn raw_invalidate(seq: u64, first: u64, last: u64) -> Vec<u8> {
    let msg = DaemonMessage::Invalidate(Invalidate {
        seq,
        first,
        last,
        endpoints: Endpoints::One(EP),
        pasids: Pasids::NoPasid,
    });
    let mut v = vec![0u8; msg.encoded_len()];
    msg.encode_into(&mut v).unwrap();
    v
}

/// Polling off, at the default, and longer than anything here takes (so the thread waiting
/// for its reply reads it whenever the reader thread does not).
const POLLS: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_micros(50),
    Duration::from_millis(20),
];

#[test]
fn messages_are_handled_in_wire_order_whichever_thread_reads_them() {
    for poll in POLLS {
        for invalidate_first in [true, false] {
            let fake = Fake::start();
            let mut c = config(&fake);
            c.busy_poll = poll;
            let client = Client::connect(c).unwrap();
            // One write: the reply to the first TRANSLATE (tag 0, two pages) and an
            // INVALIDATE of its second page (the first stays cached either way).
            let (reply, inv) = (
                raw_reply(0, 0x10000, 0x11fff, 0x4000, 3),
                raw_invalidate(1, 0x11000, 0x11fff),
            );
            let both = if invalidate_first {
                [inv, reply].concat()
            } else {
                [reply, inv].concat()
            };
            fake.with(|s| s.raw_reply = Some(both));
            assert_eq!(
                gpas(&client, 0x10080, 0x10, Permissions::Read).unwrap(),
                [(0x4080, 0x10)],
                "{poll:?}"
            );
            assert!(fake.wait_ack(1, Duration::from_secs(5)));
            // A reply sent after the INVALIDATE stays cached; one sent before it is dropped.
            fake.map(EP, 0x11000, 0x11fff, 0x9000, RW);
            let second = if invalidate_first { 0x5080 } else { 0x9080 };
            assert_eq!(
                gpas(&client, 0x11080, 0x10, Permissions::Read).unwrap(),
                [(second, 0x10)],
                "{poll:?} invalidate first: {invalidate_first}"
            );
            assert_eq!(fake.translates(), if invalidate_first { 1 } else { 2 });
            assert_eq!(client.stats().invalidations.load(Ordering::Relaxed), 1);
        }
    }
}

#[test]
fn a_malformed_reply_closes_the_connection_whichever_thread_reads_it() {
    for poll in POLLS {
        let fake = Fake::start();
        let mut c = config(&fake);
        c.busy_poll = poll;
        let client = Client::connect(c).unwrap();
        // Two ranges announced, one sent: a size that does not fit.
        let mut bad = raw_reply(0, 0x10000, 0x10fff, 0x4000, 3);
        bad[20] = 2;
        fake.with(|s| s.raw_reply = Some(bad));
        assert!(
            matches!(
                gpas(&client, 0x10000, 1, Permissions::Read),
                Err(Error::Disconnected)
            ),
            "{poll:?}"
        );
        wait_for("the client closes the connection", || !client.connected());
        fake.map(EP, 0x10000, 0x10fff, 0x4000, RW);
        assert_eq!(
            gpas(&client, 0x10000, 1, Permissions::Read).unwrap(),
            [(0x4000, 1)]
        );
        assert_eq!(client.stats().connections.load(Ordering::Relaxed), 2);
    }
}
