//! The emulated host's guest table walkers over arbitrary guest memory: the AArch64 and x86-64
//! stage-1 walks, the SMMUv3 CD lookup, and the nested-table store with its caches.
//!
//! Checked for every walk:
//! - it reads at most its walker's `MAX_READS` entries (a self-referencing table terminates);
//! - a leaf is a 4 KiB, 2 MiB or 1 GiB page that covers the address asked, with its input and
//!   output addresses aligned to its size, its output inside the format's output bits, and
//!   permissions the format can express;
//! - the walk is the same from every address of the leaf (what the IOTLB relies on: it caches
//!   one leaf for the whole page);
//! - a CD that decodes has the fields the format allows;
//! - `Nested::translate` (cached) agrees with the walkers called directly while guest memory
//!   is unchanged since the caches were last emptied.

use vhost_device_iommu::host::emulated::nested::{self, Nested, Route};
use vhost_device_iommu::host::emulated::s1tlb::Tag;
use vhost_device_iommu::host::emulated::walk::{
    AccessReq, CountingMemory, Leaf, LeafPerms, WalkError,
};
use vhost_device_iommu::host::emulated::{aarch64, smmuv3_cd, x86};
use vhost_device_iommu::host::TableId;
use vhost_device_iommu::GuestRam;
use virtio_iommu_spec::ext::{InvalCaches, InvalScope, VtdFlags};
use virtio_iommu_spec::formats::aarch64::{OUTPUT_BITS as ARM_OUTPUT_BITS, T0SZ_RANGE};
use virtio_iommu_spec::formats::cd_table::CD1_TTB0_RES0;
use virtio_iommu_spec::formats::x86::OUTPUT_BITS as X86_OUTPUT_BITS;
use virtio_iommu_spec::request::{Invalidate, TableDesc};
use vm_memory::{Bytes, GuestAddress};

use crate::code::{Reader, Writer};

/// Guest RAM of the walks: 64 KiB at 0 and 8 KiB above 4 GiB (a gap in between).
pub const RAM: [(u64, usize); 2] = [(0, 0x1_0000), (0x1_0000_0000, 0x2000)];
/// Tables bound in the nested store at most (more Bind ops are ignored).
const MAX_BOUND: usize = 8;

/// One step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalkOp {
    /// Writes a little-endian `u64` at any address (dropped where it is not all in RAM).
    Entry(u64, u64),
    /// `aarch64::walk`.
    Arm {
        /// Table root.
        ttb0: u64,
        /// T0SZ (any value: outside 16..=39 is malformed).
        t0sz: u8,
        /// Input address.
        va: u64,
    },
    /// `x86::walk`.
    X86 {
        /// Table root.
        pgd: u64,
        /// Input width (48 and 57 are valid).
        addr_width: u8,
        /// `VtdFlags` bits.
        flags: u8,
        /// Input address.
        va: u64,
        /// A privileged access.
        privileged: bool,
    },
    /// `smmuv3_cd::fetch_cd`.
    Cd {
        /// `S1FMT_*` (any value).
        s1fmt: u8,
        /// CD table (or its L1 table).
        ptr: u64,
        /// log2 of the CDs (any value).
        s1cdmax: u8,
        /// Substream.
        ssid: u32,
    },
    /// Binds a table in the nested store.
    Bind(TableDesc),
    /// `Nested::translate` through bound table `table` (modulo the number bound).
    Translate {
        /// Index of the bound table.
        table: u8,
        /// PASID of the DMA.
        pasid: Option<u32>,
        /// Input address.
        va: u64,
        /// Bit 0 write, bit 1 exec, bit 2 privileged.
        access: u8,
    },
    /// `Nested::invalidate` of bound table `table` with any scope (no check but the bounds).
    Invalidate {
        /// Index of the bound table.
        table: u8,
        /// `InvalCaches` bits.
        caches: u8,
        /// The scope.
        scope: InvalScope,
        /// Arm ASID filter.
        archid: Option<u32>,
    },
    /// Invalidates everything of every bound table: the caches agree with memory again.
    InvalidateAll,
}

