//! The engine with the emulated host: arbitrary request sequences (structured and raw), DMA
//! of simulated devices (translate, read/write, DMA parked behind page requests), guest-RAM
//! writes (the guest's own tables), event delivery, time, resets and config writes.
//!
//! Checked after every step:
//! - a MAP answered OK is in the dump and translates, for every endpoint attached to its domain,
//!   to its output address (through the host and its IOTLB);
//! - after an UNMAP answered OK no mapping of the domain meets the range and none of its
//!   addresses translates for an attached endpoint;
//! - a refused request (no reply, or a status other than OK) changes nothing: the dump, the
//!   counts, pending events and page requests are as before;
//! - counts and limits: the stats agree with the dump, no limit is passed, every mapping is
//!   aligned, inside the input range and off the reserved regions of its domain's endpoints;
//! - pending events stay bounded, and every record the device hands out parses;
//! - translations and DMA of endpoints attached without a table agree with a model computed
//!   from the dump (bypass, reserved regions, mappings and their permissions, guest RAM).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use vhost_device_iommu::engine::{
    DmaOp, DmaOutcome, DmaRequest, DmaTicket, Dump, EndpointConfig, Engine, EngineConfig, Limits,
    ReservedRegion,
};
use vhost_device_iommu::host::{Access, DmaAttrs, EmulatedHost};
use vhost_device_iommu::GuestRam;
use virtio_iommu_spec::event::FaultReason;
use virtio_iommu_spec::ext::{InvalCaches, InvalScope, PageRespCode, TableFormat, VtdFlags};
use virtio_iommu_spec::probe::ResvMemSubtype;
use virtio_iommu_spec::request::{
    Attach, AttachFlags, AttachTable, Detach, Invalidate, Map, MapFlags, PageResp, Probe,
    TableDesc, Unmap,
};
use virtio_iommu_spec::{Event, Features, Request, Status};
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic};

use crate::code::{Reader, Writer};

/// Guest RAM: a low region and a small one above 4 GiB (a gap in between).
pub const RAM: [(u64, usize); 2] = [(0, 0x10_0000), (0x1_0000_0000, 0x1_0000)];
/// A RESERVED (not MSI) region of endpoints 4..=7.
pub const RESERVED: (u64, u64) = (0x8_0000, 0x8_ffff);
/// Endpoint IDs the short endpoint code names: the four configured ranges, an ID no range
/// holds (12) and the one high ID.
pub const ENDPOINTS: [u32; 14] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x1_0000];
/// DMA tickets the harness keeps.
const MAX_TICKETS: usize = 16;

/// The device's configuration, chosen by the input's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Bypass at boot.
    pub boot_bypass: bool,
    /// Negotiate exactly `features` (else everything offered).
    pub raw_features: bool,
    /// Offer ATTACH_TABLE and PAGE_REQUEST.
    pub extensions: bool,
    /// Offer MMIO.
    pub mmio: bool,
    /// Input range `[0x1000, 2^48 − 1]` and domain range `[1, 64]` instead of everything.
    pub narrow: bool,
    /// A 64 KiB granule instead of 4 KiB.
    pub granule_64k: bool,
    /// The features negotiated when `raw_features`.
    pub features: u64,
}

/// The writable part a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The size the driver would use (4, or the PROBE area and 4).
    Exact,
    /// Any size.
    Len(u16),
}

/// One step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineOp {
    /// A well-formed request (any field values).
    Request(Request, Reply),
    /// Any readable bytes.
    Raw(Vec<u8>, u16),
    /// `DeviceDma::translate`.
    Translate {
        /// Endpoint.
        endpoint: u32,
        /// PASID.
        pasid: Option<u32>,
        /// Input address.
        iova: u64,
        /// Length (at least 1).
        len: u64,
        /// Write access.
        write: bool,
    },
    /// `DeviceDma::read` / `write` of up to 255 bytes.
    Dma {
        /// Endpoint.
        endpoint: u32,
        /// PASID.
        pasid: Option<u32>,
        /// Input address.
        iova: u64,
        /// Bytes.
        len: u8,
        /// A write (of `fill`, `fill + 1`, ...).
        write: bool,
        /// First byte written.
        fill: u8,
    },
    /// `DeviceDma::start`: a DMA that may wait for page requests.
    DmaStart {
        /// Endpoint.
        endpoint: u32,
        /// PASID.
        pasid: Option<u32>,
        /// Input address.
        iova: u64,
        /// Bytes.
        len: u8,
        /// A write.
        write: bool,
        /// Privileged (bit 0) and exec (bit 1).
        attrs: u8,
    },
    /// `DeviceDma::resume` of a kept ticket.
    Resume(u8),
    /// `DeviceDma::cancel` of a kept ticket.
    Cancel(u8),
    /// The guest writes its RAM (tables, buffers).
    GuestWrite(u64, Vec<u8>),
    /// The guest writes one little-endian 64-bit table entry.
    Entry(u64, u64),
    /// An event-queue buffer of this size.
    PopEvent(u8),
    /// Time passes (milliseconds); expired page-request groups complete.
    Advance(u16),
    /// Device reset.
    Reset,
    /// System reset.
    SystemReset,
    /// A config-space write.
    WriteConfig(u8, Vec<u8>),
    /// Features negotiated again.
    Negotiate(u64),
}

/// A whole input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineScenario {
    /// The configuration.
    pub header: Header,
    /// The steps.
    pub ops: Vec<EngineOp>,
}

// ---- The byte code ----------------------------------------------------------------------

/// The scenario's fields in the byte code. Small values come first in each code so that
/// mutations mostly name the few domains, endpoints and pages that interact.
trait EngineCode {
    fn domain(&mut self) -> u32;
    fn endpoint(&mut self) -> u32;
    fn addr(&mut self) -> u64;
    fn last(&mut self, start: u64) -> u64;
    fn reply(&mut self) -> Reply;
    fn request(&mut self) -> Request;
    fn op(&mut self) -> EngineOp;
}

