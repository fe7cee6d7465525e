//! Error statuses only raw requests can provoke. Where QEMU's device legitimately differs from
//! the specification's SHOULD/MUST (it checks no alignment or reserved fields, ignores extra
//! readable bytes, answers unknown types with S_UNSUPP, writes its tail at the start of the
//! writable part), the check expects each device's own answer; the lead's report lists them.
//!
//! Every request here is well framed (a readable head, a writable part of at least 4 bytes):
//! QEMU marks the whole device broken on framing errors.

use virtio_drivers::transport::Transport;
use virtio_iommu_spec::request::{
    ReqAttach, ReqDetach, ReqHead, ReqMap, ReqProbe, ReqUnmap, TAIL_SIZE,
};
use virtio_iommu_spec::{RequestType, Status};
use zerocopy::IntoBytes;

use super::raw::{RawDevice, RawReply};
use super::report::{expect, DeviceKind, Report};

const DOMAIN: u32 = 1;

fn head(t: RequestType) -> ReqHead {
    ReqHead {
        req_type: t as u8,
        reserved: [0; 3],
    }
}

fn attach(ep: u32, flags: u32, reserved: [u8; 4]) -> ReqAttach {
    ReqAttach {
        head: head(RequestType::Attach),
        domain: DOMAIN.into(),
        endpoint: ep.into(),
        flags: flags.into(),
        reserved,
    }
}

fn detach(ep: u32) -> ReqDetach {
    ReqDetach {
        head: head(RequestType::Detach),
        domain: DOMAIN.into(),
        endpoint: ep.into(),
        reserved: [0; 8],
    }
}

fn map(virt_start: u64, virt_end: u64, phys_start: u64, flags: u32) -> ReqMap {
    ReqMap {
        head: head(RequestType::Map),
        domain: DOMAIN.into(),
        virt_start: virt_start.into(),
        virt_end: virt_end.into(),
        phys_start: phys_start.into(),
        flags: flags.into(),
    }
}

fn unmap(virt_start: u64, virt_end: u64, reserved: [u8; 4]) -> ReqUnmap {
    ReqUnmap {
        head: head(RequestType::Unmap),
        domain: DOMAIN.into(),
        virt_start: virt_start.into(),
        virt_end: virt_end.into(),
        reserved,
    }
}

/// The reply a device gives when it writes `status` into a 4-byte writable part.
fn tail(status: Status) -> RawReply {
    RawReply {
        used: 4,
        writable: vec![status as u8, 0, 0, 0],
    }
}

/// One request with a 4-byte writable part; `want` is the exact reply.
fn send<T: Transport>(
    dev: &mut RawDevice<T>,
    what: &str,
    bytes: &[u8],
    want: RawReply,
) -> Result<(), String> {
    let got = dev.request(bytes, TAIL_SIZE)?;
    expect(&format!("{what} (request {})", hex(bytes)), got, want)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs the raw checks against a freshly reset device.
pub fn run<T: Transport>(
    r: &mut Report,
    dev: &mut RawDevice<T>,
    kind: DeviceKind,
    ep: u32,
    target: u64,
) {
    let ok = || tail(Status::Ok);
    let inval = || tail(Status::Inval);
    r.check(
        "raw-attach",
        send(dev, "ATTACH", attach(ep, 0, [0; 4]).as_bytes(), ok()),
    );
    r.check("raw-head-reserved-ignored", {
        let mut a = attach(ep, 0, [0; 4]);
        a.head.reserved = [0xff; 3];
        send(dev, "ATTACH with head.reserved set", a.as_bytes(), ok())
    });
    r.check("raw-unknown-type", {
        let mut bytes = [0u8; 20];
        bytes[0] = 0x20;
        // Specification: no reply, used length 0. QEMU: S_UNSUPP.
        let want = kind.pick(
            tail(Status::Unsupp),
            RawReply {
                used: 0,
                writable: vec![0; 4],
            },
        );
        send(dev, "type 0x20", &bytes, want)
    });
    r.check(
        "raw-attach-unknown-flags",
        send(
            dev,
            "ATTACH flags 2",
            attach(ep, 2, [0; 4]).as_bytes(),
            inval(),
        ),
    );
    r.check("raw-attach-reserved", {
        // Specification: MUST S_INVAL. QEMU does not look at the field.
        let want = kind.pick(ok(), inval());
        send(
            dev,
            "ATTACH reserved 1",
            attach(ep, 0, [1, 0, 0, 0]).as_bytes(),
            want,
        )
    });
    r.check(
        "raw-attach-short",
        send(
            dev,
            "ATTACH of 16 bytes",
            &attach(ep, 0, [0; 4]).as_bytes()[..16],
            inval(),
        ),
    );
    r.check(
        "raw-map-unknown-flags",
        send(
            dev,
            "MAP flags 8",
            map(0x1000, 0x1fff, target, 8).as_bytes(),
            inval(),
        ),
    );
    r.check("raw-map-unaligned", {
        // Specification: SHOULD S_RANGE. QEMU does not check alignment (and maps it).
        let m = map(0x1800, 0x27ff, target, 3);
        send(
            dev,
            "MAP 0x1800-0x27ff",
            m.as_bytes(),
            kind.pick(ok(), tail(Status::Range)),
        )
        .and_then(|()| {
            send(
                dev,
                "UNMAP 0x0-0xffff",
                unmap(0, 0xffff, [0; 4]).as_bytes(),
                ok(),
            )
        })
    });
    r.check("raw-map-too-long", {
        // 4 bytes past the MAP layout. QEMU reads what it needs and ignores the rest.
        let mut bytes = map(0x1000, 0x1fff, target, 3).as_bytes().to_vec();
        bytes.extend_from_slice(&[0; 4]);
        send(dev, "MAP + 4 bytes", &bytes, kind.pick(ok(), inval())).and_then(|()| {
            send(
                dev,
                "UNMAP 0x0-0xffff",
                unmap(0, 0xffff, [0; 4]).as_bytes(),
                ok(),
            )
        })
    });
    r.check("raw-unmap-reserved", {
        // Specification: MAY S_INVAL (this device does). QEMU ignores the field.
        let u = unmap(0, 0xfff, [1, 0, 0, 0]);
        send(
            dev,
            "UNMAP reserved 1",
            u.as_bytes(),
            kind.pick(ok(), inval()),
        )
    });
    r.check("raw-probe-short-area", {
        // A properties area smaller than probe_size. Specification: S_INVAL, nothing else
        // written (tail at the end of the writable part). QEMU writes as much of its reply as
        // fits, then S_DEVERR over the start, with used length 4: only those 4 bytes count.
        let p = ReqProbe {
            head: head(RequestType::Probe),
            endpoint: ep.into(),
            reserved: [0; 64],
        };
        dev.request(p.as_bytes(), 8).and_then(|got| match kind {
            DeviceKind::Qemu => expect(
                "PROBE with an 8-byte writable part (used, first 4 bytes)",
                (got.used, got.writable.get(..4)),
                (4, Some(&[Status::DevErr as u8, 0, 0, 0][..])),
            ),
            DeviceKind::Daemon => expect(
                "PROBE with an 8-byte writable part",
                got,
                RawReply {
                    used: 8,
                    writable: vec![0, 0, 0, 0, Status::Inval as u8, 0, 0, 0],
                },
            ),
        })
    });
    r.check(
        "raw-detach",
        send(dev, "DETACH", detach(ep).as_bytes(), ok()),
    );
}
