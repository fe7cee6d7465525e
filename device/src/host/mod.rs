//! The host IOMMU interface: what the virtio-iommu engine asks of whatever really translates
//! device DMA.
//!
//! The trait is shaped after the Linux iommufd uAPI (`include/uapi/linux/iommufd.h`: IOAS,
//! HWPT, attach with replace): the engine allocates an address space per mapped domain (an
//! IOAS), edits it with map/unmap, and points endpoints at a space, at the identity (bypass)
//! or at nothing (blocked). Nested guest
//! tables, invalidation and page responses serve vSVA: the emulated host walks guest tables in
//! software; a host that cannot may answer them with [`HostError::Unsupported`].
//!
//! The engine always calls the host *before* committing a change to its own state, so that a
//! host failure leaves both sides as they were (see `engine`).

pub mod emulated;
#[cfg(target_os = "linux")]
pub mod iommufd;
pub mod mapping_store;

use core::fmt;
use core::ops::RangeInclusive;

use bitflags::bitflags;
use virtio_iommu_spec::event::FaultReason;
use virtio_iommu_spec::ext::PageRespCode;
use virtio_iommu_spec::probe::ResvMemSubtype;
use virtio_iommu_spec::request::TableDesc;
use virtio_iommu_spec::Event;
use vm_memory::GuestMemoryAtomic;

use crate::GuestRam;

pub use emulated::EmulatedHost;
pub use mapping_store::{Mapping, MappingStore, Removed, WouldSplit};

/// Handle of a host address space (an iommufd IOAS, or a page table of the emulator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpaceId(pub u32);

/// Handle of a host nested table (an iommufd nested HWPT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId(pub u32);

bitflags! {
    /// Permissions of a host mapping (iommufd `IOMMU_IOAS_MAP_READABLE`/`WRITEABLE`, plus MMIO).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Perm: u32 {
        /// Device reads allowed.
        const READ = 1 << 0;
        /// Device writes allowed.
        const WRITE = 1 << 1;
        /// The output range is device memory.
        const MMIO = 1 << 2;
    }
}

/// Direction of a DMA access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// The device reads memory.
    Read,
    /// The device writes memory.
    Write,
}

impl Access {
    /// The mapping permission this access needs.
    #[must_use]
    pub const fn perm(self) -> Perm {
        match self {
            Access::Read => Perm::READ,
            Access::Write => Perm::WRITE,
        }
    }
}

/// Where an endpoint's DMA goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttachTarget {
    /// Translated through an address space.
    Space(SpaceId),
    /// Translated through a nested (guest-owned stage-1) table.
    Table(TableId),
    /// Identity: every access reaches guest-physical memory untranslated.
    Bypass,
    /// Every access faults.
    Blocked,
}

/// A reserved region of an endpoint (a PROBE `RESV_MEM` property). Addresses are inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ReservedRegion {
    /// First address.
    pub start: u64,
    /// Last address, inclusive.
    pub last: u64,
    /// RESERVED (accesses fault) or MSI (accesses pass through untranslated).
    #[serde(serialize_with = "serialize_resv_kind")]
    pub kind: ResvMemSubtype,
}

fn serialize_resv_kind<S: serde::Serializer>(k: &ResvMemSubtype, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match k {
        ResvMemSubtype::Reserved => "reserved",
        ResvMemSubtype::Msi => "msi",
    })
}

impl ReservedRegion {
    /// The x86 MSI doorbell window 0xfee00000–0xfeefffff, as QEMU reports it.
    #[must_use]
    pub const fn x86_msi() -> Self {
        ReservedRegion {
            start: 0xfee0_0000,
            last: 0xfeef_ffff,
            kind: ResvMemSubtype::Msi,
        }
    }

    /// Whether `[start, last]` intersects this region.
    #[must_use]
    pub const fn overlaps(&self, start: u64, last: u64) -> bool {
        start <= self.last && self.start <= last
    }
}

/// A contiguous piece of guest-physical memory an access translated to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct GuestRange {
    /// Guest-physical address of the first byte.
    pub gpa: u64,
    /// Length in bytes: the requested length, cut at the end of the mapping that translated the
    /// first byte (so the caller continues at `iova + len`).
    pub len: u64,
}

/// A failed translation, before the engine adds endpoint and PASID to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// Why.
    pub reason: FaultReason,
    /// The input address of the first byte that could not be translated.
    pub address: u64,
}

/// What a DMA access carries besides its direction: the privileged-mode and execute bits of a
/// PCIe PASID prefix. The default is an unprivileged data access, as for requests without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DmaAttrs {
    /// Privileged (supervisor / EL1) access.
    pub privileged: bool,
    /// Instruction fetch (only meaningful for reads).
    pub exec: bool,
}

