//! Shared virtual addressing (vSVA): guest-owned stage-1 tables bound to PASIDs.
//!
//! The driver builds the tables in guest memory allocated through
//! [`Hal::dma_alloc`](virtio_drivers::Hal::dma_alloc) (the physical address it returns is
//! what the device walks), binds them with ATTACH_TABLE, keeps the device's caches coherent
//! with INVALIDATE and resolves the device's page requests. Two formats:
//!
//! - `FORMAT_PSTF_ARM_SMMU_V3`: a [`CdTable`] (linear or two-level) whose context
//!   descriptors point to [`Stage1Arm`] AArch64 tables.
//! - `FORMAT_PGTF_VTD`: one [`X86FirstStage`] table (4- or 5-level) per PASID.
//!
//! Each module documents the exact bits it writes; the device walker reads the same subset.
//! Output addresses are guest-physical and go through the domain's own mappings (stage 2).
//!
//! The flow for one process (Arm):
//!
//! ```no_run
//! use virtio_drivers::{transport::Transport, Hal};
//! use virtio_iommu_driver::sva::{CdLayout, CdTable, Perms, S1Dss, Stage1Arm, SvaError};
//! use virtio_iommu_driver::{AttachFlags, VirtIOIommu};
//!
//! fn bind<H: Hal, T: Transport>(
//!     iommu: &mut VirtIOIommu<H, T>,
//!     page_pa: u64,
//! ) -> Result<(CdTable<H>, Stage1Arm<H>), SvaError> {
//!     let (domain, endpoint, pasid) = (1, 8, 1);
//!     iommu.attach(domain, endpoint, AttachFlags::empty())?; // ATTACH comes first
//!     let mut process = Stage1Arm::<H>::new(48)?;
//!     process.map(0x40_0000, page_pa, 0x1000, Perms::USER_READ_WRITE)?;
//!     let mut cds = CdTable::<H>::new(CdLayout::TwoLevel, 16, S1Dss::Terminate)?;
//!     cds.set_cd(pasid, &process, 1)?;
//!     iommu.bind_table(domain, endpoint, &cds.desc())?;
//!
//!     // Later changes: edit the table, then invalidate, then free unlinked table pages.
//!     process.unmap(0x40_0000, 0x1000)?;
//!     iommu.invalidate_range(domain, pasid, 0x40_0000, 0x1000)?;
//!     process.free_detached();
//!     Ok((cds, process)) // keep both alive while bound
//! }
//! ```
//!
//! Page requests: keep a [`PageRequestGroups`] and call
//! [`VirtIOIommu::handle_page_requests`](crate::VirtIOIommu::handle_page_requests) from the
//! event interrupt; its resolver maps the page, invalidates and returns
//! [`PageRespCode::Success`](crate::PageRespCode::Success) (or `Invalid`), and each group is
//! answered once, after its LAST request.

mod arm_stage1;
mod bind;
mod cd_table;
mod dma;
mod error;
mod invalidate;
mod page_requests;
mod perms;
mod radix;
mod range;
mod x86_first_stage;

pub use arm_stage1::{Stage1Arm, ARM_OUTPUT_BITS};
pub use bind::check_table;
pub use cd_table::{CdLayout, CdTable, S1Dss, MAX_LINEAR_CDMAX, MAX_TWO_LEVEL_CDMAX};
pub use error::SvaError;
pub use invalidate::{range_invalidation, ALL_CACHES, TLB_CACHES};
pub use page_requests::{
    response_for, Drained, PageRequestGroups, MAX_EVENTS_PER_CALL, MAX_PENDING_GROUPS,
};
pub use perms::{Perms, Translation};
pub use x86_first_stage::{X86FirstStage, X86Levels, X86_OUTPUT_BITS};
