//! The spec decoders: no panic on any input, and parse ∘ encode ∘ parse = parse for every
//! request (base and extension), event (24- and 48-byte records) and probe property.

use virtio_iommu_spec::event::{EXT_EVENT_SIZE, FAULT_SIZE};
use virtio_iommu_spec::{Config, Event, ProbeProperties, ProbeWriter, Property, Request};
use zerocopy::FromBytes;

/// What the first input byte selects; the rest is the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Decoder {
    /// A request's device-readable part.
    Request = 0,
    /// An event record as the device wrote it.
    Event = 1,
    /// A PROBE properties area.
    Probe = 2,
    /// The 40-byte config space.
    Config = 3,
}

/// One fuzz input: `[decoder selector, payload...]`.
pub fn check(data: &[u8]) {
    let Some((&sel, payload)) = data.split_first() else {
        return;
    };
    match sel % 4 {
        0 => check_request(payload),
        1 => check_event(payload),
        2 => check_probe(payload),
        _ => check_config(payload),
    }
}

/// Requests: a decoded request re-encodes to bytes that decode to it and re-encode identically.
pub fn check_request(bytes: &[u8]) {
    match Request::parse(bytes) {
        Ok(r) => {
            assert_eq!(Request::peek_type(bytes), Ok(r.request_type()));
            let enc = r.encode();
            let again = Request::parse(enc.as_bytes());
            assert_eq!(again, Ok(r), "re-encoded {:02x?}", enc.as_bytes());
            assert_eq!(again.unwrap().encode().as_bytes(), enc.as_bytes());
            // The writable size is total for every request and probe size.
            let _ = r.writable_len(u32::MAX);
        }
        Err(e) => {
            // Every decode error names a status (or none: used length 0).
            let _ = e.status();
        }
    }
}

/// Events: the record of the length the device used decodes the same after re-encoding.
pub fn check_event(bytes: &[u8]) {
    let Ok(e) = Event::parse(bytes) else {
        return;
    };
    let enc: [u8; EXT_EVENT_SIZE];
    let legacy: [u8; FAULT_SIZE];
    let again = match e {
        Event::Fault(f) if bytes.len() == FAULT_SIZE => {
            legacy = f.encode_legacy();
            Event::parse(&legacy)
        }
        Event::Fault(f) => {
            enc = f.encode_ext();
            Event::parse(&enc)
        }
        Event::PageRequest(p) => {
            enc = p.encode();
            Event::parse(&enc)
        }
    };
    assert_eq!(again, Ok(e));
}

/// Probe areas: the walk ends within one property per 4 bytes, and the properties found,
/// written back with `ProbeWriter`, are found again in the same order.
pub fn check_probe(area: &[u8]) {
    let props: Vec<Property> = ProbeProperties::new(area)
        .take(area.len() / 4 + 2)
        .collect();
    assert!(props.len() <= area.len() / 4, "{} properties", props.len());
    let size: usize = props.iter().map(Property::encoded_len).sum();
    let mut buf = vec![0u8; size + 8];
    let mut w = ProbeWriter::new(&mut buf);
    for p in &props {
        let _ = p.resv_kind();
        let _ = p.table_format();
        w.push(p).expect("room for every property");
    }
    assert_eq!(w.len(), size);
    let again: Vec<Property> = ProbeProperties::new(&buf).collect();
    assert_eq!(again, props);
}

/// Config space: any 40 bytes are a config; the granule is total.
pub fn check_config(bytes: &[u8]) {
    let Some(raw) = bytes.get(..40) else {
        return;
    };
    let c = Config::read_from_bytes(raw).expect("40 bytes");
    if let Some(g) = c.granule() {
        assert!(g.is_power_of_two());
        assert_eq!(c.page_size_mask.get() & (g - 1), 0);
    }
}
