//! Helpers of the vSVA tests: guest RAM with a page allocator, hand-built guest tables in the
//! two formats of `PROTOCOL.md` §9.6 (SMMUv3 CDs + AArch64 stage 1, x86-64 first stage, bits
//! from `spec::formats`), and senders for ATTACH_TABLE / INVALIDATE / PAGE_RESP.

use vhost_device_iommu::engine::{EndpointConfig, Engine, EngineConfig, Limits};
use vhost_device_iommu::host::EmulatedHost;
use vhost_device_iommu::GuestRam;
use virtio_iommu_spec::ext::{
    InvalCaches, InvalScope, PageRespCode, TableFormat, VtdFlags, S1DSS_SSID0, S1FMT_LINEAR,
};
use virtio_iommu_spec::formats::cd_table::{CD0_AA64, CD0_ASID_SHIFT, CD0_V};
use virtio_iommu_spec::formats::x86;
use virtio_iommu_spec::request::TableDesc;
use virtio_iommu_spec::Status;
use virtio_iommu_testkit::requests as req;
pub use virtio_iommu_testkit::requests::{arm_table, vtd_table};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic};

use crate::common::{attach, send};

/// Guest RAM: [0, 16 MiB).
pub const RAM_SIZE: u64 = 16 << 20;
/// Table pages are allocated from here up; data pages live below.
pub const TABLES: u64 = 8 << 20;

/// Endpoints 0..=3: PASIDs (8 bits), page requests, both formats. 4..=5: same without page
/// requests. 6: no table format.
pub fn config() -> EngineConfig {
    let ep = |ids, page_requests, table_formats| EndpointConfig {
        ids,
        reserved: Vec::new(),
        pasid_bits: 8,
        page_requests,
        table_formats,
    };
    let both = vec![TableFormat::ArmSmmuV3, TableFormat::Vtd];
    EngineConfig {
        endpoints: vec![
            ep(0..=3, true, both.clone()),
            ep(4..=5, false, both),
            ep(6..=6, true, Vec::new()),
        ],
        boot_bypass: false,
        offer_attach_table: true,
        offer_page_request: true,
        limits: Limits {
            max_page_request_groups: 4,
            ..Limits::default()
        },
        ..EngineConfig::default()
    }
}

/// Guest memory with a bump allocator for table pages.
#[derive(Debug)]
pub struct Guest {
    pub mem: GuestMemoryAtomic<GuestRam>,
    next: u64,
}

impl Guest {
    pub fn new() -> Self {
        let m = GuestRam::from_ranges(&[(GuestAddress(0), usize::try_from(RAM_SIZE).unwrap())])
            .unwrap();
        Guest {
            mem: GuestMemoryAtomic::new(m),
            next: TABLES,
        }
    }

    /// A zeroed 4 KiB page for a table.
    pub fn page(&mut self) -> u64 {
        let p = self.next;
        self.next += 0x1000;
        assert!(self.next <= RAM_SIZE, "out of table pages");
        p
    }

    pub fn put(&self, gpa: u64, v: u64) {
        self.mem
            .memory()
            .write_slice(&v.to_le_bytes(), GuestAddress(gpa))
            .unwrap();
    }

    pub fn get(&self, gpa: u64) -> u64 {
        let mut b = [0u8; 8];
        self.mem
            .memory()
            .read_slice(&mut b, GuestAddress(gpa))
            .unwrap();
        u64::from_le_bytes(b)
    }

    pub fn read(&self, gpa: u64, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.mem
            .memory()
            .read_slice(&mut b, GuestAddress(gpa))
            .unwrap();
        b
    }

    pub fn write(&self, gpa: u64, data: &[u8]) {
        self.mem
            .memory()
            .write_slice(data, GuestAddress(gpa))
            .unwrap();
    }
}

// ---- AArch64 stage 1 / SMMUv3 CD ---------------------------------------------------------

pub use virtio_iommu_spec::formats::aarch64::{
    AF as ARM_AF, AP_EL0 as ARM_AP_EL0, AP_RO as ARM_AP_RO, TABLE_OR_PAGE as ARM_TABLE,
    UXN as ARM_UXN, VALID as ARM_VALID,
};
/// A user read-write 4 KiB page.
pub const ARM_PAGE_RW: u64 = ARM_VALID | ARM_TABLE | ARM_AF | ARM_AP_EL0;
/// A user read-only 4 KiB page.
pub const ARM_PAGE_RO: u64 = ARM_PAGE_RW | ARM_AP_RO;

