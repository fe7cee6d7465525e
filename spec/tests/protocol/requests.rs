//! Byte vectors for every request layout, written from the fact sheet's offset tables.

use virtio_iommu_spec::ext::{self, InvalCaches, InvalScope, PageRespCode, VtdFlags};
use virtio_iommu_spec::request::{
    Attach, AttachFlags, AttachTable, Detach, Invalidate, Map, MapFlags, PageResp, Probe, ReqTail,
    TableDesc, Unmap,
};
use virtio_iommu_spec::{DecodeError, Request, RequestType, Status};
use zerocopy::IntoBytes;

fn le32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}
fn le64(v: u64) -> [u8; 8] {
    v.to_le_bytes()
}

/// Builds a vector from (offset, bytes) pieces over a zeroed buffer.
fn vector(len: usize, pieces: &[(usize, &[u8])]) -> Vec<u8> {
    let mut v = vec![0u8; len];
    for (off, b) in pieces {
        v[*off..*off + b.len()].copy_from_slice(b);
    }
    v
}

fn roundtrip(req: Request, bytes: &[u8]) {
    assert_eq!(req.encode().as_bytes(), bytes, "encode {req:?}");
    assert_eq!(Request::parse(bytes), Ok(req), "parse {req:?}");
    assert_eq!(bytes.len(), req.request_type().readable_len());
}

#[test]
fn attach_vector() {
    let bytes = vector(
        20,
        &[
            (0, &[1]),
            (4, &le32(0x0102_0304)),
            (8, &le32(0x18)),
            (12, &le32(1)),
        ],
    );
    roundtrip(
        Request::Attach(Attach {
            domain: 0x0102_0304,
            endpoint: 0x18,
            flags: AttachFlags::BYPASS,
        }),
        &bytes,
    );
    assert_eq!(&bytes[4..8], &[4, 3, 2, 1]);
}

#[test]
fn attach_errors() {
    let good = vector(20, &[(0, &[1]), (4, &le32(1)), (8, &le32(2))]);
    assert!(Request::parse(&good).is_ok());
    // Reserved bytes of the head are ignored.
    let mut head_res = good.clone();
    head_res[1] = 0xff;
    assert!(Request::parse(&head_res).is_ok());
    // Reserved field must be zero.
    let mut res = good.clone();
    res[16] = 1;
    assert_eq!(Request::parse(&res), Err(DecodeError::ReservedNotZero));
    assert_eq!(DecodeError::ReservedNotZero.status(), Some(Status::Inval));
    // Unknown flag.
    let mut fl = good.clone();
    fl[12] = 2;
    assert_eq!(Request::parse(&fl), Err(DecodeError::UnknownFlags));
    // Short and long.
    assert_eq!(
        Request::parse(&good[..19]),
        Err(DecodeError::TooShort { need: 20, got: 19 })
    );
    let mut long = good.clone();
    long.push(0);
    assert_eq!(
        Request::parse(&long),
        Err(DecodeError::TooLong { want: 20, got: 21 })
    );
}

#[test]
fn detach_vector_ignores_reserved() {
    let bytes = vector(20, &[(0, &[2]), (4, &le32(7)), (8, &le32(9))]);
    roundtrip(
        Request::Detach(Detach {
            domain: 7,
            endpoint: 9,
        }),
        &bytes,
    );
    let mut res = bytes.clone();
    res[12..20].fill(0xee);
    assert_eq!(
        Request::parse(&res),
        Ok(Request::Detach(Detach {
            domain: 7,
            endpoint: 9
        }))
    );
}

#[test]
fn map_vector() {
    let bytes = vector(
        36,
        &[
            (0, &[3]),
            (4, &le32(5)),
            (8, &le64(0x1000)),
            (16, &le64(0x1fff)),
            (24, &le64(0xdead_0000)),
            (32, &le32(0b111)),
        ],
    );
    roundtrip(
        Request::Map(Map {
            domain: 5,
            virt_start: 0x1000,
            virt_end: 0x1fff,
            phys_start: 0xdead_0000,
            flags: MapFlags::READ | MapFlags::WRITE | MapFlags::MMIO,
        }),
        &bytes,
    );
    let mut bad = bytes.clone();
    bad[32] = 0b1000;
    assert_eq!(Request::parse(&bad), Err(DecodeError::UnknownFlags));
}

