//! Byte vectors for probe properties and event records.

use virtio_iommu_spec::event::{FaultFlags, EXT_EVENT_SIZE, FAULT_SIZE};
use virtio_iommu_spec::ext::{self, PageRequestCaps, TableFormat};
use virtio_iommu_spec::probe::{NoSpace, ResvMemSubtype};
use virtio_iommu_spec::{
    DecodeError, Event, FaultEvent, FaultReason, PageRequest, ProbeProperties, ProbeWriter,
    Property,
};

#[test]
fn resv_mem_vector() {
    let mut area = [0xffu8; 64];
    let mut w = ProbeWriter::new(&mut area);
    w.push(&Property::ResvMem {
        subtype: 1,
        start: 0xfee0_0000,
        end: 0xfeef_ffff,
    })
    .unwrap();
    assert_eq!(w.len(), 24);
    let want: [u8; 24] = [
        1, 0, 20, 0, // type 1, length 20
        1, 0, 0, 0, // MSI, reserved
        0x00, 0x00, 0xe0, 0xfe, 0, 0, 0, 0, //
        0xff, 0xff, 0xef, 0xfe, 0, 0, 0, 0,
    ];
    assert_eq!(&area[..24], &want);
    assert!(
        area[24..].iter().all(|b| *b == 0),
        "writer zero-fills the area"
    );
    let props: Vec<_> = ProbeProperties::new(&area).collect();
    assert_eq!(
        props,
        vec![Property::ResvMem {
            subtype: 1,
            start: 0xfee0_0000,
            end: 0xfeef_ffff
        }]
    );
    assert_eq!(props[0].resv_kind(), Some(ResvMemSubtype::Msi));
    // Unknown subtypes read as RESERVED.
    let p = Property::ResvMem {
        subtype: 9,
        start: 0,
        end: 1,
    };
    assert_eq!(p.resv_kind(), Some(ResvMemSubtype::Reserved));
}

#[test]
fn extension_property_vectors() {
    let cases: [(Property, &[u8]); 8] = [
        (
            Property::PageSizeMask(0x20_1000),
            &[2, 0, 12, 0, 0, 0, 0, 0, 0x00, 0x10, 0x20, 0, 0, 0, 0, 0],
        ),
        (
            Property::InputRange {
                start: 0x1000,
                end: 0xffff_ffff,
            },
            &[
                3, 0, 20, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0,
                0, 0,
            ],
        ),
        (Property::OutputSize(48), &[4, 0, 4, 0, 48, 0, 0, 0]),
        (Property::PasidSize(20), &[5, 0, 4, 0, 20, 0, 0, 0]),
        (
            Property::PageTableFormat(ext::FORMAT_PGTF_VTD),
            &[6, 0, 4, 0, 4, 0, 0, 0],
        ),
        (
            Property::PasidTableFormat(ext::FORMAT_PSTF_ARM_SMMU_V3),
            &[7, 0, 4, 0, 2, 0, 0, 0],
        ),
        (
            Property::PageRequest {
                caps: PageRequestCaps::RESP_PASID_REQUIRED,
                max_groups: 32,
            },
            &[8, 0, 12, 0, 1, 0, 0, 0, 32, 0, 0, 0, 0, 0, 0, 0],
        ),
        (
            Property::ResvMem {
                subtype: 0,
                start: 0,
                end: 0xfff,
            },
            &[
                1, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0x0f, 0, 0, 0, 0, 0, 0,
            ],
        ),
    ];
    let mut area = [0u8; 256];
    let mut w = ProbeWriter::new(&mut area);
    for (p, _) in &cases {
        w.push(p).unwrap();
    }
    let mut off = 0;
    for (p, bytes) in &cases {
        assert_eq!(&area[off..off + bytes.len()], *bytes, "{p:?}");
        assert_eq!(p.encoded_len(), bytes.len());
        off += bytes.len();
    }
    let got: Vec<_> = ProbeProperties::new(&area).collect();
    let want: Vec<_> = cases.iter().map(|(p, _)| *p).collect();
    assert_eq!(got, want);
    assert_eq!(got[4].table_format(), Some(TableFormat::Vtd));
    assert_eq!(got[5].table_format(), Some(TableFormat::ArmSmmuV3));
    // A format code under the wrong property type is not that format.
    assert_eq!(
        Property::PageTableFormat(ext::FORMAT_PSTF_ARM_SMMU_V3).table_format(),
        None
    );
}

#[test]
fn writer_reports_no_space_and_writes_nothing() {
    let mut area = [0u8; 30];
    let mut w = ProbeWriter::new(&mut area);
    w.push(&Property::ResvMem {
        subtype: 0,
        start: 0,
        end: 1,
    })
    .unwrap();
    assert_eq!(w.push(&Property::OutputSize(1)), Err(NoSpace));
    assert_eq!(w.len(), 24);
    assert!(area[24..].iter().all(|b| *b == 0));
}