/// Address codes (the tag byte mod 4).
const ADDR_LOW: u8 = 0;
const ADDR_MSI: u8 = 1;
const ADDR_TOP: u8 = 2;
const ADDR_RAW: u8 = 3;
/// Range-end codes (the tag byte mod 4).
const LAST_PAGES: u8 = 0;
const LAST_MAX: u8 = 1;
const LAST_BEFORE: u8 = 2;
const LAST_RAW: u8 = 3;

impl EngineCode for Reader<'_> {
    fn domain(&mut self) -> u32 {
        match self.u8() {
            b @ 0..=0xf7 => u32::from(b % 8),
            _ => self.u32(),
        }
    }

    fn endpoint(&mut self) -> u32 {
        match self.u8() {
            b @ 0..=0xef => ENDPOINTS[usize::from(b) % ENDPOINTS.len()],
            _ => self.u32(),
        }
    }

    fn addr(&mut self) -> u64 {
        match self.u8() % 4 {
            ADDR_LOW => u64::from(self.u16()) << 12,
            ADDR_MSI => 0xfee0_0000 - 0x8000 + (u64::from(self.u8()) << 12),
            ADDR_TOP => (u64::MAX << 12).wrapping_sub(u64::from(self.u16()) << 12),
            _ => self.u64(),
        }
    }

    fn last(&mut self, start: u64) -> u64 {
        match self.u8() % 4 {
            LAST_PAGES => start
                .saturating_add((u64::from(self.u8()) + 1) << 12)
                .saturating_sub(1)
                .max(start),
            LAST_MAX => u64::MAX,
            LAST_BEFORE => start.wrapping_sub(1),
            _ => self.u64(),
        }
    }

    fn reply(&mut self) -> Reply {
        let tag = self.u8();
        let len = self.u16();
        if tag & 1 == 0 {
            Reply::Exact
        } else {
            Reply::Len(len)
        }
    }

    fn request(&mut self) -> Request {
        match self.u8() % 9 {
            0 => {
                let domain = self.domain();
                let virt_start = self.addr();
                let virt_end = self.last(virt_start);
                let phys_start = self.addr();
                let flags = MapFlags::from_bits_retain(u32::from(self.u8() % 8));
                Request::Map(Map {
                    domain,
                    virt_start,
                    virt_end,
                    phys_start,
                    flags,
                })
            }
            1 => {
                let domain = self.domain();
                let virt_start = self.addr();
                let virt_end = self.last(virt_start);
                Request::Unmap(Unmap {
                    domain,
                    virt_start,
                    virt_end,
                })
            }
            2 => Request::Attach(Attach {
                domain: self.domain(),
                endpoint: self.endpoint(),
                flags: AttachFlags::from_bits_retain(u32::from(self.u8() % 4)),
            }),
            3 => Request::Detach(Detach {
                domain: self.domain(),
                endpoint: self.endpoint(),
            }),
            4 => Request::Probe(Probe {
                endpoint: self.endpoint(),
            }),
            5 => Request::AttachTable(AttachTable {
                domain: self.domain(),
                endpoint: self.endpoint(),
                table: TableDesc::Vtd {
                    pasid: u32::from(self.u8()),
                    addr_width: match self.u8() % 3 {
                        0 => 48,
                        1 => 57,
                        _ => u32::from(self.u8()),
                    },
                    pgd: self.addr(),
                    flags: VtdFlags::from_bits_retain(u64::from(self.u8() % 4)),
                },
            }),
            6 => Request::AttachTable(AttachTable {
                domain: self.domain(),
                endpoint: self.endpoint(),
                table: TableDesc::ArmSmmuV3 {
                    s1fmt: self.u8() % 4,
                    s1dss: self.u8() % 4,
                    s1contextptr: self.addr(),
                    s1cdmax: u32::from(self.u8() % 12),
                },
            }),
            7 => {
                let domain = self.domain();
                let caches = InvalCaches::from_bits_retain(u16::from(self.u8() % 8));
                let scope = match self.u8() % 3 {
                    0 => InvalScope::Domain,
                    1 => InvalScope::Pasid(u32::from(self.u8())),
                    _ => InvalScope::Range {
                        pasid: self.opt_u32(),
                        start: self.addr(),
                        nr_pages: u64::from(self.u16()),
                        granule: self.u8() % 70,
                    },
                };
                let archid = self.opt_u32().map(u64::from);
                Request::Invalidate(Invalidate {
                    domain,
                    caches,
                    scope,
                    archid,
                    leaf: self.bool(),
                })
            }
            _ => Request::PageResp(PageResp {
                endpoint: self.endpoint(),
                pasid: self.opt_u32(),
                group_id: u16::from(self.u8()),
                code: match self.u8() % 3 {
                    0 => PageRespCode::Success,
                    1 => PageRespCode::Invalid,
                    _ => PageRespCode::Failure,
                },
            }),
        }
    }

    fn op(&mut self) -> EngineOp {
        match self.u8() % 18 {
            0..=4 => {
                let r = self.request();
                EngineOp::Request(r, self.reply())
            }
            5 => EngineOp::Raw(self.vec(), self.u16()),
            6 => EngineOp::Translate {
                endpoint: self.endpoint(),
                pasid: self.opt_u32(),
                iova: self.addr(),
                len: u64::from(self.u16()) + 1,
                write: self.bool(),
            },
            7 => EngineOp::Dma {
                endpoint: self.endpoint(),
                pasid: self.opt_u32(),
                iova: self.addr(),
                len: self.u8(),
                write: self.bool(),
                fill: self.u8(),
            },
            8 => EngineOp::DmaStart {
                endpoint: self.endpoint(),
                pasid: self.opt_u32(),
                iova: self.addr(),
                len: self.u8(),
                write: self.bool(),
                attrs: self.u8(),
            },
            9 => EngineOp::Resume(self.u8()),
            10 => EngineOp::Cancel(self.u8()),
            11 => EngineOp::GuestWrite(u64::from(self.u32()), self.vec()),
            12 => EngineOp::Entry(u64::from(self.u32()), self.u64()),
            13 => EngineOp::PopEvent(self.u8()),
            14 => EngineOp::Advance(self.u16()),
            15 => match self.u8() % 4 {
                0 => EngineOp::SystemReset,
                1 => EngineOp::Negotiate(self.u64()),
                _ => EngineOp::Reset,
            },
            _ => EngineOp::WriteConfig(self.u8(), self.vec()),
        }
    }
}