/// Words 0 and 1 of a valid CD with a 48-bit input space.
pub fn cd_words(asid: u16, ttb0: u64) -> (u64, u64) {
    let w0 = 16 | CD0_V | CD0_AA64 | (u64::from(asid) << CD0_ASID_SHIFT);
    (w0, ttb0)
}

pub fn write_cd(g: &Guest, cd: u64, asid: u16, ttb0: u64) {
    let (w0, w1) = cd_words(asid, ttb0);
    g.put(cd, w0);
    g.put(cd + 8, w1);
}

// ---- x86-64 first stage ------------------------------------------------------------------

pub use virtio_iommu_spec::formats::x86::{
    P as X86_P, PS as X86_PS, RW as X86_RW, US as X86_US, XD as X86_XD,
};
/// A user read-write page / table entry.
pub const X86_PAGE_RW: u64 = X86_P | X86_RW | X86_US;
/// A user read-only page.
pub const X86_PAGE_RO: u64 = X86_P | X86_US;

/// Which table format a test runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fmt {
    /// SMMUv3 linear CD table + AArch64 4-level stage 1.
    Arm,
    /// VT-d first stage, 4 (48-bit) or 5 (57-bit) levels.
    Vtd(u32),
}

impl Fmt {
    pub fn levels(self) -> u32 {
        match self {
            Fmt::Arm | Fmt::Vtd(48) => 4,
            Fmt::Vtd(_) => 5,
        }
    }
    /// Entry bits of a table pointer.
    pub fn table_bits(self) -> u64 {
        match self {
            Fmt::Arm => ARM_VALID | ARM_TABLE,
            Fmt::Vtd(_) => X86_PAGE_RW,
        }
    }
    /// Leaf bits of a user page, writable or not.
    pub fn page_bits(self, writable: bool) -> u64 {
        match (self, writable) {
            (Fmt::Arm, true) => ARM_PAGE_RW,
            (Fmt::Arm, false) => ARM_PAGE_RO,
            (Fmt::Vtd(_), true) => X86_PAGE_RW,
            (Fmt::Vtd(_), false) => X86_PAGE_RO,
        }
    }
}

/// A radix page table (both formats: 9 bits per level over a 4 KiB granule).
#[derive(Debug, Clone, Copy)]
pub struct PageTable {
    pub root: u64,
    pub fmt: Fmt,
}

impl PageTable {
    pub fn new(g: &mut Guest, fmt: Fmt) -> Self {
        PageTable {
            root: g.page(),
            fmt,
        }
    }

    /// Address of the entry for `va` at `depth` (0 = root), creating tables on the way.
    pub fn slot(&self, g: &mut Guest, va: u64, depth: u32) -> u64 {
        let levels = self.fmt.levels();
        let mut table = self.root;
        for d in 0..=depth {
            let shift = 12 + 9 * (levels - 1 - d);
            let slot = table + ((va >> shift) & 0x1ff) * 8;
            if d == depth {
                return slot;
            }
            let e = g.get(slot);
            table = if e & 1 == 0 {
                let t = g.page();
                g.put(slot, t | self.fmt.table_bits());
                t
            } else {
                e & x86::ADDR_MASK
            };
        }
        unreachable!()
    }

    /// Address of the leaf (last-level) entry of `va`.
    pub fn leaf(&self, g: &mut Guest, va: u64) -> u64 {
        self.slot(g, va, self.fmt.levels() - 1)
    }

    /// Maps the 4 KiB page of `va` to `gpa` with `bits`.
    pub fn map_bits(&self, g: &mut Guest, va: u64, gpa: u64, bits: u64) {
        let s = self.leaf(g, va);
        g.put(s, gpa | bits);
    }

    /// Maps the 4 KiB page of `va` to `gpa`, user read-write.
    pub fn map(&self, g: &mut Guest, va: u64, gpa: u64) {
        self.map_bits(g, va, gpa, self.fmt.page_bits(true));
    }
}

// ---- requests ----------------------------------------------------------------------------

