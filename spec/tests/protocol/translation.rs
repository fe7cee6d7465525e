//! The translation protocol (spec/TRANSLATION.md): byte vectors for every message, the worked
//! example of §6 byte for byte, and the protocol errors of §1.

use virtio_iommu_spec::event::{FaultFlags, FaultReason};
use virtio_iommu_spec::request::MapFlags;
use virtio_iommu_spec::translation::{
    ClientMessage, DaemonMessage, Endpoints, Header, Hello, HelloReply, HelloReplyFlags,
    HelloStatus, InvalAck, Invalidate, MessageType, Pasids, ProtocolError, Translate,
    TranslateFault, TranslateFlags, TranslateReply, TranslateStatus, TranslatedRange,
    TranslatedRanges, WireEndpointRange, HEADER_SIZE,
};

fn client_bytes(m: &ClientMessage<'_>) -> Vec<u8> {
    let mut out = vec![0u8; m.encoded_len()];
    assert_eq!(m.encode_into(&mut out), Some(out.len()));
    // One byte short does not encode.
    let mut short = vec![0u8; m.encoded_len() - 1];
    assert_eq!(m.encode_into(&mut short), None);
    out
}

fn daemon_bytes(m: &DaemonMessage) -> Vec<u8> {
    let mut out = vec![0u8; m.encoded_len()];
    assert_eq!(m.encode_into(&mut out), Some(out.len()));
    let mut short = vec![0u8; m.encoded_len() - 1];
    assert_eq!(m.encode_into(&mut short), None);
    out
}

fn header(bytes: &[u8]) -> [u8; HEADER_SIZE] {
    bytes[..HEADER_SIZE].try_into().unwrap()
}

fn parse_client(bytes: &[u8]) -> Result<ClientMessage<'_>, ProtocolError> {
    let h = ClientMessage::check_header(&header(bytes))?;
    ClientMessage::parse(h, &bytes[HEADER_SIZE..])
}

fn parse_daemon(bytes: &[u8]) -> Result<DaemonMessage, ProtocolError> {
    let h = DaemonMessage::check_header(&header(bytes))?;
    DaemonMessage::parse(h, &bytes[HEADER_SIZE..])
}

/// Parses hex pairs separated by whitespace.
fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

