//! The radix-tree engine both stage-1 formats share: 512 eight-byte entries per 4 KiB table,
//! 9 input bits per level, 4 KiB pages and 2 MiB / 1 GiB blocks. A [`PteFormat`] says how
//! entries are encoded; the engine allocates, fills, splits and frees the tables.
//!
//! The engine works on *index addresses* (the input bits the tables decode, below
//! `2^(top_shift + 9)`); the format wrappers check and convert virtual addresses.
//!
//! Beside the memory the device reads, every table keeps its child tables in a map, so that
//! the engine can free them and a software walk can check that the two agree.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::marker::PhantomData;

use virtio_drivers::Hal;
use virtio_iommu_spec::formats::LEVEL_BITS;
pub(crate) use virtio_iommu_spec::formats::PAGE_SHIFT;

use super::dma::{publish, DmaPages, WORDS_PER_PAGE};
use super::error::SvaError;
use super::perms::{Perms, Translation};

/// Entries per table.
const ENTRIES: usize = WORDS_PER_PAGE;

/// A decoded table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    /// Not present.
    Invalid,
    /// Points to the next-level table at this address.
    Table(u64),
    /// Maps the entry's whole span to `pa`.
    Leaf {
        /// Output address of the span's first byte.
        pa: u64,
        /// The leaf's permissions.
        perms: Perms,
    },
    /// A combination the format forbids (the engine never writes one).
    Malformed,
}

/// How one stage-1 format encodes entries; `shift` is log2 of the span of an entry at the
/// entry's level (12, 21, 30, 39 or 48).
pub(crate) trait PteFormat {
    /// A pointer to the next-level table at `pa`.
    fn table(pa: u64) -> u64;
    /// A leaf mapping `2^shift` bytes at `pa` (only 12, 21 and 30 are asked for).
    fn leaf(pa: u64, shift: u32, perms: Perms) -> u64;
    /// Decodes an entry of a level whose entries span `2^shift` bytes.
    fn decode(raw: u64, shift: u32) -> Entry;
}

/// Levels at which both formats allow leaves above 4 KiB: 2 MiB and 1 GiB.
fn block_allowed(shift: u32) -> bool {
    shift == 21 || shift == 30
}

/// The table index of `ia` at a level whose entries span `2^shift` bytes.
fn index(ia: u64, shift: u32) -> usize {
    // Masked to 9 bits, so the value fits any `usize`.
    #[allow(clippy::cast_possible_truncation)]
    let i = ((ia >> shift) & (ENTRIES as u64 - 1)) as usize;
    i
}

/// `1 << shift` for the shifts the engine uses (< 64).
const fn span(shift: u32) -> u64 {
    1u64 << shift
}

/// One table page and its child tables, by entry index.
struct Node<H: Hal> {
    page: DmaPages<H>,
    children: BTreeMap<usize, Node<H>>,
    /// Entries that are not `Invalid`.
    used: usize,
}

impl<H: Hal> Node<H> {
    fn new() -> Result<Self, SvaError> {
        Ok(Node {
            page: DmaPages::new(1)?,
            children: BTreeMap::new(),
            used: 0,
        })
    }
}

/// What a range walk does to the leaves it covers.
#[derive(Clone, Copy)]
enum RangeOp {
    Unmap,
    Protect(Perms),
}

/// Counters threaded through a walk.
struct Books<H: Hal> {
    live_pages: usize,
    detached: Vec<DmaPages<H>>,
}

/// A stage-1 page table in guest memory.
pub(crate) struct Radix<H: Hal, F: PteFormat> {
    root: Node<H>,
    /// log2 of the span of a root entry.
    top_shift: u32,
    books: Books<H>,
    _format: PhantomData<F>,
}

impl<H: Hal, F: PteFormat> Radix<H, F> {
    /// An empty table whose root entries span `2^top_shift` bytes (`top_shift` is 21, 30, 39
    /// or 48: two to five levels).
    pub(crate) fn new(top_shift: u32) -> Result<Self, SvaError> {
        Ok(Radix {
            root: Node::new()?,
            top_shift,
            books: Books {
                live_pages: 1,
                detached: Vec::new(),
            },
            _format: PhantomData,
        })
    }

    /// Address of the root table.
    pub(crate) fn root_pa(&self) -> u64 {
        self.root.page.paddr()
    }