/// What [`EngineCode`] reads. Values are written with the raw codes where the short ones
/// cannot express them.
trait EngineWrite {
    fn domain(&mut self, d: u32);
    fn endpoint(&mut self, e: u32);
    fn addr(&mut self, a: u64);
    fn last(&mut self, start: u64, last: u64);
    fn request(&mut self, r: &Request);
    fn op(&mut self, op: &EngineOp);
}

impl EngineWrite for Writer {
    fn domain(&mut self, d: u32) {
        if d < 8 {
            self.u8(u8::try_from(d).unwrap_or(0));
        } else {
            self.u8(0xff);
            self.u32(d);
        }
    }

    fn endpoint(&mut self, e: u32) {
        match ENDPOINTS.iter().position(|x| *x == e) {
            Some(i) => self.u8(u8::try_from(i).unwrap_or(0)),
            None => {
                self.u8(0xff);
                self.u32(e);
            }
        }
    }

    fn addr(&mut self, a: u64) {
        if a & 0xfff == 0 && a >> 12 <= u64::from(u16::MAX) {
            self.u8(ADDR_LOW);
            self.u16(u16::try_from(a >> 12).unwrap_or(0));
        } else {
            self.u8(ADDR_RAW);
            self.u64(a);
        }
    }

    fn last(&mut self, start: u64, last: u64) {
        let pages = last
            .checked_sub(start)
            .and_then(|d| d.checked_add(1))
            .filter(|n| n & 0xfff == 0 && (1..=256).contains(&(n >> 12)));
        if last == u64::MAX {
            self.u8(LAST_MAX);
        } else if let Some(n) = pages {
            self.u8(LAST_PAGES);
            self.u8(u8::try_from((n >> 12) - 1).unwrap_or(0));
        } else if last == start.wrapping_sub(1) {
            self.u8(LAST_BEFORE);
        } else {
            self.u8(LAST_RAW);
            self.u64(last);
        }
    }

    fn request(&mut self, r: &Request) {
        match r {
            Request::Map(m) => {
                self.u8(0);
                self.domain(m.domain);
                self.addr(m.virt_start);
                self.last(m.virt_start, m.virt_end);
                self.addr(m.phys_start);
                self.u8(u8::try_from(m.flags.bits() % 8).unwrap_or(0));
            }
            Request::Unmap(u) => {
                self.u8(1);
                self.domain(u.domain);
                self.addr(u.virt_start);
                self.last(u.virt_start, u.virt_end);
            }
            Request::Attach(a) => {
                self.u8(2);
                self.domain(a.domain);
                self.endpoint(a.endpoint);
                self.u8(u8::try_from(a.flags.bits() % 4).unwrap_or(0));
            }
            Request::Detach(d) => {
                self.u8(3);
                self.domain(d.domain);
                self.endpoint(d.endpoint);
            }
            Request::Probe(p) => {
                self.u8(4);
                self.endpoint(p.endpoint);
            }
            Request::AttachTable(a) => match a.table {
                TableDesc::Vtd {
                    pasid,
                    addr_width,
                    pgd,
                    flags,
                } => {
                    self.u8(5);
                    self.domain(a.domain);
                    self.endpoint(a.endpoint);
                    self.u8(u8::try_from(pasid).unwrap_or(u8::MAX));
                    match addr_width {
                        48 => self.u8(0),
                        57 => self.u8(1),
                        w => {
                            self.u8(2);
                            self.u8(u8::try_from(w).unwrap_or(u8::MAX));
                        }
                    }
                    self.addr(pgd);
                    self.u8(u8::try_from(flags.bits() % 4).unwrap_or(0));
                }
                TableDesc::ArmSmmuV3 {
                    s1fmt,
                    s1dss,
                    s1contextptr,
                    s1cdmax,
                } => {
                    self.u8(6);
                    self.domain(a.domain);
                    self.endpoint(a.endpoint);
                    self.u8(s1fmt);
                    self.u8(s1dss);
                    self.addr(s1contextptr);
                    self.u8(u8::try_from(s1cdmax).unwrap_or(u8::MAX));
                }
            },
            Request::Invalidate(i) => {
                self.u8(7);
                self.domain(i.domain);
                self.u8(u8::try_from(i.caches.bits() % 8).unwrap_or(0));
                match i.scope {
                    InvalScope::Domain => self.u8(0),
                    InvalScope::Pasid(p) => {
                        self.u8(1);
                        self.u8(u8::try_from(p).unwrap_or(u8::MAX));
                    }
                    InvalScope::Range {
                        pasid,
                        start,
                        nr_pages,
                        granule,
                    } => {
                        self.u8(2);
                        self.opt_u32(pasid);
                        self.addr(start);
                        self.u16(u16::try_from(nr_pages).unwrap_or(u16::MAX));
                        self.u8(granule);
                    }
                }
                self.opt_u32(i.archid.and_then(|a| u32::try_from(a).ok()));
                self.bool(i.leaf);
            }
            Request::PageResp(p) => {
                self.u8(8);
                self.endpoint(p.endpoint);
                self.opt_u32(p.pasid);
                self.u8(u8::try_from(p.group_id).unwrap_or(u8::MAX));
                self.u8(match p.code {
                    PageRespCode::Success => 0,
                    PageRespCode::Invalid => 1,
                    PageRespCode::Failure => 2,
                });
            }
        }
    }