/// A sequence of steps over fresh (zeroed) RAM.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WalkScenario {
    /// The steps.
    pub ops: Vec<WalkOp>,
}

fn read_op(r: &mut Reader<'_>) -> WalkOp {
    match r.u8() % 9 {
        0 => WalkOp::Entry(r.u64(), r.u64()),
        1 => WalkOp::Arm {
            ttb0: r.u64(),
            t0sz: r.u8(),
            va: r.u64(),
        },
        2 => WalkOp::X86 {
            pgd: r.u64(),
            addr_width: r.u8(),
            flags: r.u8(),
            va: r.u64(),
            privileged: r.bool(),
        },
        3 => WalkOp::Cd {
            s1fmt: r.u8(),
            ptr: r.u64(),
            s1cdmax: r.u8(),
            ssid: r.u32(),
        },
        4 => WalkOp::Bind(TableDesc::ArmSmmuV3 {
            s1fmt: r.u8(),
            s1dss: r.u8(),
            s1contextptr: r.u64(),
            s1cdmax: u32::from(r.u8()),
        }),
        5 => WalkOp::Bind(TableDesc::Vtd {
            pasid: r.u32(),
            addr_width: u32::from(r.u8()),
            pgd: r.u64(),
            flags: VtdFlags::from_bits_truncate(r.u8().into()),
        }),
        6 => WalkOp::Translate {
            table: r.u8(),
            pasid: r.opt_u32(),
            va: r.u64(),
            access: r.u8(),
        },
        7 => {
            let table = r.u8();
            let caches = r.u8();
            let archid = r.opt_u32();
            let scope = match r.u8() % 3 {
                0 => InvalScope::Domain,
                1 => InvalScope::Pasid(r.u32()),
                _ => InvalScope::Range {
                    pasid: r.opt_u32(),
                    start: r.u64(),
                    nr_pages: r.u64(),
                    granule: r.u8(),
                },
            };
            WalkOp::Invalidate {
                table,
                caches,
                scope,
                archid,
            }
        }
        _ => WalkOp::InvalidateAll,
    }
}

fn write_op(w: &mut Writer, op: &WalkOp) {
    match op {
        WalkOp::Entry(gpa, v) => {
            w.u8(0);
            w.u64(*gpa);
            w.u64(*v);
        }
        WalkOp::Arm { ttb0, t0sz, va } => {
            w.u8(1);
            w.u64(*ttb0);
            w.u8(*t0sz);
            w.u64(*va);
        }
        WalkOp::X86 {
            pgd,
            addr_width,
            flags,
            va,
            privileged,
        } => {
            w.u8(2);
            w.u64(*pgd);
            w.u8(*addr_width);
            w.u8(*flags);
            w.u64(*va);
            w.bool(*privileged);
        }
        WalkOp::Cd {
            s1fmt,
            ptr,
            s1cdmax,
            ssid,
        } => {
            w.u8(3);
            w.u8(*s1fmt);
            w.u64(*ptr);
            w.u8(*s1cdmax);
            w.u32(*ssid);
        }
        WalkOp::Bind(TableDesc::ArmSmmuV3 {
            s1fmt,
            s1dss,
            s1contextptr,
            s1cdmax,
        }) => {
            w.u8(4);
            w.u8(*s1fmt);
            w.u8(*s1dss);
            w.u64(*s1contextptr);
            w.u8(u8::try_from(*s1cdmax).unwrap_or(u8::MAX));
        }
        WalkOp::Bind(TableDesc::Vtd {
            pasid,
            addr_width,
            pgd,
            flags,
        }) => {
            w.u8(5);
            w.u32(*pasid);
            w.u8(u8::try_from(*addr_width).unwrap_or(u8::MAX));
            w.u64(*pgd);
            w.u8(u8::try_from(flags.bits()).unwrap_or(u8::MAX));
        }
        WalkOp::Translate {
            table,
            pasid,
            va,
            access,
        } => {
            w.u8(6);
            w.u8(*table);
            w.opt_u32(*pasid);
            w.u64(*va);
            w.u8(*access);
        }
        WalkOp::Invalidate {
            table,
            caches,
            scope,
            archid,
        } => {
            w.u8(7);
            w.u8(*table);
            w.u8(*caches);
            w.opt_u32(*archid);
            match scope {
                InvalScope::Domain => w.u8(0),
                InvalScope::Pasid(p) => {
                    w.u8(1);
                    w.u32(*p);
                }
                InvalScope::Range {
                    pasid,
                    start,
                    nr_pages,
                    granule,
                } => {
                    w.u8(2);
                    w.opt_u32(*pasid);
                    w.u64(*start);
                    w.u64(*nr_pages);
                    w.u8(*granule);
                }
            }
        }
        WalkOp::InvalidateAll => w.u8(8),
    }
}

