//! `vm_memory::Iommu` for one endpoint (and PASID): lookups in its IOTLB, misses asked of the
//! daemon.

use std::sync::Arc;

use virtio_iommu_spec::request::MapFlags;
use vm_memory::iommu::{Error as IommuError, IotlbIterator, IovaRange};
use vm_memory::{GuestAddress, Iommu, Permissions};

use crate::client::Inner;
use crate::endpoint_tlb::{EndpointTlb, TlbGuard, TlbKey};
use crate::error::Error;

/// The IOMMU as one endpoint's DMA sees it. Wrap guest memory in
/// `vm_memory::IommuMemory::new(mem, translator, true, ())` and access it at IOVAs. Cheap to
/// clone; clones share the IOTLB.
#[derive(Debug, Clone)]
pub struct Translator {
    inner: Arc<Inner>,
    key: TlbKey,
    tlb: Arc<EndpointTlb>,
}

impl Translator {
    pub(crate) fn new(inner: Arc<Inner>, key: TlbKey, tlb: Arc<EndpointTlb>) -> Self {
        Self { inner, key, tlb }
    }

    /// The IOTLB.
    pub(crate) fn tlb(&self) -> &EndpointTlb {
        &self.tlb
    }

    /// The endpoint whose accesses this translates.
    #[must_use]
    pub fn endpoint(&self) -> u32 {
        self.key.endpoint
    }

    /// The PASID, if the accesses carry one.
    #[must_use]
    pub fn pasid(&self) -> Option<u32> {
        self.key.pasid
    }

    /// Translates `len` bytes at `iova` for `access`, asking the daemon for what the IOTLB
    /// misses; the typed-error form of [`Iommu::translate`].
    ///
    /// # Errors
    /// The access faults, the range is invalid, or the daemon cannot be reached in time.
    pub fn translate_typed(
        &self,
        iova: u64,
        len: usize,
        access: Permissions,
    ) -> Result<IotlbIterator<TlbGuard<'_>>, Error> {
        let bad = Error::BadRange {
            iova,
            len: len as u64,
        };
        let len64 = u64::try_from(len).map_err(|_| bad)?;
        // vm-memory's ranges are half-open: the access must end at or below u64::MAX.
        let end = iova
            .checked_add(len64)
            .ok_or(Error::BadRange { iova, len: len64 })?;
        let perm = match access {
            Permissions::Write => MapFlags::WRITE,
            Permissions::ReadWrite => MapFlags::READ | MapFlags::WRITE,
            Permissions::Read | Permissions::No => MapFlags::READ,
        };
        let rounds = self.inner.config().max_round_trips;
        for _ in 0..=rounds {
            let fails = match self.tlb.lookup(iova, len, access) {
                Ok(hit) => return Ok(hit),
                Err(fails) => fails,
            };
            // Ask from the first byte the IOTLB cannot serve to the end of the access.
            let first = fails
                .misses
                .iter()
                .chain(&fails.access_fails)
                .map(|r| r.base.0)
                .min()
                .unwrap_or(iova);
            self.inner.translate(self.key, first, end - first, perm)?;
        }
        Err(Error::TooFragmented(rounds))
    }
}

impl Iommu for Translator {
    type IotlbGuard<'a> = TlbGuard<'a>;

    fn translate(
        &self,
        iova: GuestAddress,
        length: usize,
        access: Permissions,
    ) -> Result<IotlbIterator<Self::IotlbGuard<'_>>, IommuError> {
        self.translate_typed(iova.0, length, access)
            .map_err(|e| IommuError::CannotResolve {
                iova_range: IovaRange { base: iova, length },
                reason: e.to_string(),
            })
    }
}