#[test]
fn unmap_vector() {
    let bytes = vector(
        28,
        &[
            (0, &[4]),
            (4, &le32(5)),
            (8, &le64(0)),
            (16, &le64(u64::MAX)),
        ],
    );
    roundtrip(
        Request::Unmap(Unmap {
            domain: 5,
            virt_start: 0,
            virt_end: u64::MAX,
        }),
        &bytes,
    );
    let mut res = bytes.clone();
    res[27] = 1;
    assert_eq!(Request::parse(&res), Err(DecodeError::ReservedNotZero));
}

#[test]
fn probe_vector() {
    let bytes = vector(72, &[(0, &[5]), (4, &le32(0x18))]);
    let req = Request::Probe(Probe { endpoint: 0x18 });
    roundtrip(req, &bytes);
    assert_eq!(req.writable_len(512), 516);
    assert_eq!(
        Request::Map(Map {
            domain: 0,
            virt_start: 0,
            virt_end: 0,
            phys_start: 0,
            flags: MapFlags::READ
        })
        .writable_len(512),
        4
    );
    let mut res = bytes.clone();
    res[8..72].fill(0x55);
    assert_eq!(Request::parse(&res), Ok(req));
}

#[test]
fn attach_table_smmu_vector() {
    let bytes = vector(
        76,
        &[
            (0, &[ext::T_ATTACH_TABLE]),
            (4, &le32(3)),
            (8, &le32(0x10)),
            (12, &[2, 0]),
            (14, &[ext::S1FMT_4KL2, ext::S1DSS_SSID0]),
            (16, &le64(0x8000_0000)),
            (24, &le32(8)),
        ],
    );
    roundtrip(
        Request::AttachTable(AttachTable {
            domain: 3,
            endpoint: 0x10,
            table: TableDesc::ArmSmmuV3 {
                s1fmt: ext::S1FMT_4KL2,
                s1dss: ext::S1DSS_SSID0,
                s1contextptr: 0x8000_0000,
                s1cdmax: 8,
            },
        }),
        &bytes,
    );
    let mut res = bytes.clone();
    res[40] = 1;
    assert_eq!(Request::parse(&res), Err(DecodeError::ReservedNotZero));
    let mut dss = bytes.clone();
    dss[15] = 3;
    assert_eq!(Request::parse(&dss), Err(DecodeError::BadValue));
}

#[test]
fn attach_table_vtd_vector() {
    let bytes = vector(
        76,
        &[
            (0, &[ext::T_ATTACH_TABLE]),
            (4, &le32(3)),
            (8, &le32(0x10)),
            (12, &[4, 0]),
            (16, &le32(0x1234)),
            (20, &le32(57)),
            (24, &le64(0x4000_1000)),
            (32, &le64(3)),
        ],
    );
    roundtrip(
        Request::AttachTable(AttachTable {
            domain: 3,
            endpoint: 0x10,
            table: TableDesc::Vtd {
                pasid: 0x1234,
                addr_width: 57,
                pgd: 0x4000_1000,
                flags: VtdFlags::SRE | VtdFlags::WPE,
            },
        }),
        &bytes,
    );
    let mut fl = bytes.clone();
    fl[32] = 4;
    assert_eq!(Request::parse(&fl), Err(DecodeError::UnknownFlags));
    let mut fmt = bytes.clone();
    fmt[12] = 1; // PGTF_ARM_LPAE: defined by the drafts, not implemented.
    assert_eq!(Request::parse(&fmt), Err(DecodeError::UnknownFormat(1)));
    assert_eq!(DecodeError::UnknownFormat(1).status(), Some(Status::Unsupp));
}