impl WalkScenario {
    /// Decodes the byte code: ops until the input ends. Every input is a scenario.
    #[must_use]
    pub fn decode(data: &[u8]) -> Self {
        let mut r = Reader::new(data);
        let mut ops = Vec::new();
        while !r.is_empty() {
            ops.push(read_op(&mut r));
        }
        WalkScenario { ops }
    }

    /// The byte code of this scenario.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        for op in &self.ops {
            write_op(&mut w, op);
        }
        w.finish()
    }
}

/// What a scenario reached (the seeds' tests check that they reach what they were built for).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WalkOutcome {
    /// Walks (direct or through the store) that ended at a leaf.
    pub leaves: usize,
    /// Leaves of 2 MiB or 1 GiB.
    pub blocks: usize,
    /// CDs that decoded.
    pub cds: usize,
    /// Store translations compared with the direct walk.
    pub compared: usize,
    /// The most entries one walk read.
    pub max_reads: u32,
}

/// Fresh guest RAM (zeroed).
#[must_use]
pub fn guest_ram() -> GuestRam {
    let ranges: Vec<_> = RAM.iter().map(|&(a, n)| (GuestAddress(a), n)).collect();
    GuestRam::from_ranges(&ranges).expect("guest RAM")
}

struct Harness {
    mem: GuestRam,
    nested: Nested,
    bound: Vec<(TableId, TableDesc)>,
    /// The store may have cached something since its caches were last emptied.
    cached: bool,
    /// Guest memory changed while the store may hold cached walks.
    dirty: bool,
    out: WalkOutcome,
}

/// Checks one walk's reads against `max` and records the most seen in `most`.
fn reads(most: &mut u32, counted: &CountingMemory<'_>, max: u32, what: &str) {
    let n = counted.take();
    assert!(n <= max, "{what}: {n} reads, bound {max}");
    *most = (*most).max(n);
}

/// Counts a leaf.
fn count_leaf(out: &mut WalkOutcome, leaf: &Leaf) {
    out.leaves += 1;
    out.blocks += usize::from(leaf.shift > 12);
}

/// The checks every leaf passes. `output_bits`: the format's output address width.
fn check_leaf(leaf: &Leaf, va: u64, output_bits: u32) {
    assert!(
        matches!(leaf.shift, 12 | 21 | 30),
        "leaf shift {}",
        leaf.shift
    );
    let mask = (1u64 << leaf.shift) - 1;
    assert_eq!(leaf.va & mask, 0, "{leaf:?}: input not aligned");
    assert_eq!(leaf.gpa & mask, 0, "{leaf:?}: output not aligned");
    assert!(
        leaf.va <= va && va <= leaf.last(),
        "{leaf:?} misses {va:#x}"
    );
    assert!(
        leaf.gpa
            .checked_add(mask)
            .is_some_and(|l| l >> output_bits == 0),
        "{leaf:?}: output beyond {output_bits} bits"
    );
}

impl Harness {
    fn new() -> Self {
        Harness {
            mem: guest_ram(),
            nested: Nested::default(),
            bound: Vec::new(),
            cached: false,
            dirty: false,
            out: WalkOutcome::default(),
        }
    }

