//! Decoding arbitrary bytes never panics, and whatever decodes re-encodes to the same meaning.

use proptest::prelude::*;
use virtio_iommu_spec::{Event, ProbeProperties, ProbeWriter, Request};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn request_parse_total(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
        if let Ok(req) = Request::parse(&bytes) {
            // Re-encoding gives bytes that decode to the same request.
            let enc = req.encode();
            prop_assert_eq!(Request::parse(enc.as_bytes()), Ok(req));
        }
    }

    #[test]
    fn typed_request_parse(t in 1u8..=8, body in proptest::collection::vec(any::<u8>(), 0..80)) {
        let mut bytes = vec![t, 0, 0, 0];
        bytes.extend_from_slice(&body);
        let _ = Request::parse(&bytes);
    }

    #[test]
    fn probe_iter_total(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut area = vec![0u8; 600];
        let props: Vec<_> = ProbeProperties::new(&bytes).collect();
        // Whatever decoded can be written back and read again.
        let mut w = ProbeWriter::new(&mut area);
        for p in &props {
            w.push(p).unwrap();
        }
        let again: Vec<_> = ProbeProperties::new(&area).collect();
        prop_assert_eq!(props, again);
    }

    #[test]
    fn event_parse_total(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = Event::parse(&bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Any header and payload: decoding never panics, and what decodes re-encodes to the
    /// same message.
    #[test]
    fn translation_parse_total(
        head in proptest::collection::vec(any::<u8>(), 8),
        body in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        use virtio_iommu_spec::translation::{ClientMessage, DaemonMessage};
        let head: [u8; 8] = head.try_into().unwrap();
        if let Ok(h) = ClientMessage::check_header(&head) {
            if let Ok(m) = ClientMessage::parse(h, body.get(..h.size).unwrap_or(&body)) {
                let mut out = vec![0u8; m.encoded_len()];
                prop_assert!(m.encode_into(&mut out).is_some());
                let h2 = ClientMessage::check_header(&out[..8].try_into().unwrap()).unwrap();
                let again = ClientMessage::parse(h2, &out[8..]).unwrap();
                // Reserved fields are dropped; the meaning is kept.
                prop_assert_eq!(format!("{again:?}"), format!("{m:?}"));
            }
        }
        if let Ok(h) = DaemonMessage::check_header(&head) {
            if let Ok(m) = DaemonMessage::parse(h, body.get(..h.size).unwrap_or(&body)) {
                let mut out = vec![0u8; m.encoded_len()];
                prop_assert!(m.encode_into(&mut out).is_some());
                let h2 = DaemonMessage::check_header(&out[..8].try_into().unwrap()).unwrap();
                prop_assert_eq!(DaemonMessage::parse(h2, &out[8..]), Ok(m));
            }
        }
    }
}
