//! AArch64 VMSAv8-64 stage-1 translation tables, 4 KiB granule (the tables an SMMUv3 context
//! descriptor's TTB0 points to).
//!
//! The subset written (and what the device walker reads):
//!
//! | Bits | Meaning |
//! |---|---|
//! | 0 | valid |
//! | 1 | 1 = table (L0–L2) or page (L3); 0 = block at L1 (1 GiB) / L2 (2 MiB) |
//! | 6 | AP\[1\]: accessible from EL0 ([`Perms::user`]) |
//! | 7 | AP\[2\]: read-only (`!`[`Perms::write`]) |
//! | 10 | AF, set on every leaf (the walker never sets it) |
//! | 47:12 | output address |
//! | 53 / 54 | PXN / UXN |
//!
//! Table descriptors are `address | 0b11` with no hierarchical attributes. Memory attributes
//! (AttrIndx, SH) are not encoded: the emulated walker has no caches to describe.
//! Executable user pages are privileged-execute-never and executable privileged pages
//! user-execute-never, as Linux does.

use virtio_drivers::Hal;
use virtio_iommu_spec::formats::aarch64::{
    AF, AP_EL0, AP_RO, OA_MASK as ADDR_MASK, OUTPUT_BITS, PXN, TABLE_OR_PAGE, UXN, VALID,
};

use super::error::SvaError;
use super::perms::{Perms, Translation};
use super::radix::{Entry, PteFormat, Radix, PAGE_SHIFT};
use super::range;

/// Output address size of the descriptors.
pub const ARM_OUTPUT_BITS: u32 = OUTPUT_BITS;

/// The AArch64 descriptor encoding.
pub(crate) struct ArmDesc;

impl PteFormat for ArmDesc {
    fn table(pa: u64) -> u64 {
        (pa & ADDR_MASK) | VALID | TABLE_OR_PAGE
    }

    fn leaf(pa: u64, shift: u32, perms: Perms) -> u64 {
        let mut d = (pa & ADDR_MASK) | VALID | AF;
        if shift == PAGE_SHIFT {
            d |= TABLE_OR_PAGE;
        }
        if !perms.write {
            d |= AP_RO;
        }
        if perms.user {
            d |= AP_EL0;
        }
        d |= match (perms.exec, perms.user) {
            (false, _) => PXN | UXN,
            (true, true) => PXN,
            (true, false) => UXN,
        };
        d
    }

    fn decode(raw: u64, shift: u32) -> Entry {
        if raw & VALID == 0 {
            return Entry::Invalid;
        }
        let is_page = shift == PAGE_SHIFT;
        if raw & TABLE_OR_PAGE != 0 && !is_page {
            return Entry::Table(raw & ADDR_MASK);
        }
        // A block at L0 and a "block" at L3 are reserved encodings.
        if raw & TABLE_OR_PAGE == 0 && !(shift == 21 || shift == 30) {
            return Entry::Malformed;
        }
        let user = raw & AP_EL0 != 0;
        let xn = if user { UXN } else { PXN };
        Entry::Leaf {
            pa: raw & ADDR_MASK & !((1u64 << shift) - 1),
            perms: Perms {
                write: raw & AP_RO == 0,
                user,
                exec: raw & xn == 0,
            },
        }
    }
}

/// A process address space as AArch64 stage-1 tables (TTB0 only), 4 KiB granule, owned in
/// guest memory allocated through `H`.
///
/// Point a context descriptor at it with [`CdTable::set_cd`](super::CdTable::set_cd); the
/// tables must outlive every CD that names them. After changing mappings of a bound table,
/// send the matching INVALIDATE (see [`VirtIOIommu::invalidate_range`](crate::VirtIOIommu::invalidate_range)),
/// then [`free_detached`](Self::free_detached).
pub struct Stage1Arm<H: Hal> {
    radix: Radix<H, ArmDesc>,
    va_bits: u32,
}

impl<H: Hal> core::fmt::Debug for Stage1Arm<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Stage1Arm")
            .field("ttb0", &self.ttb0())
            .field("va_bits", &self.va_bits)
            .field("table_pages", &self.table_pages())
            .finish()
    }
}