    /// Table pages in use, root included.
    pub(crate) fn live_pages(&self) -> usize {
        self.books.live_pages
    }

    /// Table pages unlinked by `unmap` and not yet freed.
    pub(crate) fn detached_pages(&self) -> usize {
        self.books.detached.len()
    }

    /// Frees the detached table pages.
    pub(crate) fn free_detached(&mut self) {
        self.books.detached.clear();
    }

    /// Maps `[ia, ia + size)` to `[pa, pa + size)` with the largest leaves alignment allows.
    /// The caller checked alignment and ranges. If any part is mapped already, what this call
    /// mapped is unmapped again and the error names the first mapped address.
    pub(crate) fn map(
        &mut self,
        ia: u64,
        pa: u64,
        size: u64,
        perms: Perms,
    ) -> Result<(), SvaError> {
        let mut done = 0u64;
        while done < size {
            let (cur_ia, cur_pa, left) = (ia + done, pa + done, size - done);
            let leaf_shift = [30, 21]
                .into_iter()
                .find(|&s| {
                    s <= self.top_shift
                        && block_allowed(s)
                        && cur_ia % span(s) == 0
                        && cur_pa % span(s) == 0
                        && left >= span(s)
                })
                .unwrap_or(PAGE_SHIFT);
            let r = Self::map_in(
                &mut self.root,
                self.top_shift,
                cur_ia,
                cur_pa,
                leaf_shift,
                perms,
                &mut self.books,
            );
            if let Err(e) = r {
                if done > 0 {
                    // Everything in [ia, ia + done) was mapped by this call.
                    self.range(ia, done, RangeOp::Unmap)?;
                }
                return Err(e);
            }
            done += span(leaf_shift);
        }
        Ok(())
    }

    fn map_in(
        node: &mut Node<H>,
        shift: u32,
        ia: u64,
        pa: u64,
        leaf_shift: u32,
        perms: Perms,
        books: &mut Books<H>,
    ) -> Result<(), SvaError> {
        let idx = index(ia, shift);
        let entry = F::decode(node.page.read(idx), shift);
        if shift == leaf_shift {
            if entry != Entry::Invalid {
                return Err(SvaError::AlreadyMapped { va: ia });
            }
            node.page.write(idx, F::leaf(pa, shift, perms));
            node.used += 1;
            return Ok(());
        }
        match entry {
            Entry::Invalid => {
                let child = Node::new()?;
                // The zeroed child is complete before the entry pointing to it is written.
                publish();
                node.page.write(idx, F::table(child.page.paddr()));
                node.used += 1;
                node.children.insert(idx, child);
                books.live_pages += 1;
            }
            Entry::Table(_) => {}
            Entry::Leaf { .. } => return Err(SvaError::AlreadyMapped { va: ia }),
            Entry::Malformed => return Err(SvaError::Corrupt),
        }
        let child = Self::child_mut(node, idx, shift)?;
        Self::map_in(child, shift - LEVEL_BITS, ia, pa, leaf_shift, perms, books)
    }

    /// The child table entry `idx` points to, if memory and bookkeeping agree.
    fn child_mut(node: &mut Node<H>, idx: usize, shift: u32) -> Result<&mut Node<H>, SvaError> {
        let Entry::Table(pa) = F::decode(node.page.read(idx), shift) else {
            return Err(SvaError::Corrupt);
        };
        match node.children.get_mut(&idx) {
            Some(c) if c.page.paddr() == pa => Ok(c),
            _ => Err(SvaError::Corrupt),
        }
    }

    /// Unmaps every leaf in `[ia, ia + size)`, splitting blocks that straddle its ends; holes
    /// are skipped. Tables left empty are unlinked and kept until `free_detached`. Returns the
    /// number of bytes unmapped.
    pub(crate) fn unmap(&mut self, ia: u64, size: u64) -> Result<u64, SvaError> {
        self.range(ia, size, RangeOp::Unmap)
    }

    /// Rewrites the permissions of every leaf in `[ia, ia + size)`, splitting blocks that
    /// straddle its ends; holes are skipped. Returns the number of bytes changed.
    pub(crate) fn protect(&mut self, ia: u64, size: u64, perms: Perms) -> Result<u64, SvaError> {
        self.range(ia, size, RangeOp::Protect(perms))
    }

