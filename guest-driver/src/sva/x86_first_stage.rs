//! x86-64 (IA-32e) page tables as a VT-d first-stage table for one PASID: 4 levels (48-bit
//! input) or 5 levels (57-bit), 4 KiB pages and 2 MiB / 1 GiB pages.
//!
//! The subset written (and what the device walker reads):
//!
//! | Bits | Meaning |
//! |---|---|
//! | 0 | P, present |
//! | 1 | R/W ([`Perms::write`] at the leaf; always set in tables) |
//! | 2 | U/S ([`Perms::user`] at the leaf; always set in tables) |
//! | 5 | A, set everywhere (the walker does not set it) |
//! | 6 | D, set on writable leaves |
//! | 7 | PS on 2 MiB (PD) and 1 GiB (PDPT) pages |
//! | 51:12 | address (low bits of PS pages zero) |
//! | 63 | XD (`!`[`Perms::exec`]; leaves only) |
//!
//! Table entries grant everything (`P | R/W | U/S | A`), so the leaf alone decides.

use virtio_drivers::Hal;
use virtio_iommu_spec::ext::VtdFlags;
use virtio_iommu_spec::formats::x86::{
    A, ADDR_MASK, ADDR_WIDTH_4_LEVEL, ADDR_WIDTH_5_LEVEL, D, OUTPUT_BITS, P, PS, RW, US, XD,
};
use virtio_iommu_spec::request::TableDesc;

use super::error::SvaError;
use super::perms::{Perms, Translation};
use super::radix::{Entry, PteFormat, Radix, PAGE_SHIFT};
use super::range;

/// Physical address width of the entries (M).
pub const X86_OUTPUT_BITS: u32 = OUTPUT_BITS;

/// The IA-32e entry encoding.
pub(crate) struct X86Pte;

impl PteFormat for X86Pte {
    fn table(pa: u64) -> u64 {
        (pa & ADDR_MASK) | P | RW | US | A
    }

    fn leaf(pa: u64, shift: u32, perms: Perms) -> u64 {
        let mut e = (pa & ADDR_MASK) | P | A;
        if shift > PAGE_SHIFT {
            e |= PS;
        }
        if perms.write {
            e |= RW | D;
        }
        if perms.user {
            e |= US;
        }
        if !perms.exec {
            e |= XD;
        }
        e
    }

    fn decode(raw: u64, shift: u32) -> Entry {
        if raw & P == 0 {
            return Entry::Invalid;
        }
        let leaf = shift == PAGE_SHIFT || raw & PS != 0;
        if !leaf {
            return Entry::Table(raw & ADDR_MASK);
        }
        if shift != PAGE_SHIFT && !(shift == 21 || shift == 30) {
            return Entry::Malformed; // PS at PML4 / PML5
        }
        let addr = raw & ADDR_MASK;
        let low = (1u64 << shift) - 1;
        if addr & low != 0 {
            return Entry::Malformed; // reserved low address bits of a large page
        }
        Entry::Leaf {
            pa: addr,
            perms: Perms {
                write: raw & RW != 0,
                user: raw & US != 0,
                exec: raw & XD == 0,
            },
        }
    }
}

/// Paging depth of an [`X86FirstStage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum X86Levels {
    /// 4-level paging, 48-bit canonical input addresses.
    Four,
    /// 5-level paging, 57-bit canonical input addresses.
    Five,
}

impl X86Levels {
    /// The `addr_width` of the ATTACH_TABLE body: 48 or 57.
    #[must_use]
    pub const fn addr_width(self) -> u32 {
        match self {
            X86Levels::Four => ADDR_WIDTH_4_LEVEL,
            X86Levels::Five => ADDR_WIDTH_5_LEVEL,
        }
    }
}

/// One PASID's address space as x86-64 first-stage tables, owned in guest memory allocated
/// through `H`. Bind it with [`desc`](Self::desc) and
/// [`VirtIOIommu::bind_table`](crate::VirtIOIommu::bind_table); after changing mappings of a
/// bound table, send the matching INVALIDATE, then [`free_detached`](Self::free_detached).
pub struct X86FirstStage<H: Hal> {
    radix: Radix<H, X86Pte>,
    levels: X86Levels,
}

impl<H: Hal> core::fmt::Debug for X86FirstStage<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("X86FirstStage")
            .field("pgd", &self.pgd())
            .field("levels", &self.levels)
            .field("table_pages", &self.table_pages())
            .finish()
    }
}