#[test]
fn iterator_rules() {
    let mut area = vec![0u8; 96];
    // 1: an unknown type (0x123) with an odd length: skipped.
    area[0..4].copy_from_slice(&[0x23, 0x01, 3, 0]);
    // 2: a RESV_MEM with reserved type bits set: ignored (the spec's driver rule).
    area[7..11].copy_from_slice(&[1, 0x10, 20, 0]);
    // 3: a PASID_SIZE whose length is too short for its layout: skipped.
    area[31..35].copy_from_slice(&[5, 0, 0, 0]);
    // 4: a good OUTPUT_SIZE.
    area[35..43].copy_from_slice(&[4, 0, 4, 0, 39, 0, 0, 0]);
    // 5: a RESV_MEM with a longer length than its layout: accepted, extra ignored.
    area[43..47].copy_from_slice(&[1, 0, 24, 0]);
    area[47] = 0;
    area[59..67].copy_from_slice(&0x1fffu64.to_le_bytes());
    // then NONE: the walk stops even though bytes follow.
    area[71..75].copy_from_slice(&[0, 0, 4, 0]);
    area[75..83].copy_from_slice(&[4, 0, 4, 0, 40, 0, 0, 0]);
    let got: Vec<_> = ProbeProperties::new(&area).collect();
    assert_eq!(
        got,
        vec![
            Property::OutputSize(39),
            Property::ResvMem {
                subtype: 0,
                start: 0,
                end: 0x1fff
            }
        ]
    );

    // Truncated property at the end: stop.
    let trunc = [4u8, 0, 4, 0, 40, 0, 0, 0, 4, 0, 8, 0, 1];
    assert_eq!(
        ProbeProperties::new(&trunc).collect::<Vec<_>>(),
        vec![Property::OutputSize(40)]
    );
    // Area ending inside a header.
    assert_eq!(ProbeProperties::new(&[4u8, 0]).count(), 0);
}

#[test]
fn legacy_fault_vector() {
    let f = FaultEvent {
        reason: FaultReason::Mapping,
        access: FaultFlags::WRITE,
        endpoint: 0x18,
        address: Some(0x1234_5000),
        pasid: None,
    };
    let bytes = f.encode_legacy();
    let want: [u8; FAULT_SIZE] = [
        2, 0, 0, 0, // reason MAPPING
        0x02, 0x01, 0, 0, // WRITE | ADDRESS
        0x18, 0, 0, 0, // endpoint
        0, 0, 0, 0, // reserved
        0x00, 0x50, 0x34, 0x12, 0, 0, 0, 0,
    ];
    assert_eq!(bytes, want);
    assert_eq!(Event::parse(&bytes), Ok(Event::Fault(f)));
    // A legacy record cannot carry a PASID; it is dropped.
    let with_pasid = FaultEvent {
        pasid: Some(3),
        ..f
    };
    assert_eq!(with_pasid.encode_legacy(), want);
    // Non-zero reserved head bytes make drivers drop the record.
    let mut bad = want;
    bad[2] = 1;
    assert_eq!(Event::parse(&bad), Err(DecodeError::ReservedNotZero));
    // Unknown reason reads as UNKNOWN; no ADDRESS flag means no address.
    let mut unk = want;
    unk[0] = 9;
    unk[5] = 0;
    assert_eq!(
        Event::parse(&unk),
        Ok(Event::Fault(FaultEvent {
            reason: FaultReason::Unknown,
            address: None,
            ..f
        }))
    );
}

#[test]
fn extended_fault_vector() {
    let f = FaultEvent {
        reason: FaultReason::Domain,
        access: FaultFlags::READ | FaultFlags::PRIV,
        endpoint: 7,
        address: Some(0xabc000),
        pasid: Some(0x42),
    };
    let bytes = f.encode_ext();
    let mut want = [0u8; EXT_EVENT_SIZE];
    want[0] = 1;
    want[4..8].copy_from_slice(&(1u32 | 1 << 3 | 1 << 8 | 1 << 9).to_le_bytes());
    want[8..12].copy_from_slice(&7u32.to_le_bytes());
    want[12..16].copy_from_slice(&0x42u32.to_le_bytes());
    want[16..24].copy_from_slice(&0xabc000u64.to_le_bytes());
    assert_eq!(bytes, want);
    assert_eq!(Event::parse(&bytes), Ok(Event::Fault(f)));
    // The first 24 bytes read as the upstream record, endpoint at offset 8.
    assert_eq!(&bytes[8..12], &7u32.to_le_bytes());
}

#[test]
fn page_request_vector() {
    let pr = PageRequest {
        endpoint: 0x18,
        pasid: Some(1),
        address: 0x7fff_f000,
        access: FaultFlags::READ | FaultFlags::WRITE,
        group_id: 0x1ab,
        last: true,
        private_data: Some([0x1111, 0x2222]),
    };
    let bytes = pr.encode();
    let flags: u32 = 0b11 | 1 << 4 | 1 << 5 | 1 << 8 | 1 << 9 | 1 << 10 | 1 << 11;
    let mut want = [0u8; EXT_EVENT_SIZE];
    want[0] = 2;
    want[4..8].copy_from_slice(&flags.to_le_bytes());
    want[8..12].copy_from_slice(&0x18u32.to_le_bytes());
    want[12..16].copy_from_slice(&1u32.to_le_bytes());
    want[16..24].copy_from_slice(&0x7fff_f000u64.to_le_bytes());
    want[24..26].copy_from_slice(&0x1abu16.to_le_bytes());
    want[32..40].copy_from_slice(&0x1111u64.to_le_bytes());
    want[40..48].copy_from_slice(&0x2222u64.to_le_bytes());
    assert_eq!(bytes, want);
    assert_eq!(Event::parse(&bytes), Ok(Event::PageRequest(pr)));
    // A page request without GROUP_ID is malformed.
    let mut bad = want;
    bad[5] &= !(1 << 2);
    assert_eq!(Event::parse(&bad), Err(DecodeError::BadValue));
}

#[test]
fn event_lengths() {
    assert_eq!(
        Event::parse(&[0; 23]),
        Err(DecodeError::TooShort { need: 24, got: 23 })
    );
    assert_eq!(
        Event::parse(&[0; 30]),
        Err(DecodeError::TooShort { need: 48, got: 30 })
    );
    assert_eq!(
        Event::parse(&[0; 49]),
        Err(DecodeError::TooLong { want: 48, got: 49 })
    );
}
