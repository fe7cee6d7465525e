//! The SMMUv3 context-descriptor (PASID) table for `FORMAT_PSTF_ARM_SMMU_V3`.
//!
//! A CD is 64 bytes, eight little-endian words; only words 0 and 1 are written:
//!
//! | Word | Bits | Meaning |
//! |---|---|---|
//! | 0 | 5:0 | T0SZ = 64 − VA bits |
//! | 0 | 7:6 | TG0 = 0 (4 KiB granule) |
//! | 0 | 14 | EPD0 = 0 (TTB0 walks enabled) |
//! | 0 | 31 | V, valid |
//! | 0 | 41 | AA64 = 1 |
//! | 0 | 63:48 | ASID |
//! | 1 | 51:4 | TTB0 (4 KiB aligned) |
//!
//! Linear layout: the CD of PASID `p` is at `s1contextptr + 64·p`, `p < 2^s1cdmax`.
//! Two-level layout (`S1FMT_4KL2`): `s1contextptr` is an array of 8-byte L1 descriptors
//! (bit 0 valid, bits 51:12 the address of a 4 KiB leaf table of 64 CDs); PASID `p` uses L1
//! entry `p >> 6` and CD `p & 63` of its leaf table. Leaf tables are allocated on first use
//! and kept until the table is dropped (the device may cache L1 descriptors).

use alloc::collections::BTreeMap;

use virtio_drivers::Hal;
use virtio_iommu_spec::ext::{S1DSS_BYPASS, S1DSS_SSID0, S1DSS_TERM, S1FMT_4KL2, S1FMT_LINEAR};
use virtio_iommu_spec::formats::cd_table::{
    CD0_AA64, CD0_ASID_SHIFT, CD0_V, CD1_TTB0_MASK, CD_WORDS, L1_L2PTR_MASK, L1_VALID,
    L2_CDS_LOG2 as L2_BITS,
};
use virtio_iommu_spec::request::TableDesc;

use super::arm_stage1::Stage1Arm;
use super::dma::{publish, DmaPages, WORDS_PER_PAGE};
use super::error::SvaError;

/// The largest `s1cdmax` of a linear table (1024 CDs, 64 KiB, as Linux's SMMUv3 driver).
pub const MAX_LINEAR_CDMAX: u32 = 10;
/// The largest `s1cdmax` of a two-level table (20 PASID bits).
pub const MAX_TWO_LEVEL_CDMAX: u32 = 20;

/// How the CDs are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CdLayout {
    /// One array of CDs (`S1FMT_LINEAR`), `s1cdmax` ≤ [`MAX_LINEAR_CDMAX`].
    Linear,
    /// L1 descriptors and 4 KiB leaf tables (`S1FMT_4KL2`), `s1cdmax` ≤
    /// [`MAX_TWO_LEVEL_CDMAX`].
    TwoLevel,
}

/// What DMA without a PASID does (`s1dss`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum S1Dss {
    /// It faults.
    Terminate,
    /// It uses the domain's own mappings, as if no table were bound.
    Bypass,
    /// It uses the CD of PASID 0.
    Ssid0,
}

impl S1Dss {
    /// The wire value.
    #[must_use]
    pub const fn code(self) -> u8 {
        match self {
            S1Dss::Terminate => S1DSS_TERM,
            S1Dss::Bypass => S1DSS_BYPASS,
            S1Dss::Ssid0 => S1DSS_SSID0,
        }
    }
}

/// A context-descriptor table in guest memory allocated through `H`.
///
/// After [`set_cd`](Self::set_cd) or [`clear_cd`](Self::clear_cd) on a bound table, send
/// [`VirtIOIommu::invalidate_pasid`](crate::VirtIOIommu::invalidate_pasid).
pub struct CdTable<H: Hal> {
    layout: CdLayout,
    cdmax: u32,
    dss: S1Dss,
    /// The linear CD array, or the L1 descriptor array.
    top: DmaPages<H>,
    /// Two-level only: leaf tables by L1 index.
    leaves: BTreeMap<u32, DmaPages<H>>,
}

impl<H: Hal> core::fmt::Debug for CdTable<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CdTable")
            .field("layout", &self.layout)
            .field("s1cdmax", &self.cdmax)
            .field("s1contextptr", &self.s1contextptr())
            .field("leaf_tables", &self.leaves.len())
            .finish()
    }
}

/// Pages holding `bytes` bytes (at least one).
fn pages_for(bytes: usize) -> usize {
    bytes.div_ceil(WORDS_PER_PAGE * 8).max(1)
}

impl<H: Hal> CdTable<H> {
    /// An empty table for `2^s1cdmax` PASIDs (all CDs invalid).
    ///
    /// # Errors
    /// [`SvaError::CdMaxTooLarge`], [`SvaError::NoMem`].
    pub fn new(layout: CdLayout, s1cdmax: u32, dss: S1Dss) -> Result<Self, SvaError> {
        let top_bytes = match layout {
            CdLayout::Linear if s1cdmax <= MAX_LINEAR_CDMAX => (CD_WORDS * 8) << s1cdmax,
            CdLayout::TwoLevel if s1cdmax <= MAX_TWO_LEVEL_CDMAX => {
                8 << s1cdmax.saturating_sub(L2_BITS)
            }
            _ => return Err(SvaError::CdMaxTooLarge(s1cdmax)),
        };
        Ok(CdTable {
            layout,
            cdmax: s1cdmax,
            dss,
            top: DmaPages::new(pages_for(top_bytes))?,
            leaves: BTreeMap::new(),
        })
    }