#[test]
fn invalidate_vectors() {
    let bytes = vector(
        60,
        &[
            (0, &[ext::T_INVALIDATE]),
            (4, &[4, 0]),     // G_VA
            (6, &[0b101, 0]), // IOTLB | PASID caches
            (8, &[0b111, 0]), // PASID | ARCHID | LEAF
            (12, &le32(9)),
            (16, &le32(1)),
            (24, &le64(0x42)),
            (32, &le64(0x7000_0000)),
            (40, &le64(16)),
            (48, &[12]),
        ],
    );
    roundtrip(
        Request::Invalidate(Invalidate {
            domain: 9,
            caches: InvalCaches::IOTLB | InvalCaches::PASID,
            scope: InvalScope::Range {
                pasid: Some(1),
                start: 0x7000_0000,
                nr_pages: 16,
                granule: 12,
            },
            archid: Some(0x42),
            leaf: true,
        }),
        &bytes,
    );
    let dom = vector(
        60,
        &[
            (0, &[ext::T_INVALIDATE]),
            (4, &[1, 0]),
            (6, &[1, 0]),
            (12, &le32(9)),
        ],
    );
    roundtrip(
        Request::Invalidate(Invalidate {
            domain: 9,
            caches: InvalCaches::IOTLB,
            scope: InvalScope::Domain,
            archid: None,
            leaf: false,
        }),
        &dom,
    );
    let pas = vector(
        60,
        &[
            (0, &[ext::T_INVALIDATE]),
            (4, &[2, 0]),
            (6, &[6, 0]),
            (8, &[1, 0]),
            (12, &le32(9)),
            (16, &le32(77)),
        ],
    );
    roundtrip(
        Request::Invalidate(Invalidate {
            domain: 9,
            caches: InvalCaches::DEV_IOTLB | InvalCaches::PASID,
            scope: InvalScope::Pasid(77),
            archid: None,
            leaf: false,
        }),
        &pas,
    );
    // Two granularities at once, PASID granularity without a PASID, bad granule, reserved.
    let mut two = dom.clone();
    two[4] = 3;
    assert_eq!(Request::parse(&two), Err(DecodeError::BadValue));
    let mut nopasid = pas.clone();
    nopasid[8] = 0;
    assert_eq!(Request::parse(&nopasid), Err(DecodeError::BadValue));
    let mut gr = bytes.clone();
    gr[48] = 64;
    assert_eq!(Request::parse(&gr), Err(DecodeError::BadValue));
    let mut res = dom.clone();
    res[50] = 1;
    assert_eq!(Request::parse(&res), Err(DecodeError::ReservedNotZero));
    let mut caches = dom.clone();
    caches[6] = 8;
    assert_eq!(Request::parse(&caches), Err(DecodeError::UnknownFlags));
}

#[test]
fn page_resp_vector() {
    let bytes = vector(
        28,
        &[
            (0, &[ext::T_PAGE_RESP]),
            (4, &le32(0x18)),
            (8, &le32(1)),
            (12, &le32(5)),
            (16, &[0x34, 0x12]),
            (18, &[1, 0]),
        ],
    );
    roundtrip(
        Request::PageResp(PageResp {
            endpoint: 0x18,
            pasid: Some(5),
            group_id: 0x1234,
            code: PageRespCode::Invalid,
        }),
        &bytes,
    );
    let mut code = bytes.clone();
    code[18] = 3;
    assert_eq!(Request::parse(&code), Err(DecodeError::BadValue));
    let mut res = bytes.clone();
    res[20] = 1;
    assert_eq!(Request::parse(&res), Err(DecodeError::ReservedNotZero));
    let mut fl = bytes.clone();
    fl[8] = 2;
    assert_eq!(Request::parse(&fl), Err(DecodeError::UnknownFlags));
}

#[test]
fn unknown_and_empty() {
    assert_eq!(
        Request::parse(&[]),
        Err(DecodeError::TooShort { need: 4, got: 0 })
    );
    for t in [0u8, 9, 0x7f, 0xff] {
        assert_eq!(
            Request::parse(&[t, 0, 0, 0]),
            Err(DecodeError::UnknownType(t))
        );
        assert_eq!(DecodeError::UnknownType(t).status(), None);
    }
    for t in RequestType::ALL {
        assert_eq!(RequestType::try_from(t as u8), Ok(t));
        // A bare head is too short for every type.
        assert!(matches!(
            Request::parse(&[t as u8, 0, 0, 0]),
            Err(DecodeError::TooShort { .. })
        ));
    }
    assert_eq!(ReqTail::new(Status::Range).as_bytes(), &[5, 0, 0, 0]);
}