    fn range(&mut self, ia: u64, size: u64, op: RangeOp) -> Result<u64, SvaError> {
        let end = ia.checked_add(size).ok_or(SvaError::EmptyRange)?;
        Self::range_in(
            &mut self.root,
            self.top_shift,
            0,
            ia,
            end,
            op,
            &mut self.books,
        )
    }

    /// Applies `op` to `[start, end)` within the table `node`, whose first entry starts at
    /// `base`.
    fn range_in(
        node: &mut Node<H>,
        shift: u32,
        base: u64,
        start: u64,
        end: u64,
        op: RangeOp,
        books: &mut Books<H>,
    ) -> Result<u64, SvaError> {
        let node_end = base.saturating_add(span(shift + LEVEL_BITS));
        let (lo, hi) = (start.max(base), end.min(node_end));
        if lo >= hi {
            return Ok(0);
        }
        let mut bytes = 0u64;
        for idx in index(lo, shift)..=index(hi - 1, shift) {
            // `idx` < 512, so the widening is exact.
            let e_base = base + (idx as u64) * span(shift);
            let e_end = e_base + span(shift);
            let (o_lo, o_hi) = (lo.max(e_base), hi.min(e_end));
            let whole = o_lo == e_base && o_hi == e_end;
            match F::decode(node.page.read(idx), shift) {
                Entry::Invalid => continue,
                Entry::Malformed => return Err(SvaError::Corrupt),
                Entry::Leaf { pa, .. } if whole => {
                    match op {
                        RangeOp::Unmap => {
                            node.page.write(idx, 0);
                            node.used = node.used.saturating_sub(1);
                        }
                        RangeOp::Protect(p) => node.page.write(idx, F::leaf(pa, shift, p)),
                    }
                    bytes += span(shift);
                    continue;
                }
                Entry::Leaf { .. } => Self::split(node, idx, shift, books)?,
                Entry::Table(_) => {}
            }
            let empty = {
                let child = Self::child_mut(node, idx, shift)?;
                bytes += Self::range_in(child, shift - LEVEL_BITS, e_base, o_lo, o_hi, op, books)?;
                child.used == 0
            };
            if empty {
                node.page.write(idx, 0);
                node.used = node.used.saturating_sub(1);
                if let Some(child) = node.children.remove(&idx) {
                    books.detached.push(child.page);
                    books.live_pages = books.live_pages.saturating_sub(1);
                }
            }
        }
        Ok(bytes)
    }

    /// Replaces the block at `idx` by a table of the next level mapping the same span with
    /// the same permissions (one 64-bit write swaps them, so the translation never changes).
    fn split(
        node: &mut Node<H>,
        idx: usize,
        shift: u32,
        books: &mut Books<H>,
    ) -> Result<(), SvaError> {
        let Entry::Leaf { pa, perms } = F::decode(node.page.read(idx), shift) else {
            return Err(SvaError::Corrupt);
        };
        if shift <= PAGE_SHIFT {
            // A 4 KiB page cannot be split; page-aligned ranges never ask to.
            return Err(SvaError::Corrupt);
        }
        let sub = shift - LEVEL_BITS;
        let mut child = Node::new()?;
        for j in 0..ENTRIES {
            child
                .page
                .write(j, F::leaf(pa + (j as u64) * span(sub), sub, perms));
        }
        child.used = ENTRIES;
        publish();
        node.page.write(idx, F::table(child.page.paddr()));
        node.children.insert(idx, child);
        books.live_pages += 1;
        Ok(())
    }

    /// Walks the table in memory for `ia`, checking each table pointer against the
    /// bookkeeping; `None` if unmapped (or if the two disagree).
    pub(crate) fn translate(&self, ia: u64) -> Option<Translation> {
        let mut node = &self.root;
        let mut shift = self.top_shift;
        loop {
            let idx = index(ia, shift);
            match F::decode(node.page.read(idx), shift) {
                Entry::Invalid | Entry::Malformed => return None,
                Entry::Leaf { pa, perms } => {
                    return Some(Translation {
                        pa: pa + (ia & (span(shift) - 1)),
                        perms,
                        page_size: span(shift),
                    })
                }
                Entry::Table(pa) => {
                    let child = node.children.get(&idx)?;
                    if child.page.paddr() != pa || shift <= PAGE_SHIFT {
                        log::error!("stage-1 table at level shift {shift} disagrees with memory");
                        return None;
                    }
                    node = child;
                    shift -= LEVEL_BITS;
                }
            }
        }
    }
}