    /// Guest-physical address of the CD array (linear) or L1 table (two-level).
    #[must_use]
    pub fn s1contextptr(&self) -> u64 {
        self.top.paddr()
    }

    /// `s1cdmax`: log2 of the number of PASIDs.
    #[must_use]
    pub fn s1cdmax(&self) -> u32 {
        self.cdmax
    }

    /// The layout.
    #[must_use]
    pub fn layout(&self) -> CdLayout {
        self.layout
    }

    /// Leaf tables allocated so far (two-level only).
    #[must_use]
    pub fn leaf_tables(&self) -> usize {
        self.leaves.len()
    }

    /// The ATTACH_TABLE descriptor of this table.
    #[must_use]
    pub fn desc(&self) -> TableDesc {
        TableDesc::ArmSmmuV3 {
            s1fmt: match self.layout {
                CdLayout::Linear => S1FMT_LINEAR,
                CdLayout::TwoLevel => S1FMT_4KL2,
            },
            s1dss: self.dss.code(),
            s1contextptr: self.s1contextptr(),
            s1cdmax: self.cdmax,
        }
    }

    fn check(&self, pasid: u32) -> Result<(), SvaError> {
        if u64::from(pasid) >> self.cdmax != 0 {
            return Err(SvaError::PasidOutOfRange {
                pasid,
                cdmax: self.cdmax,
            });
        }
        Ok(())
    }

    /// Where `pasid`'s CD lives: the L1 index of its leaf table (two-level) and the index
    /// of its first word in that memory.
    fn locate(&self, pasid: u32) -> Result<(Option<u32>, usize), SvaError> {
        self.check(pasid)?;
        let p = usize::try_from(pasid).map_err(|_| SvaError::OutOfRange)?;
        Ok(match self.layout {
            CdLayout::Linear => (None, p * CD_WORDS),
            CdLayout::TwoLevel => (
                Some(pasid >> L2_BITS),
                (p & ((1 << L2_BITS) - 1)) * CD_WORDS,
            ),
        })
    }

    /// The memory holding the CDs of leaf table `l1` (or the linear array); `None` if that
    /// leaf table does not exist yet.
    fn mem_mut(&mut self, l1: Option<u32>) -> Option<&mut DmaPages<H>> {
        match l1 {
            None => Some(&mut self.top),
            Some(i) => self.leaves.get_mut(&i),
        }
    }

    /// Allocates and publishes leaf table `l1` if it does not exist.
    fn ensure_leaf(&mut self, l1: u32) -> Result<(), SvaError> {
        if self.leaves.contains_key(&l1) {
            return Ok(());
        }
        let l1_idx = usize::try_from(l1).map_err(|_| SvaError::OutOfRange)?;
        let leaf = DmaPages::new(1)?;
        // The zeroed leaf is complete before the L1 descriptor publishes it.
        publish();
        self.top
            .write(l1_idx, (leaf.paddr() & L1_L2PTR_MASK) | L1_VALID);
        self.leaves.insert(l1, leaf);
        Ok(())
    }

    /// Makes `pasid`'s CD translate through `table` with `asid`. A valid CD is first made
    /// invalid, so the device never sees a mix of old and new words.
    ///
    /// `table` must stay alive (and its address unchanged) while the CD names it.
    ///
    /// # Errors
    /// [`SvaError::PasidOutOfRange`], [`SvaError::NoMem`] (two-level leaf table).
    pub fn set_cd(&mut self, pasid: u32, table: &Stage1Arm<H>, asid: u16) -> Result<(), SvaError> {
        let word0 =
            u64::from(table.t0sz()) | CD0_V | CD0_AA64 | (u64::from(asid) << CD0_ASID_SHIFT);
        let ttb0 = table.ttb0() & CD1_TTB0_MASK;
        let (l1, w) = self.locate(pasid)?;
        if let Some(l1) = l1 {
            self.ensure_leaf(l1)?;
        }
        let mem = self.mem_mut(l1).ok_or(SvaError::Corrupt)?;
        if mem.read(w) & CD0_V != 0 {
            mem.write(w, 0);
            publish();
        }
        for i in 1..CD_WORDS {
            mem.write(w + i, 0);
        }
        mem.write(w + 1, ttb0);
        publish();
        mem.write(w, word0);
        log::debug!("CD {pasid}: ttb0 {ttb0:#x} asid {asid}");
        Ok(())
    }

    /// Invalidates `pasid`'s CD (clearing an invalid CD is not an error).
    ///
    /// # Errors
    /// [`SvaError::PasidOutOfRange`].
    pub fn clear_cd(&mut self, pasid: u32) -> Result<(), SvaError> {
        let (l1, w) = self.locate(pasid)?;
        if let Some(mem) = self.mem_mut(l1) {
            mem.write(w, 0);
            publish();
            for i in 1..CD_WORDS {
                mem.write(w + i, 0);
            }
        }
        Ok(())
    }

    /// Whether `pasid`'s CD is valid.
    #[must_use]
    pub fn is_set(&self, pasid: u32) -> bool {
        let Ok((l1, w)) = self.locate(pasid) else {
            return false;
        };
        let mem = match l1 {
            None => Some(&self.top),
            Some(i) => self.leaves.get(&i),
        };
        mem.is_some_and(|m| m.read(w) & CD0_V != 0)
    }
}