    fn op(&mut self, op: &EngineOp) {
        match op {
            EngineOp::Request(r, reply) => {
                self.u8(0);
                self.request(r);
                match reply {
                    Reply::Exact => {
                        self.u8(0);
                        self.u16(0);
                    }
                    Reply::Len(n) => {
                        self.u8(1);
                        self.u16(*n);
                    }
                }
            }
            EngineOp::Raw(bytes, wlen) => {
                self.u8(5);
                self.vec(bytes);
                self.u16(*wlen);
            }
            EngineOp::Translate {
                endpoint,
                pasid,
                iova,
                len,
                write,
            } => {
                self.u8(6);
                self.endpoint(*endpoint);
                self.opt_u32(*pasid);
                self.addr(*iova);
                self.u16(u16::try_from(len.saturating_sub(1)).unwrap_or(u16::MAX));
                self.bool(*write);
            }
            EngineOp::Dma {
                endpoint,
                pasid,
                iova,
                len,
                write,
                fill,
            } => {
                self.u8(7);
                self.endpoint(*endpoint);
                self.opt_u32(*pasid);
                self.addr(*iova);
                self.u8(*len);
                self.bool(*write);
                self.u8(*fill);
            }
            EngineOp::DmaStart {
                endpoint,
                pasid,
                iova,
                len,
                write,
                attrs,
            } => {
                self.u8(8);
                self.endpoint(*endpoint);
                self.opt_u32(*pasid);
                self.addr(*iova);
                self.u8(*len);
                self.bool(*write);
                self.u8(*attrs);
            }
            EngineOp::Resume(i) => {
                self.u8(9);
                self.u8(*i);
            }
            EngineOp::Cancel(i) => {
                self.u8(10);
                self.u8(*i);
            }
            EngineOp::GuestWrite(gpa, data) => {
                self.u8(11);
                self.u32(u32::try_from(*gpa).unwrap_or(u32::MAX));
                self.vec(data);
            }
            EngineOp::Entry(gpa, v) => {
                self.u8(12);
                self.u32(u32::try_from(*gpa).unwrap_or(u32::MAX));
                self.u64(*v);
            }
            EngineOp::PopEvent(n) => {
                self.u8(13);
                self.u8(*n);
            }
            EngineOp::Advance(ms) => {
                self.u8(14);
                self.u16(*ms);
            }
            EngineOp::SystemReset => {
                self.u8(15);
                self.u8(0);
            }
            EngineOp::Negotiate(f) => {
                self.u8(15);
                self.u8(1);
                self.u64(*f);
            }
            EngineOp::Reset => {
                self.u8(15);
                self.u8(2);
            }
            EngineOp::WriteConfig(off, data) => {
                self.u8(16);
                self.u8(*off);
                self.vec(data);
            }
        }
    }
}

impl EngineScenario {
    /// Decodes the byte code: a flag byte and the raw features, then ops until the input
    /// ends. Every input is a scenario.
    #[must_use]
    pub fn decode(data: &[u8]) -> Self {
        let mut r = Reader::new(data);
        let flags = r.u8();
        let features = r.u64();
        let header = Header {
            boot_bypass: flags & 1 != 0,
            raw_features: flags & 2 != 0,
            extensions: flags & 4 != 0,
            mmio: flags & 8 != 0,
            narrow: flags & 16 != 0,
            granule_64k: flags & 32 != 0,
            features,
        };
        let mut ops = Vec::new();
        while !r.is_empty() {
            ops.push(r.op());
        }
        EngineScenario { header, ops }
    }

    /// The byte code of this scenario.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let h = &self.header;
        let mut w = Writer::default();
        w.u8(u8::from(h.boot_bypass)
            | u8::from(h.raw_features) << 1
            | u8::from(h.extensions) << 2
            | u8::from(h.mmio) << 3
            | u8::from(h.narrow) << 4
            | u8::from(h.granule_64k) << 5);
        w.u64(h.features);
        for op in &self.ops {
            w.op(op);
        }
        w.finish()
    }
}

// ---- The device under test ------------------------------------------------------------

/// The engine configuration of a header.
#[must_use]
pub fn config(h: &Header) -> EngineConfig {
    let msi = ReservedRegion::x86_msi();
    let resv = ReservedRegion {
        start: RESERVED.0,
        last: RESERVED.1,
        kind: ResvMemSubtype::Reserved,
    };
    let ep = |ids, reserved| EndpointConfig {
        ids,
        reserved,
        pasid_bits: 0,
        page_requests: false,
        table_formats: Vec::new(),
    };
    // Small limits, so that sequences reach them; limits added later keep their defaults.
    #[allow(clippy::needless_update)]
    let limits = Limits {
        max_mappings_per_domain: 16,
        max_domains: 4,
        max_attached_endpoints: 6,
        max_pending_events: 8,
        max_page_request_groups: 2,
        max_page_request_groups_total: 3,
        page_request_timeout: Duration::from_millis(1000),
        ..Limits::default()
    };
    let sva = EndpointConfig {
        ids: 8..=11,
        reserved: vec![msi],
        pasid_bits: 8,
        page_requests: true,
        table_formats: vec![TableFormat::ArmSmmuV3, TableFormat::Vtd],
    };
    EngineConfig {
        page_size_mask: if h.granule_64k {
            0xffff_ffff_ffff_0000
        } else {
            0xffff_ffff_ffff_f000
        },
        input_range: if h.narrow {
            (0x1000, (1 << 48) - 1)
        } else {
            (0, u64::MAX)
        },
        domain_range: if h.narrow { (1, 64) } else { (0, u32::MAX) },
        probe_size: 512,
        boot_bypass: h.boot_bypass,
        endpoints: vec![
            ep(0..=3, vec![msi]),
            ep(4..=7, vec![resv, msi]),
            sva,
            ep(0x1_0000..=0x1_0000, Vec::new()),
        ],
        limits,
        offer_mmio: h.mmio,
        offer_attach_table: h.extensions,
        offer_page_request: h.extensions,
    }
}

/// Fresh guest RAM (zeroed).
#[must_use]
pub fn guest_ram() -> GuestRam {
    let ranges: Vec<_> = RAM.iter().map(|&(a, n)| (GuestAddress(a), n)).collect();
    GuestRam::from_ranges(&ranges).expect("guest RAM")
}

/// What a refused request must leave as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    dump: Dump,
    counts: [u64; 4],
    pending: usize,
    outstanding: u64,
    parked: usize,
}

fn snapshot(v: &mut Engine) -> Snapshot {
    let s = v.stats();
    Snapshot {
        dump: v.dump(),
        counts: [s.domains, s.mappings, s.attached_endpoints, s.tables],
        pending: v.pending_events(),
        outstanding: s.page_requests.outstanding,
        parked: v.device_dma().parked(),
    }
}

