//! One chain, one request, without sockets: statuses, bytes on the disk and in guest memory,
//! through guest-physical memory and through an IOMMU (a test `Iommu` over an `Iotlb`).

use std::sync::RwLock;

use vhost_user_blk_confined::chain::{Completion, Segments, MAX_IO_BYTES};
use vhost_user_blk_confined::request::{
    RequestHeader, DEVICE_ID, S_IOERR, S_OK, S_UNSUPP, T_GET_ID, T_IN, T_OUT,
};
use vhost_user_blk_confined::Disk;
use virtio_queue::desc::split::Descriptor;
use vm_memory::iommu::{Error as IommuError, Iotlb, IotlbIterator};
use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Iommu, IommuMemory, Permissions,
};
use zerocopy::IntoBytes;

const NEXT: u16 = 1;
const WRITE: u16 = 2;

/// Guest RAM: 1 MiB at 0, plus a 2 MiB region for large buffers.
const HEADER: u64 = 0x1000;
const DATA: u64 = 0x2000;
const STATUS: u64 = 0x9000;
const BIG: u64 = 0x10_0000;

fn ram() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000), (GuestAddress(BIG), 0x20_0000)])
        .unwrap()
}

fn header(t: u32, sector: u64) -> RequestHeader {
    RequestHeader {
        type_: t.into(),
        reserved: 0.into(),
        sector: sector.into(),
    }
}

/// A chain: readable (addr, len)s then writable (addr, len)s, linked by NEXT.
fn chain(readable: &[(u64, u32)], writable: &[(u64, u32)]) -> Vec<Descriptor> {
    let n = readable.len() + writable.len();
    readable
        .iter()
        .map(|&(a, l)| (a, l, 0))
        .chain(writable.iter().map(|&(a, l)| (a, l, WRITE)))
        .enumerate()
        .map(|(i, (a, l, f))| {
            let next = i + 1 < n;
            let flags = f | if next { NEXT } else { 0 };
            Descriptor::new(a, l, flags, u16::try_from(i + 1).unwrap())
        })
        .collect()
}

fn status<M: GuestMemory>(mem: &M, at: u64) -> u8 {
    mem.read_obj::<u8>(GuestAddress(at)).unwrap()
}

fn done(used_len: u32, status: u8) -> Completion {
    Completion {
        used_len,
        status: Some(status),
    }
}

#[test]
fn out_lands_in_its_sectors_and_in_reads_them_back() {
    let mem = ram();
    let mut disk = Disk::ram(64 * 512, false).unwrap();
    let mut seg = Segments::default();
    mem.write_slice(header(T_OUT, 3).as_bytes(), GuestAddress(HEADER))
        .unwrap();
    let data: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
    mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    // The data split over two descriptors.
    let c = chain(
        &[(HEADER, 16), (DATA, 100), (DATA + 100, 924)],
        &[(STATUS, 1)],
    );
    assert_eq!(seg.serve(&mem, c.into_iter(), &mut disk), done(1, S_OK));
    assert_eq!(status(&mem, STATUS), S_OK);
    let mut on_disk = vec![0u8; 2048];
    disk.read(2, &mut on_disk).unwrap();
    assert!(on_disk[..512].iter().all(|b| *b == 0), "sector 2 untouched");
    assert_eq!(&on_disk[512..1536], &data[..], "sectors 3 and 4");
    assert!(
        on_disk[1536..].iter().all(|b| *b == 0),
        "sector 5 untouched"
    );

    // IN of sector 4 into a buffer whose last byte is also the status byte's descriptor.
    mem.write_slice(header(T_IN, 4).as_bytes(), GuestAddress(HEADER))
        .unwrap();
    mem.write_slice(&[0xee; 513], GuestAddress(BIG)).unwrap();
    let c = chain(&[(HEADER, 16)], &[(BIG, 513)]);
    assert_eq!(seg.serve(&mem, c.into_iter(), &mut disk), done(513, S_OK));
    let mut back = vec![0u8; 513];
    mem.read_slice(&mut back, GuestAddress(BIG)).unwrap();
    assert_eq!(&back[..512], &data[512..]);
    assert_eq!(back[512], S_OK);
}