/// A failed translation, and whether a page request could resolve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TranslateFault {
    /// The fault.
    pub fault: Fault,
    /// A stage-1 fault on a guest-owned table that the guest can fix by editing the table
    /// (entry not present, permission, access flag): an endpoint with page-request capability
    /// may ask for it with a page request instead of failing.
    pub recoverable: bool,
}

/// Why the host refused an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Out of resources (iommufd `ENOMEM`/`ENOSPC`).
    #[error("host out of resources")]
    NoMem,
    /// The host cannot do this at all (`EOPNOTSUPP`).
    #[error("not supported by the host")]
    Unsupported,
    /// Bad handle or inconsistent arguments (`EINVAL`/`ENOENT`): a bug on the engine's side.
    #[error("invalid host handle or arguments")]
    Invalid,
    /// Any other host failure (`EIO`, …).
    #[error("host failure")]
    Failed,
}

/// The host IOMMU the engine keeps in sync with the guest's view.
///
/// Addresses are inclusive ranges (`last` is the last byte), like the virtio-iommu requests,
/// so that a mapping ending at `u64::MAX` needs no special case.
pub trait HostIommu: Send + fmt::Debug {
    /// Allocates an empty address space (iommufd `IOMMU_IOAS_ALLOC`).
    ///
    /// # Errors
    /// `NoMem` when out of spaces.
    fn alloc_space(&mut self) -> Result<SpaceId, HostError>;

    /// Destroys an address space and every mapping in it. No endpoint may still use it.
    ///
    /// # Errors
    /// `Invalid` for an unknown or busy space.
    fn destroy_space(&mut self, space: SpaceId) -> Result<(), HostError>;

    /// Maps `[iova, last]` to `phys..` with `perm` (iommufd `IOMMU_IOAS_MAP`/`COPY` with a fixed
    /// IOVA). The range must not overlap an existing mapping of the space.
    ///
    /// # Errors
    /// `NoMem`, `Unsupported` (e.g. MMIO), `Invalid` (overlap, bad space).
    fn map(
        &mut self,
        space: SpaceId,
        iova: u64,
        last: u64,
        phys: u64,
        perm: Perm,
    ) -> Result<(), HostError>;

    /// Removes every mapping that lies wholly inside `[iova, last]` (iommufd `IOMMU_IOAS_UNMAP`;
    /// the engine never asks to split a mapping). Returns the number of bytes unmapped.
    ///
    /// # Errors
    /// `Invalid` for a bad space.
    fn unmap(&mut self, space: SpaceId, iova: u64, last: u64) -> Result<u64, HostError>;

    /// The mappings of `space` when this host keeps them in the shared form (the emulated host
    /// translates from them): the engine checks its rules against them and keeps no copy.
    /// `None` (iommufd: the kernel holds the IOAS) leaves the engine its own store.
    fn mappings(&self, space: SpaceId) -> Option<&MappingStore> {
        let _ = space;
        None
    }

    /// Points the DMA of `endpoint` (of one PASID, or its requests without PASID) at `target`,
    /// replacing any previous attachment atomically (iommufd `ATTACH_IOMMUFD_PT` "replace").
    ///
    /// # Errors
    /// `Invalid` for a bad target, `Unsupported` for PASID attach on a host without PASIDs.
    fn attach(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        target: AttachTarget,
    ) -> Result<(), HostError>;

    /// Removes the attachment of `endpoint` (and PASID): its DMA falls back to the unattached
    /// default (see [`HostIommu::set_unattached_bypass`]).
    ///
    /// # Errors
    /// Host failures only; detaching an unattached endpoint is not an error.
    fn detach(&mut self, endpoint: u32, pasid: Option<u32>) -> Result<(), HostError>;

    /// Where the DMA of endpoints without an attachment goes: identity (`true`) or blocked.
    /// A single switch because the endpoint set may be all 2^32 IDs.
    fn set_unattached_bypass(&mut self, bypass: bool);

    /// Declares the reserved regions of a range of endpoints: on a translated endpoint,
    /// accesses into an MSI window pass through 1:1 and accesses into a RESERVED region fault.
    /// Hosts whose hardware handles MSI on its own may ignore this.
    fn set_reserved_regions(&mut self, endpoints: RangeInclusive<u32>, regions: &[ReservedRegion]) {
        let _ = (endpoints, regions);
    }

    /// Installs a guest-owned table (vSVA, iommufd nested `IOMMU_HWPT_ALLOC`) whose output
    /// addresses go through `parent`. The engine then attaches it: `(endpoint, Some(pasid))` for
    /// [`TableDesc::Vtd`], the endpoint's requests without PASID for [`TableDesc::ArmSmmuV3`]
    /// (a CD table covers every PASID of the endpoint, as an SMMUv3 STE does).
    ///
    /// # Errors
    /// `Unsupported` by default (a host without nested translation); `NoMem`, `Invalid`.
    fn alloc_table(
        &mut self,
        endpoint: u32,
        parent: Option<SpaceId>,
        desc: &TableDesc,
    ) -> Result<TableId, HostError> {
        let _ = (endpoint, parent, desc);
        Err(HostError::Unsupported)
    }