/// What a scenario achieved (the seeds' tests check that they reach what they were built for).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EngineOutcome {
    /// Requests answered S_OK.
    pub ok: usize,
    /// Requests refused (another status, or no reply).
    pub refused: usize,
    /// Requests refused with S_NOMEM.
    pub nomem: usize,
    /// Translations and DMA (immediate or parked) that reached memory.
    pub reached: usize,
    /// DMAs parked behind a page request.
    pub parked: usize,
    /// Event records handed out (faults and page requests).
    pub events: usize,
    /// Page requests among them.
    pub page_requests: usize,
}

/// The harness: the engine, guest RAM, and what the checks need to remember.
struct Harness {
    out: EngineOutcome,
    v: Engine,
    cfg: EngineConfig,
    mem: GuestRam,
    granule: u64,
    /// Endpoints with an SMMUv3 CD table bound: their DMA without PASID goes through it, not
    /// through the domain's mappings.
    cd_bound: BTreeSet<u32>,
    tickets: Vec<DmaTicket>,
    start: Instant,
    now: Instant,
}

/// What the model expects of one byte's translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Translates to this address.
    To(u64),
    /// Faults with this reason.
    Fault(FaultReason),
    /// The model does not say (tables, PASIDs).
    Unknown,
}

impl Harness {
    fn new(h: &Header) -> Self {
        let cfg = config(h);
        let mut v = Engine::new(cfg.clone(), Box::new(EmulatedHost::new())).expect("valid config");
        let features = if h.raw_features {
            Features::from_bits_retain(h.features)
        } else {
            v.offered_features()
        };
        v.negotiate(features);
        let mem = guest_ram();
        v.set_guest_memory(GuestMemoryAtomic::new(mem.clone()));
        let now = Instant::now();
        Harness {
            out: EngineOutcome::default(),
            v,
            granule: 1 << cfg.page_size_mask.trailing_zeros(),
            cfg,
            mem,
            cd_bound: BTreeSet::new(),
            tickets: Vec::new(),
            start: now,
            now,
        }
    }

    fn endpoint_config(&self, ep: u32) -> Option<&EndpointConfig> {
        self.cfg.endpoints.iter().find(|e| e.ids.contains(&ep))
    }

    fn regions(&self, ep: u32) -> &[ReservedRegion] {
        self.endpoint_config(ep).map_or(&[], |e| &e.reserved[..])
    }

    /// The model's translation of `iova` for `ep` (no PASID).
    fn expect(&self, dump: &Dump, ep: u32, iova: u64, access: Access) -> Expect {
        if self.endpoint_config(ep).is_none() {
            return Expect::Fault(FaultReason::Unknown);
        }
        if self.cd_bound.contains(&ep) {
            return Expect::Unknown;
        }
        let Some(d) = dump.domains.iter().find(|d| d.endpoints.contains(&ep)) else {
            return if dump.bypass {
                Expect::To(iova)
            } else {
                Expect::Fault(FaultReason::Domain)
            };
        };
        if d.bypass {
            return Expect::To(iova);
        }
        if let Some(r) = self
            .regions(ep)
            .iter()
            .find(|r| r.start <= iova && iova <= r.last)
        {
            return match r.kind {
                ResvMemSubtype::Msi => Expect::To(iova),
                ResvMemSubtype::Reserved => Expect::Fault(FaultReason::Mapping),
            };
        }
        let need = match access {
            Access::Read => MapFlags::READ,
            Access::Write => MapFlags::WRITE,
        };
        match d
            .mappings
            .iter()
            .find(|m| m.virt_start <= iova && iova <= m.virt_last)
        {
            Some(m) if MapFlags::from_bits_retain(m.flags).contains(need) => {
                Expect::To(m.phys_start + (iova - m.virt_start))
            }
            _ => Expect::Fault(FaultReason::Mapping),
        }
    }

    fn in_ram(&self, gpa: u64) -> bool {
        RAM.iter().any(|&(a, n)| gpa >= a && gpa - a < n as u64)
    }

    fn request(&mut self, r: &Request, reply: Reply) {
        let enc = r.encode();
        let wlen = match reply {
            Reply::Exact => r.writable_len(self.v.config_space().probe_size.get()),
            Reply::Len(n) => usize::from(n),
        };
        let before = snapshot(&mut self.v);
        let domain_before = match r {
            Request::Attach(a) => self.v.domain_of(a.endpoint),
            _ => None,
        };
        let mut w = vec![0u8; wlen];
        let used = self.v.handle_request(enc.as_bytes(), &mut w);
        let status = self.check_reply(&w, used);
        self.count(status);
        if status != Some(Status::Ok) {
            assert_eq!(
                snapshot(&mut self.v),
                before,
                "refused {r:?} ({status:?}) changed the state"
            );
            return;
        }
        self.after_ok(r, &before, domain_before);
    }

    /// The checks after a request answered OK, and the table bookkeeping.
    fn after_ok(&mut self, r: &Request, before: &Snapshot, domain_before: Option<u32>) {
        match r {
            Request::Map(m) => self.check_mapped(m),
            Request::Unmap(u) => self.check_unmapped(u, &before.dump),
            Request::Attach(a) => {
                if domain_before != Some(a.domain) {
                    self.cd_bound.remove(&a.endpoint);
                }
                assert_eq!(self.v.domain_of(a.endpoint), Some(a.domain));
            }
            Request::Detach(d) => {
                self.cd_bound.remove(&d.endpoint);
                assert_eq!(self.v.domain_of(d.endpoint), None);
            }
            Request::AttachTable(a) => {
                if matches!(a.table, TableDesc::ArmSmmuV3 { .. }) {
                    self.cd_bound.insert(a.endpoint);
                }
                assert_eq!(snapshot(&mut self.v).dump, before.dump);
            }
            Request::Probe(_) | Request::Invalidate(_) => {
                assert_eq!(snapshot(&mut self.v), *before, "{r:?} changed the state");
            }
            Request::PageResp(_) => {
                assert_eq!(snapshot(&mut self.v).dump, before.dump);
            }
        }
    }

    fn count(&mut self, status: Option<Status>) {
        match status {
            Some(Status::Ok) => self.out.ok += 1,
            Some(Status::NoMem) => {
                self.out.nomem += 1;
                self.out.refused += 1;
            }
            _ => self.out.refused += 1,
        }
    }

