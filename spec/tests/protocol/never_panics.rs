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