/// ATTACH_TABLE of `table` for `endpoint` in `domain`.
pub fn attach_table(v: &mut Engine, domain: u32, endpoint: u32, table: TableDesc) -> Status {
    send(v, req::attach_table(domain, endpoint, table))
}

/// INVALIDATE of `caches` in `scope` of `domain`.
pub fn invalidate(v: &mut Engine, domain: u32, caches: InvalCaches, scope: InvalScope) -> Status {
    send(v, req::invalidate(domain, caches, scope))
}

/// PAGE_RESP of group `group_id` of `endpoint`.
pub fn page_resp(
    v: &mut Engine,
    endpoint: u32,
    pasid: Option<u32>,
    group_id: u16,
    code: PageRespCode,
) -> Status {
    send(v, req::page_resp(endpoint, pasid, group_id, code))
}

/// All caches.
pub const ALL_CACHES: InvalCaches = InvalCaches::all();

/// A device on the emulated host, every offered feature negotiated, with guest memory.
pub fn device(cfg: EngineConfig) -> (Engine, Guest) {
    let mut v = Engine::new(cfg, Box::new(EmulatedHost::new())).unwrap();
    v.negotiate(v.offered_features());
    let g = Guest::new();
    v.set_guest_memory(g.mem.clone());
    (v, g)
}

/// A device with endpoint `ep` in domain 1 and an address space bound in format `fmt`:
/// for Arm a linear CD table of 2^8 CDs (all invalid) with `S1DSS_SSID0`; for VT-d nothing yet
/// (one table per PASID, see [`Sva::bind`]).
#[derive(Debug)]
pub struct Sva {
    pub v: Engine,
    pub g: Guest,
    pub fmt: Fmt,
    pub ep: u32,
    /// Arm: the CD table.
    pub cds: u64,
}

impl Sva {
    pub fn new(fmt: Fmt, ep: u32) -> Self {
        Self::with_config(fmt, ep, config())
    }

    pub fn with_config(fmt: Fmt, ep: u32, cfg: EngineConfig) -> Self {
        let (mut v, mut g) = device(cfg);
        assert_eq!(attach(&mut v, 1, ep), Status::Ok);
        let mut cds = 0;
        if fmt == Fmt::Arm {
            // 256 CDs · 64 bytes = 4 pages, contiguous from the allocator.
            cds = g.page();
            for _ in 0..3 {
                g.page();
            }
            let d = arm_table(S1FMT_LINEAR, S1DSS_SSID0, cds, 8);
            assert_eq!(attach_table(&mut v, 1, ep, d), Status::Ok);
        }
        Sva { v, g, fmt, ep, cds }
    }

    /// Binds `pasid` to a new, empty page table.
    pub fn bind(&mut self, pasid: u32) -> PageTable {
        let pt = PageTable::new(&mut self.g, self.fmt);
        match self.fmt {
            Fmt::Arm => {
                let asid = u16::try_from(pasid + 100).unwrap();
                write_cd(&self.g, self.cds + 64 * u64::from(pasid), asid, pt.root);
                // Invalid CDs are never cached, but say so as a driver must.
                let st = invalidate(&mut self.v, 1, InvalCaches::PASID, InvalScope::Pasid(pasid));
                assert_eq!(st, Status::Ok);
            }
            Fmt::Vtd(w) => {
                let d = vtd_table(pasid, w, pt.root, VtdFlags::empty());
                assert_eq!(attach_table(&mut self.v, 1, self.ep, d), Status::Ok);
            }
        }
        pt
    }

    /// INVALIDATE of the 4 KiB page of `va` for `pasid`, IOTLB and DEV_IOTLB.
    pub fn flush_page(&mut self, pasid: u32, va: u64) -> Status {
        invalidate(
            &mut self.v,
            1,
            InvalCaches::IOTLB | InvalCaches::DEV_IOTLB,
            InvalScope::Range {
                pasid: Some(pasid),
                start: va & !0xfff,
                nr_pages: 1,
                granule: 12,
            },
        )
    }
}

/// The two formats every common test runs with, plus 5-level VT-d.
pub const FORMATS: [Fmt; 3] = [Fmt::Arm, Fmt::Vtd(48), Fmt::Vtd(57)];