    /// The used length is 0 (nothing written) or the whole writable part with a known status
    /// in its last 4 bytes; returns the status.
    fn check_reply(&self, w: &[u8], used: usize) -> Option<Status> {
        if used == 0 {
            assert!(w.iter().all(|b| *b == 0), "no reply, yet bytes written");
            return None;
        }
        assert_eq!(used, w.len(), "a reply fills the writable part");
        let tail = &w[used - 4..];
        assert_eq!(&tail[1..], &[0, 0, 0], "tail reserved bytes");
        Some(Status::try_from(tail[0]).expect("a status the spec defines"))
    }

    fn endpoints_of(&self, domain: u32) -> Vec<u32> {
        self.v
            .dump()
            .domains
            .iter()
            .find(|d| d.id == domain)
            .map(|d| d.endpoints.clone())
            .unwrap_or_default()
    }

    /// A MAP answered OK: in the dump, and it translates for every attached endpoint.
    fn check_mapped(&mut self, m: &Map) {
        let dump = self.v.dump();
        let d = dump
            .domains
            .iter()
            .find(|d| d.id == m.domain)
            .expect("MAP OK on a live domain");
        assert!(
            d.mappings.iter().any(|x| x.virt_start == m.virt_start
                && x.virt_last == m.virt_end
                && x.phys_start == m.phys_start
                && x.flags == m.flags.bits()),
            "MAP OK but not in the dump: {m:?}"
        );
        let access = if m.flags.contains(MapFlags::READ) {
            Access::Read
        } else if m.flags.contains(MapFlags::WRITE) {
            Access::Write
        } else {
            return;
        };
        let size = (m.virt_end - m.virt_start).wrapping_add(1);
        for ep in self.endpoints_of(m.domain) {
            if self.cd_bound.contains(&ep) {
                continue;
            }
            let len = if size == 0 { u64::MAX } else { size };
            let t = self
                .v
                .host_mut()
                .translate(ep, None, m.virt_start, len, access)
                .unwrap_or_else(|f| panic!("MAP OK {m:?} does not translate for {ep}: {f:?}"));
            assert_eq!((t.gpa, t.len), (m.phys_start, len), "{m:?} for {ep}");
            let t = self
                .v
                .host_mut()
                .translate(ep, None, m.virt_end, 1, access)
                .unwrap_or_else(|f| panic!("MAP OK {m:?}: last byte faults for {ep}: {f:?}"));
            assert_eq!(t.gpa, m.phys_start + (m.virt_end - m.virt_start));
        }
    }

    /// An UNMAP answered OK: nothing of the range is left, nothing in it translates.
    fn check_unmapped(&mut self, u: &Unmap, before: &Dump) {
        let dump = self.v.dump();
        let Some(d) = dump.domains.iter().find(|d| d.id == u.domain) else {
            return;
        };
        assert!(
            d.mappings
                .iter()
                .all(|m| m.virt_last < u.virt_start || m.virt_start > u.virt_end),
            "UNMAP OK {u:?} left a mapping in the range"
        );
        let mut points = vec![u.virt_start, u.virt_end];
        if let Some(old) = before.domains.iter().find(|x| x.id == u.domain) {
            for m in &old.mappings {
                if m.virt_start >= u.virt_start && m.virt_last <= u.virt_end {
                    points.push(m.virt_start);
                    points.push(m.virt_last);
                }
            }
        }
        for ep in d.endpoints.clone() {
            if self.cd_bound.contains(&ep) {
                continue;
            }
            let regions = self.regions(ep).to_vec();
            for &p in &points {
                if regions.iter().any(|r| r.start <= p && p <= r.last) {
                    continue;
                }
                for access in [Access::Read, Access::Write] {
                    let t = self.v.host_mut().translate(ep, None, p, 1, access);
                    assert!(t.is_err(), "{p:#x} translates for {ep} after {u:?}: {t:?}");
                }
            }
        }
    }

    fn translate(&mut self, ep: u32, pasid: Option<u32>, iova: u64, len: u64, write: bool) {
        let access = if write { Access::Write } else { Access::Read };
        let dump = self.v.dump();
        let expect = match pasid {
            None => self.expect(&dump, ep, iova, access),
            Some(_) if self.endpoint_config(ep).is_none() => Expect::Fault(FaultReason::Unknown),
            Some(_) => Expect::Unknown,
        };
        let got = self.v.device_dma().translate(ep, pasid, iova, len, access);
        self.out.reached += usize::from(got.is_ok());
        match (expect, got) {
            (Expect::To(gpa), Ok(t)) => {
                assert_eq!(t.gpa, gpa, "translate {ep} {iova:#x}");
                assert!(t.len >= 1 && t.len <= len, "{t:?} for {len}");
            }
            (Expect::Fault(reason), Err(f)) => {
                assert_eq!(f.reason, reason, "translate {ep} {iova:#x}");
                assert_eq!(f.endpoint, ep);
            }
            (Expect::Unknown, Ok(t)) => assert!(t.len >= 1 && t.len <= len),
            (Expect::Unknown, Err(_)) => {}
            (e, g) => panic!("translate {ep} {pasid:?} {iova:#x}: model {e:?}, device {g:?}"),
        }
    }

