//! Protocol errors close the connection (and only that connection); HELLO statuses; the
//! bound on clients.

use std::time::Duration;

use super::Tvm;
use crate::daemon::vm::*;
use serde_json::json;
use virtio_iommu_spec::translation::{HelloStatus, TranslateFlags, TranslateStatus};

fn header(ty: u16, size: u32) -> Vec<u8> {
    let mut b = ty.to_le_bytes().to_vec();
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&size.to_le_bytes());
    b
}

fn hello_bytes(version: u32, ranges: &[(u32, u32)]) -> Vec<u8> {
    let mut b = header(1, u32::try_from(16 + 8 * ranges.len()).unwrap());
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&u32::try_from(ranges.len()).unwrap().to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    for (f, l) in ranges {
        b.extend_from_slice(&f.to_le_bytes());
        b.extend_from_slice(&l.to_le_bytes());
    }
    b
}

#[test]
fn protocol_errors_close_the_connection() {
    let mut t = Tvm::start(&[]);
    let hello = hello_bytes(1, &[(0, 0xff)]);
    let translate = {
        let mut b = header(2, 40);
        b.extend_from_slice(&[0; 16]);
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        b
    };
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("TRANSLATE before HELLO", translate.clone(), false),
        ("unknown type", header(9, 0), true),
        ("a daemon's type", header(0x81, 24), true),
        ("TRANSLATE of 39 bytes", header(2, 39), true),
        ("INVAL_ACK of 16 bytes", header(3, 16), true),
        (
            "HELLO count against size",
            {
                let mut b = hello.clone();
                b[8 + 8] = 2;
                b
            },
            false,
        ),
        ("second HELLO", hello.clone(), true),
        ("payload over 4096", header(1, 4096 + 8), true),
    ];
    for (what, bytes, after_hello) in &cases {
        let mut c = t.raw_client();
        if *after_hello {
            c.send_raw(&hello).unwrap();
            c.recv().unwrap();
        }
        c.send_raw(bytes).unwrap();
        assert!(c.closed_within(WAIT).unwrap(), "{what}: still open");
    }
    // The daemon and other clients are unaffected.
    let mut c = t.client(0, 0xff);
    let r = c.translate(1, None, 0, 1, TranslateFlags::READ).unwrap();
    assert_eq!(r.status, TranslateStatus::Ok);
    t.vm.assert_alive();
    let s = t.tstats();
    assert_eq!(s["protocol_errors"], json!(cases.len()), "{s}");
    assert!(t.vm.daemon.stderr().contains("protocol error"));
}

#[test]
fn hello_statuses_and_the_client_bound() {
    let mut t = Tvm::start(&["--max-translation-clients", "2"]);
    for (bytes, status) in [
        (hello_bytes(2, &[(0, 1)]), HelloStatus::VersionUnsupported),
        (hello_bytes(1, &[]), HelloStatus::InvalidRanges),
        (hello_bytes(1, &[(5, 4)]), HelloStatus::InvalidRanges),
        (hello_bytes(1, &[(0, 1); 65]), HelloStatus::InvalidRanges),
    ] {
        let mut c = t.raw_client();
        c.send_raw(&bytes).unwrap();
        match c.recv().unwrap() {
            virtio_iommu_spec::translation::DaemonMessage::HelloReply(r) => {
                assert_eq!(r.status, status);
                assert_eq!(r.version, 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(c.closed_within(WAIT).unwrap(), "{status:?}: closed after");
    }
    let a = t.client(0, 0);
    let _b = t.client(1, 1);
    let mut third = t.raw_client();
    assert!(
        third.closed_within(WAIT).unwrap(),
        "a third client is closed"
    );
    drop(a);
    // Its place is free again (the daemon notices the close first).
    let deadline = std::time::Instant::now() + WAIT;
    let _c = loop {
        let mut c = t.raw_client();
        if !c.closed_within(Duration::from_millis(50)).unwrap() {
            c.hello(&[(2, 2)]).unwrap();
            break c;
        }
        assert!(std::time::Instant::now() < deadline);
    };
    let s = t.tstats();
    assert_eq!(s["hello_rejected"], json!(4), "{s}");
    assert!(s["refused"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["clients"], json!(2), "{s}");
}