#[test]
fn bad_requests_get_their_status_and_change_nothing() {
    let mem = ram();
    let mut disk = Disk::ram(8 * 512, false).unwrap();
    let mut seg = Segments::default();
    let guest_data = [0x5a; 512];
    mem.write_slice(&guest_data, GuestAddress(DATA)).unwrap();
    let cases: [(RequestHeader, Vec<Descriptor>, u8); 6] = [
        // Past the end of the disk, and a sector whose byte offset overflows.
        (
            header(T_IN, 8),
            chain(&[(HEADER, 16)], &[(DATA, 512), (STATUS, 1)]),
            S_IOERR,
        ),
        (
            header(T_OUT, u64::MAX / 4),
            chain(&[(HEADER, 16), (DATA, 512)], &[(STATUS, 1)]),
            S_IOERR,
        ),
        // Not whole sectors, no data at all, an IN with readable data.
        (
            header(T_OUT, 0),
            chain(&[(HEADER, 16), (DATA, 100)], &[(STATUS, 1)]),
            S_IOERR,
        ),
        (
            header(T_IN, 0),
            chain(&[(HEADER, 16)], &[(STATUS, 1)]),
            S_IOERR,
        ),
        (
            header(T_IN, 0),
            chain(&[(HEADER, 16), (DATA, 512)], &[(DATA, 512), (STATUS, 1)]),
            S_IOERR,
        ),
        // An unknown type.
        (
            header(77, 0),
            chain(&[(HEADER, 16)], &[(STATUS, 1)]),
            S_UNSUPP,
        ),
    ];
    for (i, (h, c, want)) in cases.into_iter().enumerate() {
        mem.write_slice(h.as_bytes(), GuestAddress(HEADER)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        assert_eq!(
            seg.serve(&mem, c.into_iter(), &mut disk),
            done(1, want),
            "case {i}"
        );
        assert_eq!(status(&mem, STATUS), want, "case {i}");
        let mut d = [0u8; 512];
        mem.read_slice(&mut d, GuestAddress(DATA)).unwrap();
        assert_eq!(d, guest_data, "case {i}: guest data untouched");
    }
    let mut all = vec![0u8; 8 * 512];
    disk.read(0, &mut all).unwrap();
    assert!(all.iter().all(|b| *b == 0), "disk untouched");

    // A header cut short.
    mem.write_slice(header(T_OUT, 0).as_bytes(), GuestAddress(HEADER))
        .unwrap();
    let c = chain(&[(HEADER, 8)], &[(STATUS, 1)]);
    assert_eq!(seg.serve(&mem, c.into_iter(), &mut disk), done(1, S_IOERR));
}

#[test]
fn malformed_chains_are_returned_without_a_status() {
    let mem = ram();
    let mut disk = Disk::ram(8 * 512, false).unwrap();
    let mut seg = Segments::default();
    mem.write_slice(header(T_IN, 0).as_bytes(), GuestAddress(HEADER))
        .unwrap();
    let none = Completion {
        used_len: 0,
        status: None,
    };
    // No writable byte for the status.
    let c = chain(&[(HEADER, 16)], &[]);
    assert_eq!(seg.serve(&mem, c.into_iter(), &mut disk), none);
    // A readable buffer after a writable one.
    let mut c = chain(&[(HEADER, 16)], &[(DATA, 512)]);
    c[1] = Descriptor::new(DATA, 512, WRITE | NEXT, 2);
    c.push(Descriptor::new(STATUS, 1, 0, 0));
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    assert_eq!(seg.serve(&mem, c.into_iter(), &mut disk), none);
    // A chain that ends on a descriptor saying more follow (a descriptor read failed).
    let mut c = chain(&[(HEADER, 16)], &[(DATA, 512), (STATUS, 1)]);
    c[2] = Descriptor::new(STATUS, 1, WRITE | NEXT, 3);
    assert_eq!(seg.serve(&mem, c.into_iter(), &mut disk), none);
    assert_eq!(status(&mem, STATUS), 0xff);
}

#[test]
fn oversized_and_read_only_requests_fail_with_ioerr() {
    let mem = ram();
    let mut seg = Segments::default();
    let mut disk = Disk::ram(4096 * 512, false).unwrap();
    mem.write_slice(header(T_IN, 0).as_bytes(), GuestAddress(HEADER))
        .unwrap();
    let over = u32::try_from(MAX_IO_BYTES + 512).unwrap();
    let c = chain(&[(HEADER, 16)], &[(BIG, over), (STATUS, 1)]);
    assert_eq!(seg.serve(&mem, c.into_iter(), &mut disk), done(1, S_IOERR));
    // 300 one-sector buffers: more segments than a request may have.
    let mut w: Vec<(u64, u32)> = (0..300).map(|i| (BIG + i * 512, 512)).collect();
    w.push((STATUS, 1));
    let c = chain(&[(HEADER, 16)], &w);
    assert_eq!(seg.serve(&mem, c.into_iter(), &mut disk), done(1, S_IOERR));

    let mut ro = Disk::ram(8 * 512, true).unwrap();
    mem.write_slice(header(T_OUT, 0).as_bytes(), GuestAddress(HEADER))
        .unwrap();
    mem.write_slice(&[1; 512], GuestAddress(DATA)).unwrap();
    let c = chain(&[(HEADER, 16), (DATA, 512)], &[(STATUS, 1)]);
    assert_eq!(seg.serve(&mem, c.into_iter(), &mut ro), done(1, S_IOERR));
    let mut d = [9u8; 512];
    ro.read(0, &mut d).unwrap();
    assert_eq!(d, [0; 512]);
}

#[test]
fn get_id_writes_the_id_string() {
    let mem = ram();
    let mut disk = Disk::ram(512, false).unwrap();
    let mut seg = Segments::default();
    mem.write_slice(header(T_GET_ID, 0).as_bytes(), GuestAddress(HEADER))
        .unwrap();
    let c = chain(&[(HEADER, 16)], &[(DATA, 20), (STATUS, 1)]);
    let n = u32::try_from(DEVICE_ID.len()).unwrap();
    assert_eq!(seg.serve(&mem, c.into_iter(), &mut disk), done(n + 1, S_OK));
    let mut id = vec![0u8; DEVICE_ID.len()];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(id, DEVICE_ID);
}

/// A fixed IOMMU: an `Iotlb` the test fills.
#[derive(Debug, Default)]
struct TestIommu(RwLock<Iotlb>);

impl Iommu for TestIommu {
    type IotlbGuard<'a> = std::sync::RwLockReadGuard<'a, Iotlb>;

    fn translate(
        &self,
        iova: GuestAddress,
        length: usize,
        access: Permissions,
    ) -> Result<IotlbIterator<Self::IotlbGuard<'_>>, IommuError> {
        Iotlb::lookup(self.0.read().unwrap(), iova, length, access).map_err(|_| {
            IommuError::CannotResolve {
                iova_range: vm_memory::iommu::IovaRange { base: iova, length },
                reason: "not mapped".into(),
            }
        })
    }
}