    #[allow(clippy::too_many_arguments)] // one DMA's description
    fn dma(&mut self, ep: u32, pasid: Option<u32>, iova: u64, len: u8, write: bool, fill: u8) {
        let access = if write { Access::Write } else { Access::Read };
        let dump = self.v.dump();
        let n = usize::from(len);
        // Per byte: where the model says it goes (None: it faults or is not modelled).
        let mut targets = Vec::with_capacity(n);
        // Even an empty DMA of an endpoint no range holds fails.
        let known = self.endpoint_config(ep).is_some();
        let mut modelled = pasid.is_none();
        for i in 0..n {
            let Some(a) = iova.checked_add(i as u64) else {
                targets.push(None);
                continue;
            };
            match self.expect(&dump, ep, a, access) {
                Expect::To(gpa) if self.in_ram(gpa) => targets.push(Some(gpa)),
                Expect::Unknown => {
                    modelled = false;
                    targets.push(None);
                }
                _ => targets.push(None),
            }
        }
        let data: Vec<u8> = (0..n).map(|i| fill.wrapping_add(i as u8)).collect();
        if write {
            let r = self.v.device_dma().write(ep, pasid, iova, &data);
            self.out.reached += usize::from(r.is_ok());
            if !known {
                assert!(r.is_err(), "DMA of unknown endpoint {ep}");
            } else if modelled && targets.iter().all(Option::is_some) {
                r.unwrap_or_else(|f| panic!("DMA write {ep} {iova:#x}+{n}: {f:?}"));
                // Later bytes win where two bytes reach the same address.
                let mut last = std::collections::BTreeMap::new();
                for (i, t) in targets.iter().enumerate() {
                    last.insert(t.expect("all translate"), data[i]);
                }
                for (gpa, b) in last {
                    let got: u8 = self.mem.read_obj(GuestAddress(gpa)).expect("in RAM");
                    assert_eq!(got, b, "DMA write to {gpa:#x}");
                }
            } else if modelled {
                assert!(r.is_err(), "DMA write {ep} {iova:#x}+{n} should fault");
            }
        } else {
            let mut buf = vec![0u8; n];
            let r = self.v.device_dma().read(ep, pasid, iova, &mut buf);
            self.out.reached += usize::from(r.is_ok());
            if !known {
                assert!(r.is_err(), "DMA of unknown endpoint {ep}");
            } else if modelled && targets.iter().all(Option::is_some) {
                r.unwrap_or_else(|f| panic!("DMA read {ep} {iova:#x}+{n}: {f:?}"));
                for (i, t) in targets.iter().enumerate() {
                    let gpa = t.expect("all translate");
                    let want: u8 = self.mem.read_obj(GuestAddress(gpa)).expect("in RAM");
                    assert_eq!(buf[i], want, "DMA read of {gpa:#x}");
                }
            } else if modelled {
                assert!(r.is_err(), "DMA read {ep} {iova:#x}+{n} should fault");
            }
        }
    }

    fn dma_start(&mut self, req: DmaRequest) {
        let n = match &req.op {
            DmaOp::Read(n) => *n,
            DmaOp::Write(d) => d.len(),
        };
        let now = self.now;
        let o = self.v.device_dma().start(req, now);
        self.outcome(o, n);
    }

    fn outcome(&mut self, o: DmaOutcome, n: usize) {
        match o {
            DmaOutcome::Done(b) => {
                assert!(b.is_empty() || b.len() == n);
                self.out.reached += 1;
            }
            DmaOutcome::Fault(_) => {}
            DmaOutcome::Pending(t) => {
                self.out.parked += 1;
                self.keep(t);
            }
        }
    }

    fn keep(&mut self, t: DmaTicket) {
        if self.tickets.len() >= MAX_TICKETS {
            let old = self.tickets.remove(0);
            self.v.device_dma().cancel(old);
        }
        self.tickets.push(t);
    }

    fn resume(&mut self, i: u8) {
        if self.tickets.is_empty() {
            return;
        }
        let t = self.tickets.remove(usize::from(i) % self.tickets.len());
        let now = self.now;
        let resumed = self.v.device_dma().resume(t, now);
        if let Some(o) = resumed {
            // Only the reached/parked counts matter here: a read's length was checked at start.
            self.outcome(
                match o {
                    DmaOutcome::Done(_) => DmaOutcome::Done(Vec::new()),
                    other => other,
                },
                0,
            );
        }
    }

    fn cancel(&mut self, i: u8) {
        if self.tickets.is_empty() {
            return;
        }
        let t = self.tickets.remove(usize::from(i) % self.tickets.len());
        self.v.device_dma().cancel(t);
        // A cancelled ticket is gone.
        let now = self.now;
        assert_eq!(self.v.device_dma().resume(t, now), None);
    }

    fn pop_event(&mut self, n: u8) {
        let before = self.v.pending_events();
        match self.v.pop_event(usize::from(n)) {
            Some(e) => {
                let b = e.as_bytes();
                assert!(
                    b.len() == 24 || b.len() == 48,
                    "record of {} bytes",
                    b.len()
                );
                assert!(b.len() <= usize::from(n), "record larger than the buffer");
                let ev = Event::parse(b).expect("the device's records parse");
                self.out.events += 1;
                if let Event::PageRequest(_) = ev {
                    assert_eq!(b.len(), 48);
                    self.out.page_requests += 1;
                }
                assert!(self.v.pending_events() < before);
            }
            None => {
                if n >= 24 {
                    // Only undeliverable page requests may be skipped: with a 24-byte or
                    // larger buffer, a pending fault is always delivered.
                    assert!(
                        self.v.pending_events() <= before,
                        "events appeared while popping"
                    );
                }
            }
        }
    }

    fn write_config(&mut self, off: u8, data: &[u8]) {
        let before = self.v.config_space();
        let r = self.v.write_config(u32::from(off), data);
        let after = self.v.config_space();
        if r.is_err() {
            assert_eq!(before, after, "refused config write changed the config");
        } else {
            assert!(after.bypass <= 1);
            let mut b = before;
            b.bypass = after.bypass;
            assert_eq!(b, after, "only bypass is writable");
        }
    }

    fn reset(&mut self, system: bool) {
        let bypass = self.v.config_space().bypass;
        if system {
            self.v.system_reset();
            assert_eq!(self.v.config_space().bypass, u8::from(self.cfg.boot_bypass));
        } else {
            self.v.reset();
            assert_eq!(self.v.config_space().bypass, bypass, "bypass is sticky");
        }
        self.cd_bound.clear();
        let s = self.v.stats();
        assert!(self.v.dump().domains.is_empty());
        assert_eq!(
            (s.domains, s.mappings, s.attached_endpoints, s.tables),
            (0, 0, 0, 0)
        );
        assert_eq!(self.v.pending_events(), 0);
        assert_eq!(s.page_requests.outstanding, 0);
    }

