//! A PASID-tagged access of the blk device's endpoint whose stage-1 entry is missing: the
//! daemon raises a page request, the guest (our driver's `handle_page_requests`) maps the page,
//! invalidates and answers SUCCESS, and the access completes with the page's bytes.
//!
//! The blk backend makes no PASID-tagged access of its own (virtio-blk has no PASID); the
//! access is made from the test through the crate the backend uses (`virtio-iommu-client`:
//! `IommuMemory` over the `Translator` of endpoint 8, PASID 1), against the same two daemons
//! and sockets, while the backend goes on serving the endpoint's untagged requests through the
//! domain's MAP mappings (VT-d: DMA without PASID is not translated by the PASID tables).

use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use virtio_iommu_client::{Client, ClientConfig, EndpointRange};
use virtio_iommu_driver::sva::{PageRequestGroups, Perms, X86FirstStage, X86Levels};
use virtio_iommu_driver::{PageRequest, PageRespCode, EXTENSION_FEATURES};
use virtio_iommu_e2e::blk::SECTOR;
use virtio_iommu_spec::ext::VtdFlags;
use virtio_iommu_testkit::{GuestHal, GuestMemory};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, IommuMemory};

use super::confined::{Confined, DOMAIN, EP, SECTORS};
use super::confined_hal::ConfinedHal;
use super::vm::{pattern_disk, sector_byte};

const PASID: u32 = 1;
/// A page of PASID 1's address space that nothing maps yet.
const VA: u64 = 0x7f00_3000;
const WAIT: Duration = Duration::from_secs(10);

/// The test's guest RAM as vm-memory sees it: the memfd the frontends share with both
/// backends, mapped once more.
fn guest_ram() -> GuestMemoryMmap {
    let mem = GuestMemory::global();
    let file = mem.file().try_clone().unwrap();
    GuestMemoryMmap::from_ranges_with_files(&[(
        GuestAddress(mem.base()),
        usize::try_from(mem.size()).unwrap(),
        Some(FileOffset::new(file, 0)),
    )])
    .unwrap()
}

#[test]
fn a_pasid_access_to_a_missing_page_waits_for_the_guest_and_reads_its_bytes() {
    // PASID 1's table: empty. Declared first, so it outlives the daemons that walk it.
    let mut table = X86FirstStage::<GuestHal>::new(X86Levels::Four).expect("first-stage table");
    let disk = pattern_disk(SECTORS);
    let mut vm = Confined::start_with(&disk, &["--pasid-bits", "16"], EXTENSION_FEATURES);
    // Bound to endpoint 8 (VT-d: one table per PASID).
    ConfinedHal::with(|s| {
        s.iommu
            .bind_table(DOMAIN, EP, &table.desc(PASID, VtdFlags::empty()))
            .expect("ATTACH_TABLE");
    });
    let mut buf = vec![0u8; SECTOR];
    vm.dev.read_blocks(5, &mut buf).unwrap();
    assert_eq!(buf, vec![sector_byte(5); SECTOR], "untagged DMA unchanged");

    let mem = GuestMemory::global();
    let page = mem.alloc_pages(1).unwrap();
    let bytes: Vec<u8> = (0..0x1000u32).map(|i| (i * 13 % 251) as u8).collect();
    mem.write(page, &bytes).unwrap();

    let client = Client::connect(ClientConfig::new(
        &vm.socket,
        vec![EndpointRange {
            first: EP,
            last: EP,
        }],
    ))
    .expect("the client connects");
    let dma = IommuMemory::new(guest_ram(), client.translator(EP, Some(PASID)), true, ());
    // The access waits for the guest's answer: its own thread.
    let access = thread::spawn(move || {
        let mut got = vec![0u8; 0x100];
        dma.read_slice(&mut got, GuestAddress(VA + 0x100))
            .map(|()| got)
    });

    let mut groups = PageRequestGroups::new();
    let mut seen: Option<PageRequest> = None;
    let deadline = Instant::now() + WAIT;
    while seen.is_none() {
        assert!(Instant::now() < deadline, "no page request within {WAIT:?}");
        let drained = ConfinedHal::with(|s| {
            s.iommu.handle_page_requests(&mut groups, |iommu, req| {
                seen = Some(*req);
                if (req.endpoint, req.pasid, req.address) != (EP, Some(PASID), VA) {
                    return PageRespCode::Invalid;
                }
                table
                    .map(req.address, page, 0x1000, Perms::USER_READ_WRITE)
                    .expect("map the page");
                iommu
                    .invalidate_range(DOMAIN, PASID, req.address, 0x1000)
                    .expect("INVALIDATE");
                PageRespCode::Success
            })
        })
        .expect("event queue");
        assert!(drained.faults.is_empty(), "{:?}", drained.faults);
        thread::sleep(Duration::from_millis(1));
    }
    let req = seen.unwrap();
    assert_eq!(
        (req.endpoint, req.pasid, req.address),
        (EP, Some(PASID), VA)
    );
    let got = access
        .join()
        .unwrap()
        .expect("the access completes after the page response");
    assert_eq!(got, bytes[0x100..0x200]);

    let stats = {
        let mut c = vm.daemon.control().unwrap();
        c.cmd("stats", serde_json::Value::Null).unwrap()["stats"].clone()
    };
    assert_eq!(
        stats["translation"]["translate_waited"],
        json!(1),
        "{stats}"
    );
    assert_eq!(stats["page_requests"]["raised"], json!(1), "{stats}");
    // The translation is cached now: the rest of the page needs no TRANSLATE.
    let sent = client
        .stats()
        .translates
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut tail = [0u8; 16];
    let dma = IommuMemory::new(guest_ram(), client.translator(EP, Some(PASID)), true, ());
    dma.read_slice(&mut tail, GuestAddress(VA + 0xff0)).unwrap();
    assert_eq!(tail, bytes[0xff0..]);
    assert_eq!(
        client
            .stats()
            .translates
            .load(std::sync::atomic::Ordering::Relaxed),
        sent
    );
    // The blk device still serves its untagged requests.
    vm.dev.read_blocks(6, &mut buf).unwrap();
    assert_eq!(buf, vec![sector_byte(6); SECTOR]);
}
