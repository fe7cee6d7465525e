//! The guest's vSVA state for the end-to-end tests: the table formats and one address space
//! per PASID, built with the driver's `sva` builders in guest RAM.

use virtio_iommu_driver::sva::{
    CdLayout, CdTable, Perms, S1Dss, Stage1Arm, SvaError, X86FirstStage, X86Levels,
};
use virtio_iommu_driver::AttachFlags;
use virtio_iommu_spec::ext::VtdFlags;
use virtio_iommu_testkit::GuestHal;

use crate::driver::vm::Iommu;

/// Which guest table format a vSVA test binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// SMMUv3 CD table (`layout`, DMA without PASID per `dss`) of AArch64 stage-1 tables.
    Arm(CdLayout, S1Dss),
    /// VT-d first-stage tables, one per PASID.
    Vtd(X86Levels),
}

/// The formats every vSVA behaviour is checked with.
pub const FORMATS: [Format; 3] = [
    Format::Arm(CdLayout::TwoLevel, S1Dss::Terminate),
    Format::Vtd(X86Levels::Four),
    Format::Vtd(X86Levels::Five),
];

impl Format {
    /// A virtual address inside the format's input space that is above 48 bits for 5-level
    /// paging, so that the fifth level is really walked.
    pub fn va_base(self) -> u64 {
        match self {
            Format::Vtd(X86Levels::Five) => 0x0080_0000_0000_0000,
            _ => 0x7f00_0000,
        }
    }
}

/// One PASID's address space.
#[derive(Debug)]
pub enum Space {
    /// AArch64 stage 1.
    Arm(Stage1Arm<GuestHal>),
    /// x86-64 first stage.
    X86(X86FirstStage<GuestHal>),
}

impl Space {
    /// Maps `[va, va + size)` to `pa`.
    pub fn map(&mut self, va: u64, pa: u64, size: u64, perms: Perms) -> Result<(), SvaError> {
        match self {
            Space::Arm(t) => t.map(va, pa, size, perms),
            Space::X86(t) => t.map(va, pa, size, perms),
        }
    }

    /// Unmaps `[va, va + size)`.
    pub fn unmap(&mut self, va: u64, size: u64) -> Result<u64, SvaError> {
        match self {
            Space::Arm(t) => t.unmap(va, size),
            Space::X86(t) => t.unmap(va, size),
        }
    }
}

/// The guest's vSVA state for one endpoint: its CD table (Arm) and a table per PASID.
/// Tables live in guest RAM through [`GuestHal`] and must outlive their binding, so keep this
/// alive as long as the test DMAs.
#[derive(Debug)]
pub struct Sva {
    /// The format.
    pub format: Format,
    /// Domain the endpoint is attached to.
    pub domain: u32,
    /// The endpoint.
    pub endpoint: u32,
    /// Arm only: the CD table, bound at creation.
    pub cds: Option<CdTable<GuestHal>>,
    /// Address spaces by PASID.
    pub spaces: std::collections::BTreeMap<u32, Space>,
}

impl Sva {
    /// ATTACHes `endpoint` to `domain`; for Arm also builds an empty CD table (`s1cdmax` 16
    /// for two levels, 4 for linear) and binds it.
    pub fn new(iommu: &mut Iommu, format: Format, domain: u32, endpoint: u32) -> Sva {
        iommu
            .attach(domain, endpoint, AttachFlags::empty())
            .expect("ATTACH");
        let cds = match format {
            Format::Arm(layout, dss) => {
                let cdmax = match layout {
                    CdLayout::Linear => 4,
                    CdLayout::TwoLevel => 16,
                };
                let cds = CdTable::new(layout, cdmax, dss).expect("CD table");
                iommu
                    .bind_table(domain, endpoint, &cds.desc())
                    .expect("bind the CD table");
                Some(cds)
            }
            Format::Vtd(_) => None,
        };
        Sva {
            format,
            domain,
            endpoint,
            cds,
            spaces: std::collections::BTreeMap::new(),
        }
    }

    /// Gives `pasid` a new empty address space and binds it (Arm: sets its CD and
    /// invalidates it; VT-d: ATTACH_TABLE).
    pub fn add_pasid(&mut self, iommu: &mut Iommu, pasid: u32) {
        let space = match self.format {
            Format::Arm(..) => {
                let t = Stage1Arm::new(48).expect("stage-1 table");
                let cds = self.cds.as_mut().expect("Arm has a CD table");
                let asid = u16::try_from(pasid).expect("small PASID");
                cds.set_cd(pasid, &t, asid).expect("set CD");
                iommu
                    .invalidate_pasid(self.domain, pasid)
                    .expect("INVALIDATE the CD");
                Space::Arm(t)
            }
            Format::Vtd(levels) => {
                let t = X86FirstStage::new(levels).expect("first-stage table");
                iommu
                    .bind_table(
                        self.domain,
                        self.endpoint,
                        &t.desc(pasid, VtdFlags::empty()),
                    )
                    .expect("bind the VT-d table");
                Space::X86(t)
            }
        };
        self.spaces.insert(pasid, space);
    }

    /// The address space of `pasid`.
    pub fn space(&mut self, pasid: u32) -> &mut Space {
        self.spaces.get_mut(&pasid).expect("PASID has a space")
    }

    /// Maps one user read-write page of `pasid` (a new mapping needs no INVALIDATE: faults
    /// are not cached).
    pub fn map_page(&mut self, pasid: u32, va: u64, pa: u64) {
        self.space(pasid)
            .map(va, pa, 0x1000, Perms::USER_READ_WRITE)
            .expect("map a page");
    }
}