    fn step(&mut self, op: &EngineOp) {
        match op {
            EngineOp::Request(r, reply) => self.request(r, *reply),
            EngineOp::Raw(bytes, wlen) => {
                let before = snapshot(&mut self.v);
                let mut w = vec![0u8; usize::from(*wlen)];
                let used = self.v.handle_request(bytes, &mut w);
                let status = self.check_reply(&w, used);
                self.count(status);
                if status != Some(Status::Ok) {
                    assert_eq!(snapshot(&mut self.v), before, "refused raw request");
                } else if let Ok(r) = Request::parse(bytes) {
                    // A raw request the engine understood gets the same checks.
                    let domain_before = match r {
                        Request::Attach(a) => before
                            .dump
                            .domains
                            .iter()
                            .find(|d| d.endpoints.contains(&a.endpoint))
                            .map(|d| d.id),
                        _ => None,
                    };
                    self.after_ok(&r, &before, domain_before);
                }
            }
            EngineOp::Translate {
                endpoint,
                pasid,
                iova,
                len,
                write,
            } => self.translate(*endpoint, *pasid, *iova, (*len).max(1), *write),
            EngineOp::Dma {
                endpoint,
                pasid,
                iova,
                len,
                write,
                fill,
            } => self.dma(*endpoint, *pasid, *iova, *len, *write, *fill),
            EngineOp::DmaStart {
                endpoint,
                pasid,
                iova,
                len,
                write,
                attrs,
            } => {
                let n = usize::from(*len);
                self.dma_start(DmaRequest {
                    endpoint: *endpoint,
                    pasid: *pasid,
                    iova: *iova,
                    op: if *write {
                        DmaOp::Write(vec![0xa5; n])
                    } else {
                        DmaOp::Read(n)
                    },
                    attrs: DmaAttrs {
                        privileged: attrs & 1 != 0,
                        exec: attrs & 2 != 0,
                    },
                });
            }
            EngineOp::Resume(i) => self.resume(*i),
            EngineOp::Cancel(i) => self.cancel(*i),
            EngineOp::GuestWrite(gpa, data) => {
                // Writes that leave RAM are the guest's problem, not the device's.
                let _ = self.mem.write_slice(data, GuestAddress(*gpa));
            }
            EngineOp::Entry(gpa, v) => {
                let _ = self.mem.write_slice(&v.to_le_bytes(), GuestAddress(*gpa));
            }
            EngineOp::PopEvent(n) => self.pop_event(*n),
            EngineOp::Advance(ms) => {
                self.now += Duration::from_millis(u64::from(*ms));
                let now = self.now;
                self.v.expire_page_requests(now);
            }
            EngineOp::Reset => self.reset(false),
            EngineOp::SystemReset => self.reset(true),
            EngineOp::WriteConfig(off, data) => self.write_config(*off, data),
            EngineOp::Negotiate(f) => {
                self.v.negotiate(Features::from_bits_retain(*f));
                assert!(self.v.offered_features().contains(self.v.negotiated()));
            }
        }
    }

    /// Counts and limits, and the dump's own consistency.
    fn check_state(&mut self) {
        let dump = self.v.dump();
        let s = self.v.stats();
        let l = &self.cfg.limits;
        let mut endpoints = BTreeSet::new();
        let mut mappings = 0u64;
        let mut ids = Vec::new();
        for d in &dump.domains {
            ids.push(d.id);
            assert!(
                d.id >= self.cfg.domain_range.0 && d.id <= self.cfg.domain_range.1,
                "domain {} outside the range",
                d.id
            );
            assert!(!d.endpoints.is_empty(), "domain {} without endpoints", d.id);
            assert!(d.mappings.len() <= l.max_mappings_per_domain);
            assert!(!d.bypass || d.mappings.is_empty());
            let regions: Vec<ReservedRegion> = d
                .endpoints
                .iter()
                .flat_map(|e| self.regions(*e).iter().copied())
                .collect();
            for ep in &d.endpoints {
                assert!(self.endpoint_config(*ep).is_some(), "unknown endpoint {ep}");
                assert!(endpoints.insert(*ep), "endpoint {ep} in two domains");
                assert_eq!(self.v.domain_of(*ep), Some(d.id));
            }
            for (i, m) in d.mappings.iter().enumerate() {
                assert!(m.virt_start <= m.virt_last);
                assert!(
                    m.virt_start >= self.cfg.input_range.0 && m.virt_last <= self.cfg.input_range.1
                );
                let g = self.granule;
                assert_eq!(m.virt_start % g, 0);
                assert_eq!(m.phys_start % g, 0);
                assert_eq!(m.virt_last.wrapping_add(1) % g, 0);
                assert!(m
                    .phys_start
                    .checked_add(m.virt_last - m.virt_start)
                    .is_some());
                if let Some(next) = d.mappings.get(i + 1) {
                    assert!(
                        m.virt_last < next.virt_start,
                        "mappings overlap or unsorted"
                    );
                }
                assert!(
                    regions
                        .iter()
                        .all(|r| !r.overlaps(m.virt_start, m.virt_last)),
                    "mapping {m:?} of domain {} on a reserved region",
                    d.id
                );
            }
            mappings += d.mappings.len() as u64;
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "domains unsorted");
        assert_eq!(s.domains, dump.domains.len() as u64);
        assert_eq!(s.mappings, mappings);
        assert_eq!(s.attached_endpoints, endpoints.len() as u64);
        assert!(dump.domains.len() <= l.max_domains);
        assert!(endpoints.len() <= l.max_attached_endpoints);
        assert!(self.v.pending_events() <= l.max_pending_events);
        assert!(s.page_requests.outstanding <= l.max_page_request_groups_total as u64);
        for ep in ENDPOINTS {
            assert!(self.v.outstanding_page_requests(ep) <= l.max_page_request_groups);
        }
        assert!(self.v.device_dma().parked() <= l.max_page_request_groups_total);
        // A table per PASID at most, and only on attached endpoints.
        assert!(s.tables <= (endpoints.len() as u64) * 257);
        assert!(self.now >= self.start);
    }
}

/// Runs one scenario; panics on a broken invariant.
pub fn run(s: &EngineScenario) -> EngineOutcome {
    let mut h = Harness::new(&s.header);
    h.check_state();
    for op in &s.ops {
        h.step(op);
        h.check_state();
    }
    h.out
}