    /// Destroys a nested table.
    ///
    /// # Errors
    /// `Unsupported` by default (a host without nested translation); `NoMem`, `Invalid`.
    fn destroy_table(&mut self, table: TableId) -> Result<(), HostError> {
        let _ = table;
        Err(HostError::Unsupported)
    }

    /// Invalidates cached translations of a nested table (vSVA seam, `IOMMU_HWPT_INVALIDATE`).
    ///
    /// # Errors
    /// `Unsupported` by default (a host without nested translation); `NoMem`, `Invalid`.
    fn invalidate(
        &mut self,
        table: TableId,
        inval: &virtio_iommu_spec::request::Invalidate,
    ) -> Result<(), HostError> {
        let _ = (table, inval);
        Err(HostError::Unsupported)
    }

    /// Completes a page request (vSVA seam, a write to the iommufd fault fd).
    ///
    /// # Errors
    /// `Unsupported` by default; `Invalid` for a group the host does not know.
    fn page_response(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        group_id: u16,
        code: PageRespCode,
    ) -> Result<(), HostError> {
        let _ = (endpoint, pasid, group_id, code);
        Err(HostError::Unsupported)
    }

    /// Takes the next event the host raised on its own (fault fd / vEVENTQ): an unrecoverable
    /// fault or a page request the guest must answer.
    fn poll_event(&mut self) -> Option<Event> {
        None
    }

    /// Whether the host IOMMU translates `endpoint`'s DMA itself (a VFIO device on iommufd):
    /// the translation service then does not answer for it (spec/TRANSLATION.md `UNSUPP`).
    fn owns_dma(&self, endpoint: u32) -> bool {
        let _ = endpoint;
        false
    }

    /// Whether [`HostIommu::translate_ext`] walks guest tables in software (the emulated
    /// host). Without it, the translation service answers PASID translations `UNSUPP`.
    fn walks_guest_tables(&self) -> bool {
        false
    }

    /// Whether every write of guest memory made for this host's endpoints goes through the
    /// daemon's [`GuestRam`], which logs dirty pages while a migration asks for it. Hardware
    /// DMA behind a real IOMMU does not: the daemon then cannot offer vhost-user's LOG_ALL.
    fn writes_logged(&self) -> bool {
        true
    }

    /// Gives the host the guest's memory (for DMA emulation and for pinning host mappings).
    fn set_guest_memory(&mut self, mem: GuestMemoryAtomic<GuestRam>) {
        let _ = mem;
    }

    /// Translates the first byte at `iova` and as many following bytes (up to `len`) as the
    /// same mapping covers. `len` 0 checks the first byte and returns an empty range.
    ///
    /// # Errors
    /// A [`Fault`]; hosts that cannot translate in software answer reason `Unknown`.
    fn translate(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        iova: u64,
        len: u64,
        access: Access,
    ) -> Result<GuestRange, Fault> {
        let _ = (endpoint, pasid, len, access);
        Err(Fault {
            reason: FaultReason::Unknown,
            address: iova,
        })
    }

    /// [`HostIommu::translate`] with the access attributes, telling recoverable stage-1 faults
    /// apart (vSVA). Hosts without guest tables need not override it.
    ///
    /// # Errors
    /// A [`TranslateFault`].
    fn translate_ext(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        iova: u64,
        len: u64,
        access: Access,
        attrs: DmaAttrs,
    ) -> Result<GuestRange, TranslateFault> {
        let _ = attrs;
        self.translate(endpoint, pasid, iova, len, access)
            .map_err(|fault| TranslateFault {
                fault,
                recoverable: false,
            })
    }

    /// Copies `buf.len()` bytes of DMA read at `iova`, split at mapping boundaries.
    ///
    /// # Errors
    /// The [`Fault`] of the first byte that could not be read; bytes before it may be copied.
    fn dma_read(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        iova: u64,
        buf: &mut [u8],
    ) -> Result<(), Fault> {
        let _ = (endpoint, pasid, buf);
        Err(Fault {
            reason: FaultReason::Unknown,
            address: iova,
        })
    }

    /// Writes `data` by DMA at `iova`, split at mapping boundaries.
    ///
    /// # Errors
    /// The [`Fault`] of the first byte that could not be written; bytes before it may be written.
    fn dma_write(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        iova: u64,
        data: &[u8],
    ) -> Result<(), Fault> {
        let _ = (endpoint, pasid, data);
        Err(Fault {
            reason: FaultReason::Unknown,
            address: iova,
        })
    }
}