    fn arm(&mut self, ttb0: u64, t0sz: u8, va: u64) -> Result<Leaf, WalkError> {
        let counted = CountingMemory::new(&self.mem);
        let got = aarch64::walk(&counted, ttb0, u32::from(t0sz), va);
        reads(
            &mut self.out.max_reads,
            &counted,
            aarch64::MAX_READS,
            "aarch64 walk",
        );
        if let Ok(leaf) = &got {
            check_leaf(leaf, va, ARM_OUTPUT_BITS);
            assert!(leaf.perms.contains(LeafPerms::PRIV_READ), "{leaf:?}");
            count_leaf(&mut self.out, leaf);
            for other in [leaf.va, leaf.last()] {
                let again = aarch64::walk(&counted, ttb0, u32::from(t0sz), other);
                reads(
                    &mut self.out.max_reads,
                    &counted,
                    aarch64::MAX_READS,
                    "aarch64 walk",
                );
                assert_eq!(
                    again, got,
                    "aarch64 walk of {other:#x} in the leaf of {va:#x}"
                );
            }
        }
        got
    }

    #[allow(clippy::too_many_arguments)] // one walk's inputs
    fn x86(
        &mut self,
        pgd: u64,
        addr_width: u32,
        flags: VtdFlags,
        va: u64,
        privileged: bool,
    ) -> Result<Leaf, WalkError> {
        let counted = CountingMemory::new(&self.mem);
        let got = x86::walk(&counted, pgd, addr_width, flags, va, privileged);
        reads(
            &mut self.out.max_reads,
            &counted,
            x86::MAX_READS,
            "x86 walk",
        );
        if let Ok(leaf) = &got {
            check_leaf(leaf, va, X86_OUTPUT_BITS);
            if !flags.contains(VtdFlags::SRE) {
                let privileged =
                    LeafPerms::PRIV_READ | LeafPerms::PRIV_WRITE | LeafPerms::PRIV_EXEC;
                assert!(!leaf.perms.intersects(privileged), "{leaf:?} without SRE");
            }
            count_leaf(&mut self.out, leaf);
            for other in [leaf.va, leaf.last()] {
                let again = x86::walk(&counted, pgd, addr_width, flags, other, privileged);
                reads(
                    &mut self.out.max_reads,
                    &counted,
                    x86::MAX_READS,
                    "x86 walk",
                );
                assert_eq!(again, got, "x86 walk of {other:#x} in the leaf of {va:#x}");
            }
        }
        got
    }

    fn cd(
        &mut self,
        s1fmt: u8,
        ptr: u64,
        s1cdmax: u32,
        ssid: u32,
    ) -> Result<smmuv3_cd::ContextDesc, WalkError> {
        let counted = CountingMemory::new(&self.mem);
        let got = smmuv3_cd::fetch_cd(&counted, s1fmt, ptr, s1cdmax, ssid);
        reads(
            &mut self.out.max_reads,
            &counted,
            smmuv3_cd::MAX_READS,
            "CD lookup",
        );
        if let Ok(cd) = &got {
            assert!(T0SZ_RANGE.contains(&cd.t0sz), "{cd:?}");
            assert_eq!(cd.ttb0 & CD1_TTB0_RES0, 0, "{cd:?}");
            assert!(
                s1cdmax < 32 && ssid >> s1cdmax == 0,
                "{cd:?} for ssid {ssid}"
            );
            self.out.cds += 1;
        }
        got
    }

    /// What `Nested::translate` must answer, from the walkers called directly.
    fn expected(
        &mut self,
        desc: TableDesc,
        ssid: u32,
        va: u64,
        req: AccessReq,
    ) -> Result<Leaf, WalkError> {
        let leaf = match desc {
            TableDesc::ArmSmmuV3 {
                s1fmt,
                s1contextptr,
                s1cdmax,
                ..
            } => {
                let cd = self.cd(s1fmt, s1contextptr, s1cdmax, ssid)?;
                if cd.epd0 {
                    return Err(WalkError::Forbidden);
                }
                let t0sz = u8::try_from(cd.t0sz).unwrap_or(u8::MAX);
                self.arm(cd.ttb0, t0sz, va)?
            }
            TableDesc::Vtd {
                addr_width,
                pgd,
                flags,
                ..
            } => self.x86(pgd, addr_width, flags, va, req.privileged)?,
        };
        if leaf.perms.allows(req) {
            Ok(leaf)
        } else {
            Err(WalkError::Permission)
        }
    }