impl<H: Hal> Stage1Arm<H> {
    /// Empty tables for a `va_bits`-bit address space: 48 (walk starts at L0), 39 (L1) or
    /// 30 (L2).
    ///
    /// # Errors
    /// [`SvaError::UnsupportedWidth`] for other sizes, [`SvaError::NoMem`].
    pub fn new(va_bits: u32) -> Result<Self, SvaError> {
        if !matches!(va_bits, 30 | 39 | 48) {
            return Err(SvaError::UnsupportedWidth(va_bits));
        }
        Ok(Stage1Arm {
            radix: Radix::new(va_bits - 9)?,
            va_bits,
        })
    }

    /// Input address bits.
    #[must_use]
    pub fn va_bits(&self) -> u32 {
        self.va_bits
    }

    /// The CD's T0SZ: `64 - va_bits`.
    #[must_use]
    pub fn t0sz(&self) -> u8 {
        // `va_bits` is 30, 39 or 48.
        #[allow(clippy::cast_possible_truncation)]
        let t = (64 - self.va_bits) as u8;
        t
    }

    /// Guest-physical address of the first-level table (the CD's TTB0).
    #[must_use]
    pub fn ttb0(&self) -> u64 {
        self.radix.root_pa()
    }

    /// Table pages in use (first level included).
    #[must_use]
    pub fn table_pages(&self) -> usize {
        self.radix.live_pages()
    }

    /// Table pages unlinked by [`unmap`](Self::unmap) and kept until
    /// [`free_detached`](Self::free_detached), because the device may still walk them until
    /// it was told to invalidate.
    #[must_use]
    pub fn detached_pages(&self) -> usize {
        self.radix.detached_pages()
    }

    /// Frees the unlinked table pages; call after the INVALIDATE covering the unmap.
    pub fn free_detached(&mut self) {
        self.radix.free_detached();
    }

    fn input(&self, va: u64, size: u64) -> Result<(), SvaError> {
        let last = range::input(va, size)?;
        if last >> self.va_bits != 0 {
            return Err(SvaError::OutOfRange);
        }
        Ok(())
    }

    /// Maps `[va, va + size)` to `[pa, pa + size)` with 1 GiB / 2 MiB blocks where both
    /// addresses and the remaining size allow, 4 KiB pages elsewhere. AF is set on every leaf.
    ///
    /// # Errors
    /// [`SvaError::Unaligned`], [`SvaError::EmptyRange`], [`SvaError::OutOfRange`] (beyond
    /// `va_bits`), [`SvaError::OutputTooWide`] (beyond 48 bits), [`SvaError::AlreadyMapped`]
    /// (then nothing changed), [`SvaError::NoMem`].
    pub fn map(&mut self, va: u64, pa: u64, size: u64, perms: Perms) -> Result<(), SvaError> {
        self.input(va, size)?;
        range::output(pa, size, ARM_OUTPUT_BITS)?;
        self.radix.map(va, pa, size, perms)
    }

    /// Unmaps whatever is mapped in `[va, va + size)` (holes are fine), splitting blocks that
    /// straddle the ends. Returns the number of bytes unmapped.
    ///
    /// # Errors
    /// Argument errors as [`map`](Self::map); [`SvaError::NoMem`] if a block split needs a
    /// table page (what was unmapped before stays unmapped).
    pub fn unmap(&mut self, va: u64, size: u64) -> Result<u64, SvaError> {
        self.input(va, size)?;
        self.radix.unmap(va, size)
    }

    /// Sets `perms` on whatever is mapped in `[va, va + size)`. Returns the bytes changed.
    ///
    /// # Errors
    /// As [`unmap`](Self::unmap).
    pub fn protect(&mut self, va: u64, size: u64, perms: Perms) -> Result<u64, SvaError> {
        self.input(va, size)?;
        self.radix.protect(va, size, perms)
    }

    /// Walks the tables in memory for `va`.
    #[must_use]
    pub fn translate(&self, va: u64) -> Option<Translation> {
        if va >> self.va_bits != 0 {
            return None;
        }
        self.radix.translate(va)
    }
}