#[test]
fn through_an_iommu_accesses_go_where_the_mappings_say_and_no_further() {
    // IOVAs 0x40_0000.. map the header, status and data pages; the data page read-only.
    const IOVA: u64 = 0x40_0000;
    let iommu = TestIommu::default();
    {
        let mut tlb = iommu.0.write().unwrap();
        tlb.set_mapping(
            GuestAddress(IOVA),
            GuestAddress(HEADER),
            0x1000,
            Permissions::Read,
        )
        .unwrap();
        tlb.set_mapping(
            GuestAddress(IOVA + 0x1000),
            GuestAddress(STATUS),
            0x1000,
            Permissions::ReadWrite,
        )
        .unwrap();
        tlb.set_mapping(
            GuestAddress(IOVA + 0x2000),
            GuestAddress(DATA),
            0x1000,
            Permissions::Read,
        )
        .unwrap();
    }
    let mem = IommuMemory::new(ram(), iommu, true, ());
    let phys = mem.get_backend().clone();
    let mut disk = Disk::ram(8 * 512, false).unwrap();
    let mut seg = Segments::default();
    phys.write_slice(header(T_OUT, 1).as_bytes(), GuestAddress(HEADER))
        .unwrap();
    phys.write_slice(b"through the iommu", GuestAddress(DATA))
        .unwrap();
    let c = chain(&[(IOVA, 16), (IOVA + 0x2000, 512)], &[(IOVA + 0x1000, 1)]);
    assert_eq!(seg.serve(&mem, c.into_iter(), &mut disk), done(1, S_OK));
    assert_eq!(status(&phys, STATUS), S_OK);
    let mut d = [0u8; 512];
    disk.read(1, &mut d).unwrap();
    assert_eq!(&d[..17], b"through the iommu");

    // An IN into the read-only page fails and leaves the page as it was.
    phys.write_slice(header(T_IN, 1).as_bytes(), GuestAddress(HEADER))
        .unwrap();
    let before = {
        let mut b = [0u8; 512];
        phys.read_slice(&mut b, GuestAddress(DATA)).unwrap();
        b
    };
    disk.write(1, &[0x77; 512]).unwrap();
    let c = chain(&[(IOVA, 16)], &[(IOVA + 0x2000, 512), (IOVA + 0x1000, 1)]);
    assert_eq!(seg.serve(&mem, c.into_iter(), &mut disk), done(1, S_IOERR));
    let mut after = [0u8; 512];
    phys.read_slice(&mut after, GuestAddress(DATA)).unwrap();
    assert_eq!(after, before);

    // An unmapped IOVA (here the guest-physical address of the data page) faults too.
    let c = chain(&[(IOVA, 16)], &[(DATA, 512), (IOVA + 0x1000, 1)]);
    assert_eq!(seg.serve(&mem, c.into_iter(), &mut disk), done(1, S_IOERR));
    phys.read_slice(&mut after, GuestAddress(DATA)).unwrap();
    assert_eq!(after, before);

    // Without a writable status byte the chain is returned unanswered.
    let c = chain(&[(IOVA, 16)], &[(IOVA + 0x2000, 1)]);
    assert_eq!(
        seg.serve(&mem, c.into_iter(), &mut disk),
        Completion {
            used_len: 0,
            status: None
        }
    );
}