    fn translate(&mut self, table: u8, pasid: Option<u32>, va: u64, access: u8) {
        if self.bound.is_empty() {
            return;
        }
        let (id, desc) = self.bound[usize::from(table) % self.bound.len()];
        let ssid = match self.nested.route(id, pasid) {
            Ok(Route::Stage1(ssid)) => ssid,
            // Bypass goes to the parent space (none here), TERM has no context.
            Ok(Route::Parent(_)) | Err(_) => return,
        };
        let req = AccessReq {
            write: access & 1 != 0,
            exec: access & 2 != 0,
            privileged: access & 4 != 0,
        };
        let tag = Tag {
            table: id,
            endpoint: 0,
            pasid,
            ssid,
            asid: None,
        };
        let counted = CountingMemory::new(&self.mem);
        let got = self.nested.translate(&counted, tag, va, req);
        self.cached = true;
        reads(
            &mut self.out.max_reads,
            &counted,
            nested::MAX_READS,
            "nested translate",
        );
        if let Ok(leaf) = &got {
            let bits = match desc {
                TableDesc::ArmSmmuV3 { .. } => ARM_OUTPUT_BITS,
                TableDesc::Vtd { .. } => X86_OUTPUT_BITS,
            };
            check_leaf(leaf, va, bits);
            assert!(leaf.perms.allows(req), "{leaf:?} for {req:?}");
        }
        if !self.dirty {
            let want = self.expected(desc, ssid, va, req);
            assert_eq!(
                got, want,
                "nested translate of {va:#x} ({desc:?}, ssid {ssid})"
            );
            self.out.compared += 1;
        }
    }

    fn step(&mut self, op: &WalkOp) {
        match *op {
            WalkOp::Entry(gpa, v) => {
                // Outside RAM the write is dropped, as a guest's store would fault.
                if self
                    .mem
                    .write_slice(&v.to_le_bytes(), GuestAddress(gpa))
                    .is_ok()
                {
                    self.dirty |= self.cached;
                }
            }
            WalkOp::Arm { ttb0, t0sz, va } => {
                let _ = self.arm(ttb0, t0sz, va);
            }
            WalkOp::X86 {
                pgd,
                addr_width,
                flags,
                va,
                privileged,
            } => {
                let flags = VtdFlags::from_bits_truncate(flags.into());
                let _ = self.x86(pgd, u32::from(addr_width), flags, va, privileged);
            }
            WalkOp::Cd {
                s1fmt,
                ptr,
                s1cdmax,
                ssid,
            } => {
                let _ = self.cd(s1fmt, ptr, u32::from(s1cdmax), ssid);
            }
            WalkOp::Bind(desc) => {
                if self.bound.len() < MAX_BOUND {
                    let id = self.nested.alloc(0, None, desc).expect("below the cap");
                    self.bound.push((id, desc));
                }
            }
            WalkOp::Translate {
                table,
                pasid,
                va,
                access,
            } => self.translate(table, pasid, va, access),
            WalkOp::Invalidate {
                table,
                caches,
                scope,
                archid,
            } => {
                if self.bound.is_empty() {
                    return;
                }
                let (id, _) = self.bound[usize::from(table) % self.bound.len()];
                let inv = Invalidate {
                    domain: 0,
                    caches: InvalCaches::from_bits_truncate(caches.into()),
                    scope,
                    archid: archid.map(u64::from),
                    leaf: false,
                };
                // A wrapping range is refused; anything else is applied.
                let _ = self.nested.invalidate(id, &inv);
            }
            WalkOp::InvalidateAll => {
                let inv = Invalidate {
                    domain: 0,
                    caches: InvalCaches::all(),
                    scope: InvalScope::Domain,
                    archid: None,
                    leaf: false,
                };
                for (id, _) in &self.bound {
                    self.nested.invalidate(*id, &inv).expect("a bound table");
                }
                self.cached = false;
                self.dirty = false;
            }
        }
    }
}

/// Runs one scenario; panics on a broken invariant.
pub fn run(s: &WalkScenario) -> WalkOutcome {
    let mut h = Harness::new();
    for op in &s.ops {
        h.step(op);
    }
    h.out
}