#[test]
fn worked_example_hello() {
    let wire = hex("01 00 00 00 18 00 00 00
        01 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00
        00 00 00 00 ff ff 00 00");
    let ranges = [WireEndpointRange::new(0, 0xffff)];
    let hello = ClientMessage::Hello(Hello {
        version: 1,
        flags: 0,
        ranges: &ranges,
    });
    assert_eq!(client_bytes(&hello), wire);
    let back = parse_client(&wire).unwrap();
    assert_eq!(back, hello);
    let ClientMessage::Hello(h) = back else {
        unreachable!()
    };
    assert_eq!(h.status(), HelloStatus::Accepted);
    let typed: Vec<_> = h.endpoint_ranges().collect();
    assert_eq!(typed.len(), 1);
    assert!(typed[0].contains(0xffff) && !typed[0].contains(0x10000));
}

#[test]
fn worked_example_hello_reply() {
    let wire = hex("81 00 00 00 18 00 00 00
        01 00 00 00 00 00 00 00
        00 f0 ff ff ff ff ff ff 00 00 00 00 00 00 00 00");
    let reply = DaemonMessage::HelloReply(HelloReply {
        version: 1,
        status: HelloStatus::Accepted,
        page_size_mask: !0xfff,
        flags: HelloReplyFlags::empty(),
    });
    assert_eq!(daemon_bytes(&reply), wire);
    assert_eq!(parse_daemon(&wire), Ok(reply));
}

#[test]
fn worked_example_translate() {
    let wire = hex("02 00 00 00 28 00 00 00
        07 00 00 00 00 00 00 00 00 00 01 00 00 00 00 00
        00 10 00 00 00 00 00 00 08 00 00 00 00 00 00 00
        01 00 00 00 00 00 00 00");
    let t = Translate {
        tag: 7,
        iova: 0x10000,
        len: 0x1000,
        endpoint: 8,
        pasid: 0,
        flags: TranslateFlags::READ,
    };
    assert_eq!(client_bytes(&ClientMessage::Translate(t)), wire);
    assert_eq!(parse_client(&wire), Ok(ClientMessage::Translate(t)));
    assert!(t.is_valid());
    assert_eq!(t.pasid(), None);
    assert_eq!(t.last(), Some(0x10fff));
    assert_eq!(t.access(), FaultFlags::READ);
}

#[test]
fn worked_example_translate_reply() {
    let wire = hex("82 00 00 00 40 00 00 00
        07 00 00 00 00 00 00 00 00 00 00 00 01 00 00 00
        00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
        00 00 01 00 00 00 00 00 ff ff 01 00 00 00 00 00
        00 00 04 00 00 00 00 00 03 00 00 00 00 00 00 00");
    let mut ranges = TranslatedRanges::new();
    let r = TranslatedRange {
        iova: 0x10000,
        last: 0x1ffff,
        paddr: 0x40000,
        perm: MapFlags::READ | MapFlags::WRITE,
    };
    assert!(ranges.push(r));
    let reply = DaemonMessage::TranslateReply(TranslateReply::ok(7, ranges));
    assert_eq!(daemon_bytes(&reply), wire);
    assert_eq!(parse_daemon(&wire), Ok(reply));
    assert_eq!(r.translate(0x10008), Some(0x40008));
    assert_eq!(r.translate(0x20000), None);
}

#[test]
fn worked_example_invalidate_and_ack() {
    let wire = hex("83 00 00 00 28 00 00 00
        01 00 00 00 00 00 00 00 00 00 01 00 00 00 00 00
        ff ff 01 00 00 00 00 00 08 00 00 00 00 00 00 00
        00 00 00 00 00 00 00 00");
    let inv = Invalidate {
        seq: 1,
        first: 0x10000,
        last: 0x1ffff,
        endpoints: Endpoints::One(8),
        pasids: Pasids::NoPasid,
    };
    assert_eq!(daemon_bytes(&DaemonMessage::Invalidate(inv)), wire);
    assert_eq!(parse_daemon(&wire), Ok(DaemonMessage::Invalidate(inv)));

    let ack = hex("03 00 00 00 08 00 00 00 01 00 00 00 00 00 00 00");
    let m = ClientMessage::InvalAck(InvalAck { seq: 1 });
    assert_eq!(client_bytes(&m), ack);
    assert_eq!(parse_client(&ack), Ok(m));
}

#[test]
fn fault_reply_vector() {
    let reply = DaemonMessage::TranslateReply(TranslateReply::fault(
        0x0102_0304_0506_0708,
        TranslateFault {
            reason: FaultReason::Domain,
            flags: FaultFlags::WRITE | FaultFlags::ADDRESS,
            address: 0xdead_b000,
        },
    ));
    let wire = hex("82 00 00 00 20 00 00 00
        08 07 06 05 04 03 02 01 01 00 00 00 00 00 00 00
        01 00 00 00 02 01 00 00 00 b0 ad de 00 00 00 00");
    assert_eq!(daemon_bytes(&reply), wire);
    assert_eq!(parse_daemon(&wire), Ok(reply));
}

#[test]
fn refused_replies_vector() {
    for (status, code) in [(TranslateStatus::Inval, 2u8), (TranslateStatus::Unsupp, 3)] {
        let reply = DaemonMessage::TranslateReply(TranslateReply::refused(9, status));
        let mut wire = hex("82 00 00 00 20 00 00 00 09 00 00 00 00 00 00 00");
        wire.extend_from_slice(&[code, 0, 0, 0]);
        wire.extend_from_slice(&[0; 20]);
        assert_eq!(daemon_bytes(&reply), wire, "{}", status.name());
        assert_eq!(parse_daemon(&wire), Ok(reply));
    }
}

#[test]
fn pasid_translate_and_scoped_invalidates() {
    let t = Translate {
        tag: 1,
        iova: 0x7000,
        len: 1,
        endpoint: 3,
        pasid: 0x55,
        flags: TranslateFlags::WRITE | TranslateFlags::PASID | TranslateFlags::NO_FAULT,
    };
    let bytes = client_bytes(&ClientMessage::Translate(t));
    assert_eq!(&bytes[8 + 28..8 + 36], &hex("55 00 00 00 32 00 00 00")[..]);
    assert_eq!(t.pasid(), Some(0x55));

    let cases = [
        (Endpoints::One(3), Pasids::One(0x55), 0x55u32, 0b001u32),
        (Endpoints::One(3), Pasids::All, 0, 0b010),
        (Endpoints::All, Pasids::All, 0, 0b110),
        (Endpoints::All, Pasids::NoPasid, 0, 0b100),
    ];
    for (endpoints, pasids, pasid, flags) in cases {
        let inv = Invalidate {
            seq: 2,
            first: 0,
            last: u64::MAX,
            endpoints,
            pasids,
        };
        let b = daemon_bytes(&DaemonMessage::Invalidate(inv));
        let ep: u32 = if endpoints == Endpoints::All { 0 } else { 3 };
        assert_eq!(&b[8 + 24..8 + 28], &ep.to_le_bytes());
        assert_eq!(&b[8 + 28..8 + 32], &pasid.to_le_bytes());
        assert_eq!(&b[8 + 32..8 + 36], &flags.to_le_bytes());
        assert_eq!(parse_daemon(&b), Ok(DaemonMessage::Invalidate(inv)));
    }
}

#[test]
fn invalidate_covers() {
    let inv = Invalidate {
        seq: 1,
        first: 0x1000,
        last: 0x1fff,
        endpoints: Endpoints::One(8),
        pasids: Pasids::NoPasid,
    };
    assert!(inv.covers(8, None, 0x1fff, 0x3000));
    assert!(inv.covers(8, None, 0, 0x1000));
    assert!(!inv.covers(8, None, 0x2000, 0x3000));
    assert!(!inv.covers(9, None, 0x1000, 0x1fff));
    assert!(!inv.covers(8, Some(1), 0x1000, 0x1fff));
    let one = Invalidate {
        pasids: Pasids::One(1),
        ..inv
    };
    assert!(one.covers(8, Some(1), 0x1000, 0x1000));
    assert!(!one.covers(8, None, 0x1000, 0x1000));
    assert!(!one.covers(8, Some(2), 0x1000, 0x1000));
    let all = Invalidate {
        endpoints: Endpoints::All,
        pasids: Pasids::All,
        ..inv
    };
    assert!(all.covers(77, Some(9), 0x1800, 0x1800));
    assert!(all.covers(77, None, 0x1800, 0x1800));
}

#[test]
fn translate_validity() {
    let ok = Translate {
        tag: 0,
        iova: u64::MAX,
        len: 1,
        endpoint: 0,
        pasid: 0,
        flags: TranslateFlags::READ,
    };
    assert!(ok.is_valid());
    assert_eq!(ok.last(), Some(u64::MAX));
    let overflow = Translate { len: 2, ..ok };
    assert!(!overflow.is_valid());
    let empty = Translate { len: 0, ..ok };
    assert!(!empty.is_valid());
    let exec_only = Translate {
        flags: TranslateFlags::EXEC,
        ..ok
    };
    assert!(!exec_only.is_valid());
    // A reserved flag bit decodes (the reply must echo the tag) but is not valid.
    let mut bytes = client_bytes(&ClientMessage::Translate(ok));
    bytes[8 + 32] |= 1 << 6;
    let ClientMessage::Translate(t) = parse_client(&bytes).unwrap() else {
        unreachable!()
    };
    assert!(!t.is_valid());
    // The reserved field is ignored.
    let mut bytes = client_bytes(&ClientMessage::Translate(ok));
    bytes[8 + 36] = 0xff;
    assert_eq!(parse_client(&bytes), Ok(ClientMessage::Translate(ok)));
}

#[test]
fn hello_statuses() {
    let hello = |version: u32, ranges: &[(u32, u32)]| -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&u32::try_from(16 + 8 * ranges.len()).unwrap().to_le_bytes());
        b.extend_from_slice(&version.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&u32::try_from(ranges.len()).unwrap().to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        for (f, l) in ranges {
            b.extend_from_slice(&f.to_le_bytes());
            b.extend_from_slice(&l.to_le_bytes());
        }
        b
    };
    let status = |b: &[u8]| match parse_client(b).unwrap() {
        ClientMessage::Hello(h) => h.status(),
        other => panic!("{other:?}"),
    };
    assert_eq!(status(&hello(1, &[(5, 5)])), HelloStatus::Accepted);
    assert_eq!(
        status(&hello(2, &[(5, 5)])),
        HelloStatus::VersionUnsupported
    );
    assert_eq!(status(&hello(1, &[(6, 5)])), HelloStatus::InvalidRanges);
    assert_eq!(status(&hello(1, &[])), HelloStatus::InvalidRanges);
    assert_eq!(status(&hello(1, &[(0, 1); 64])), HelloStatus::Accepted);
    assert_eq!(status(&hello(1, &[(0, 1); 65])), HelloStatus::InvalidRanges);
    // A count that contradicts the size is a protocol error.
    let mut b = hello(1, &[(0, 1), (2, 3)]);
    b[8 + 8] = 3;
    assert!(matches!(
        parse_client(&b),
        Err(ProtocolError::BadSize { .. })
    ));
    // A size that is not 16 + 8n fails at the header.
    let mut b = hello(1, &[(0, 1)]);
    b[4] = 25;
    assert_eq!(
        ClientMessage::check_header(&header(&b)),
        Err(ProtocolError::BadSize {
            msg_type: 1,
            size: 25
        })
    );
}

#[test]
fn header_errors() {
    let h = |t: u16, size: u32| {
        let mut b = [0u8; 8];
        b[..2].copy_from_slice(&t.to_le_bytes());
        b[4..].copy_from_slice(&size.to_le_bytes());
        b
    };
    // Each direction accepts only the other side's types.
    assert_eq!(
        ClientMessage::check_header(&h(0x81, 24)),
        Err(ProtocolError::UnknownType(0x81))
    );
    assert_eq!(
        DaemonMessage::check_header(&h(0x02, 40)),
        Err(ProtocolError::UnknownType(0x02))
    );
    assert_eq!(
        ClientMessage::check_header(&h(0x04, 0)),
        Err(ProtocolError::UnknownType(4))
    );
    // Reserved bytes of the header are ignored.
    let mut r = h(2, 40);
    r[2] = 0xff;
    assert_eq!(
        ClientMessage::check_header(&r),
        Ok(Header {
            msg_type: MessageType::Translate,
            size: 40
        })
    );
    for (t, size) in [(2u16, 39u32), (2, 41), (3, 16), (0x83, 0), (0x81, 25)] {
        let b = h(t, size);
        let r = if t < 0x80 {
            ClientMessage::check_header(&b)
        } else {
            DaemonMessage::check_header(&b)
        };
        assert_eq!(r, Err(ProtocolError::BadSize { msg_type: t, size }));
    }
    // Over 4096 bytes, and more than 8 reply ranges, are protocol errors.
    assert!(ClientMessage::check_header(&h(1, 16 + 8 * 511)).is_err());
    assert!(ClientMessage::check_header(&h(1, 16 + 8 * 510)).is_ok());
    assert!(DaemonMessage::check_header(&h(0x82, 32 + 32 * 8)).is_ok());
    assert!(DaemonMessage::check_header(&h(0x82, 32 + 32 * 9)).is_err());
    assert!(DaemonMessage::check_header(&h(0x82, 33)).is_err());
}

#[test]
fn reply_contradictions_are_errors() {
    let mut ranges = TranslatedRanges::new();
    ranges.push(TranslatedRange {
        iova: 0x1000,
        last: 0x1fff,
        paddr: 0x5000,
        perm: MapFlags::READ,
    });
    let ok = daemon_bytes(&DaemonMessage::TranslateReply(TranslateReply::ok(
        1, ranges,
    )));
    // OK with a count that contradicts the size.
    let mut b = ok.clone();
    b[8 + 12] = 2;
    assert!(matches!(
        parse_daemon(&b),
        Err(ProtocolError::BadSize { .. })
    ));
    // FAULT with a range.
    let mut b = ok.clone();
    b[8 + 8] = 1;
    assert_eq!(parse_daemon(&b), Err(ProtocolError::BadValue));
    // Undefined status.
    let mut b = ok.clone();
    b[8 + 8] = 4;
    assert_eq!(parse_daemon(&b), Err(ProtocolError::BadValue));
    // iova > last.
    let mut b = ok.clone();
    b[8 + 32 + 8..8 + 32 + 16].copy_from_slice(&0u64.to_le_bytes());
    assert_eq!(parse_daemon(&b), Err(ProtocolError::BadValue));
    // OK without a range.
    let none = daemon_bytes(&DaemonMessage::TranslateReply(TranslateReply::refused(
        1,
        TranslateStatus::Inval,
    )));
    let mut b = none.clone();
    b[8 + 8] = 0;
    assert_eq!(parse_daemon(&b), Err(ProtocolError::BadValue));
    // Two ranges that are not contiguous.
    let mut two = ranges;
    two.push(TranslatedRange {
        iova: 0x3000,
        last: 0x3fff,
        paddr: 0,
        perm: MapFlags::READ,
    });
    let b = daemon_bytes(&DaemonMessage::TranslateReply(TranslateReply::ok(1, two)));
    assert_eq!(parse_daemon(&b), Err(ProtocolError::BadValue));
    // Invalidate with PASID and ALL_PASIDS, or first > last.
    let inv = daemon_bytes(&DaemonMessage::Invalidate(Invalidate {
        seq: 1,
        first: 1,
        last: 1,
        endpoints: Endpoints::One(0),
        pasids: Pasids::NoPasid,
    }));
    let mut b = inv.clone();
    b[8 + 32] = 0b011;
    assert_eq!(parse_daemon(&b), Err(ProtocolError::BadValue));
    let mut b = inv.clone();
    b[8 + 32] = 0b1000;
    assert_eq!(parse_daemon(&b), Err(ProtocolError::BadValue));
    let mut b = inv;
    b[8 + 8] = 2;
    assert_eq!(parse_daemon(&b), Err(ProtocolError::BadValue));
}

#[test]
fn ranges_capacity() {
    let mut r = TranslatedRanges::new();
    for i in 0..8 {
        assert!(r.push(TranslatedRange {
            iova: i,
            last: i,
            paddr: i,
            perm: MapFlags::READ
        }));
    }
    assert!(r.is_full());
    assert!(!r.push(TranslatedRange::default()));
    assert_eq!(r.as_slice().len(), 8);
}