impl<H: Hal> X86FirstStage<H> {
    /// Empty tables.
    ///
    /// # Errors
    /// [`SvaError::NoMem`].
    pub fn new(levels: X86Levels) -> Result<Self, SvaError> {
        Ok(X86FirstStage {
            radix: Radix::new(levels.addr_width() - 9)?,
            levels,
        })
    }

    /// Paging depth.
    #[must_use]
    pub fn levels(&self) -> X86Levels {
        self.levels
    }

    /// Guest-physical address of the top-level table (PML4 or PML5).
    #[must_use]
    pub fn pgd(&self) -> u64 {
        self.radix.root_pa()
    }

    /// The ATTACH_TABLE descriptor binding these tables to `pasid`.
    #[must_use]
    pub fn desc(&self, pasid: u32, flags: VtdFlags) -> TableDesc {
        TableDesc::Vtd {
            pasid,
            addr_width: self.levels.addr_width(),
            pgd: self.pgd(),
            flags,
        }
    }

    /// Table pages in use (top level included).
    #[must_use]
    pub fn table_pages(&self) -> usize {
        self.radix.live_pages()
    }

    /// Table pages unlinked by [`unmap`](Self::unmap), kept until
    /// [`free_detached`](Self::free_detached).
    #[must_use]
    pub fn detached_pages(&self) -> usize {
        self.radix.detached_pages()
    }

    /// Frees the unlinked table pages; call after the INVALIDATE covering the unmap.
    pub fn free_detached(&mut self) {
        self.radix.free_detached();
    }

    fn width(&self) -> u32 {
        self.levels.addr_width()
    }

    /// The index address of a canonical `[va, last]` that stays in one half.
    fn index_addr(&self, va: u64, last: u64) -> Result<u64, SvaError> {
        let half = 1u64 << (self.width() - 1);
        let lower = last < half;
        let upper = va >= half.wrapping_neg();
        if !(lower || upper) || va > last {
            return Err(SvaError::OutOfRange);
        }
        Ok(va & ((1u64 << self.width()) - 1))
    }

    /// The canonical address of an index address (for error reports).
    fn canonical(&self, ia: u64) -> u64 {
        let half = 1u64 << (self.width() - 1);
        if ia & half != 0 {
            ia | !((1u64 << self.width()) - 1)
        } else {
            ia
        }
    }

    fn input(&self, va: u64, size: u64) -> Result<u64, SvaError> {
        let last = range::input(va, size)?;
        self.index_addr(va, last)
    }

    /// Maps `[va, va + size)` to `[pa, pa + size)` with 1 GiB / 2 MiB pages where both
    /// addresses and the remaining size allow, 4 KiB pages elsewhere. The range must be
    /// canonical and in one half of the address space.
    ///
    /// # Errors
    /// [`SvaError::Unaligned`], [`SvaError::EmptyRange`], [`SvaError::OutOfRange`],
    /// [`SvaError::OutputTooWide`] (beyond 52 bits), [`SvaError::AlreadyMapped`] (then nothing
    /// changed), [`SvaError::NoMem`].
    pub fn map(&mut self, va: u64, pa: u64, size: u64, perms: Perms) -> Result<(), SvaError> {
        let ia = self.input(va, size)?;
        range::output(pa, size, X86_OUTPUT_BITS)?;
        self.radix.map(ia, pa, size, perms).map_err(|e| match e {
            SvaError::AlreadyMapped { va } => SvaError::AlreadyMapped {
                va: self.canonical(va),
            },
            other => other,
        })
    }

    /// Unmaps whatever is mapped in `[va, va + size)` (holes are fine), splitting large pages
    /// that straddle the ends. Returns the number of bytes unmapped.
    ///
    /// # Errors
    /// Argument errors as [`map`](Self::map); [`SvaError::NoMem`] if a split needs a page.
    pub fn unmap(&mut self, va: u64, size: u64) -> Result<u64, SvaError> {
        let ia = self.input(va, size)?;
        self.radix.unmap(ia, size)
    }

    /// Sets `perms` on whatever is mapped in `[va, va + size)`. Returns the bytes changed.
    ///
    /// # Errors
    /// As [`unmap`](Self::unmap).
    pub fn protect(&mut self, va: u64, size: u64, perms: Perms) -> Result<u64, SvaError> {
        let ia = self.input(va, size)?;
        self.radix.protect(ia, size, perms)
    }

    /// Walks the tables in memory for `va`; `None` if unmapped or not canonical.
    #[must_use]
    pub fn translate(&self, va: u64) -> Option<Translation> {
        let ia = self.index_addr(va, va).ok()?;
        self.radix.translate(ia)
    }
}
