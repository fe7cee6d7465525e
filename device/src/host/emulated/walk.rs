//! What the stage-1 walkers share: the access being checked, the leaf they find, their faults,
//! and the one bounds-checked way to read a table entry from guest memory.

use bitflags::bitflags;
use virtio_iommu_spec::event::FaultReason;
use vm_memory::{Bytes, GuestAddress};

use crate::host::{Access, DmaAttrs};
use crate::GuestRam;

/// The access a walk is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessReq {
    /// A write (else a read).
    pub write: bool,
    /// An instruction fetch.
    pub exec: bool,
    /// Privileged (supervisor / EL1).
    pub privileged: bool,
}

impl AccessReq {
    /// The request for a DMA access with its attributes (exec only applies to reads).
    #[must_use]
    pub fn new(access: Access, attrs: DmaAttrs) -> Self {
        let write = access == Access::Write;
        AccessReq {
            write,
            exec: attrs.exec && !write,
            privileged: attrs.privileged,
        }
    }
}

bitflags! {
    /// Format-neutral permissions of a leaf, per privilege level, so cached leaves of both
    /// formats are checked the same way.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct LeafPerms: u8 {
        /// Unprivileged read.
        const USER_READ = 1 << 0;
        /// Unprivileged write.
        const USER_WRITE = 1 << 1;
        /// Unprivileged instruction fetch.
        const USER_EXEC = 1 << 2;
        /// Privileged read.
        const PRIV_READ = 1 << 3;
        /// Privileged write.
        const PRIV_WRITE = 1 << 4;
        /// Privileged instruction fetch.
        const PRIV_EXEC = 1 << 5;
    }
}

impl LeafPerms {
    /// Whether these permissions allow `req`.
    #[must_use]
    pub fn allows(self, req: AccessReq) -> bool {
        let (read, write, exec) = if req.privileged {
            (Self::PRIV_READ, Self::PRIV_WRITE, Self::PRIV_EXEC)
        } else {
            (Self::USER_READ, Self::USER_WRITE, Self::USER_EXEC)
        };
        let need = if req.write {
            write
        } else if req.exec {
            read | exec
        } else {
            read
        };
        self.contains(need)
    }
}

/// The leaf entry a walk ends at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    /// Input address of the leaf page's first byte.
    pub va: u64,
    /// Guest-physical address of the leaf page's first byte.
    pub gpa: u64,
    /// log2 of the leaf page size: 12, 21 or 30.
    pub shift: u32,
    /// What the leaf allows.
    pub perms: LeafPerms,
}

impl Leaf {
    /// The last input address the leaf translates.
    #[must_use]
    pub fn last(&self) -> u64 {
        self.va | ((1u64 << self.shift) - 1)
    }
}

/// Why a stage-1 walk failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    /// An entry on the way is not present (Arm: valid bit clear; x86: P clear).
    #[error("a table entry is not present")]
    NotPresent,
    /// The leaf forbids the access (Arm AP/XN, x86 R/W, U/S, XD).
    #[error("the leaf forbids the access")]
    Permission,
    /// Arm: the leaf's access flag is clear (the walker never sets it).
    #[error("the leaf's access flag is clear")]
    AccessFlag,
    /// The input address is outside the table's range (above 2^VA bits, non-canonical).
    #[error("the input address is outside the table's range")]
    AddressSize,
    /// The context forbids the access whatever the entries say: Arm EPD0 set, VT-d privileged
    /// request without SRE.
    #[error("the translation context forbids the access")]
    Forbidden,
    /// No translation context: PASID beyond the CD table, CD or L1 descriptor not valid,
    /// `s1dss` TERM for DMA without PASID.
    #[error("no translation context for the access")]
    NoContext,
    /// A malformed table: reserved bits, bad CD fields, a pointer outside guest RAM.
    #[error("the guest table is malformed")]
    Malformed,
}

impl WalkError {
    /// Whether the guest can fix this by editing its page table (a page request may ask it to).
    #[must_use]
    pub const fn recoverable(self) -> bool {
        matches!(
            self,
            WalkError::NotPresent | WalkError::Permission | WalkError::AccessFlag
        )
    }

    /// The fault reason reported to the guest.
    #[must_use]
    pub const fn reason(self) -> FaultReason {
        match self {
            WalkError::NotPresent
            | WalkError::Permission
            | WalkError::AccessFlag
            | WalkError::AddressSize
            | WalkError::Forbidden => FaultReason::Mapping,
            WalkError::NoContext => FaultReason::Domain,
            WalkError::Malformed => FaultReason::Unknown,
        }
    }
}

/// Guest memory as the walkers read it: one little-endian 64-bit entry at a time. Every walker
/// reads through this, so a wrapper can count (and tests bound) the reads of one walk.
pub trait TableMemory {
    /// The entry at `gpa`.
    ///
    /// # Errors
    /// [`WalkError::Malformed`] when its 8 bytes are not all in guest RAM (or wrap).
    fn read_entry(&self, gpa: u64) -> Result<u64, WalkError>;
}

impl TableMemory for GuestRam {
    fn read_entry(&self, gpa: u64) -> Result<u64, WalkError> {
        read_entry(self, gpa)
    }
}

/// Reads the little-endian 64-bit entry at `gpa`. An address whose 8 bytes are not all in
/// guest RAM (or that wraps) is a malformed table.
///
/// # Errors
/// [`WalkError::Malformed`].
pub fn read_entry(mem: &GuestRam, gpa: u64) -> Result<u64, WalkError> {
    gpa.checked_add(7).ok_or(WalkError::Malformed)?;
    let mut b = [0u8; 8];
    mem.read_slice(&mut b, GuestAddress(gpa))
        .map_err(|_| WalkError::Malformed)?;
    Ok(u64::from_le_bytes(b))
}

/// Guest memory that counts the entries read through it (tests and fuzzing check the walkers'
/// `MAX_READS` bounds with it).
#[cfg(any(test, feature = "test-support"))]
#[derive(Debug)]
pub struct CountingMemory<'a> {
    mem: &'a GuestRam,
    reads: std::cell::Cell<u32>,
}

#[cfg(any(test, feature = "test-support"))]
impl<'a> CountingMemory<'a> {
    /// Counts reads of `mem`, from zero.
    #[must_use]
    pub fn new(mem: &'a GuestRam) -> Self {
        CountingMemory {
            mem,
            reads: std::cell::Cell::new(0),
        }
    }

    /// Entries read since the last call (the count restarts at zero).
    pub fn take(&self) -> u32 {
        self.reads.replace(0)
    }
}

#[cfg(any(test, feature = "test-support"))]
impl TableMemory for CountingMemory<'_> {
    fn read_entry(&self, gpa: u64) -> Result<u64, WalkError> {
        self.reads.set(self.reads.get().saturating_add(1));
        read_entry(self.mem, gpa)
    }
}

/// The entry address of `index` in the table at `table`.
///
/// # Errors
/// [`WalkError::Malformed`] if it wraps.
pub fn entry_addr(table: u64, index: u64) -> Result<u64, WalkError> {
    index
        .checked_mul(8)
        .and_then(|off| table.checked_add(off))
        .ok_or(WalkError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perms() {
        let rd = AccessReq::new(Access::Read, DmaAttrs::default());
        let wr = AccessReq::new(Access::Write, DmaAttrs::default());
        let px = AccessReq::new(
            Access::Read,
            DmaAttrs {
                privileged: true,
                exec: true,
            },
        );
        assert!(LeafPerms::USER_READ.allows(rd));
        assert!(!LeafPerms::USER_READ.allows(wr));
        assert!(!LeafPerms::PRIV_EXEC.allows(px));
        assert!((LeafPerms::PRIV_EXEC | LeafPerms::PRIV_READ).allows(px));
        // Exec is dropped for writes.
        let wx = AccessReq::new(
            Access::Write,
            DmaAttrs {
                privileged: false,
                exec: true,
            },
        );
        assert!(!wx.exec);
    }

    /// Tables whose every entry points back at the table itself: every walk ends within its
    /// bound (at a leaf at the table), however the entries loop.
    #[test]
    fn self_referencing_tables_end_within_the_read_bounds() {
        use super::super::{aarch64, nested, smmuv3_cd, x86};
        use virtio_iommu_spec::ext::{VtdFlags, S1FMT_4KL2};
        use virtio_iommu_spec::formats::{aarch64 as arm, x86 as ia};
        let m = GuestRam::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
        let put = |gpa: u64, v: u64| m.write_slice(&v.to_le_bytes(), GuestAddress(gpa)).unwrap();
        put(0x1000, 0x1000 | arm::VALID | arm::TABLE_OR_PAGE | arm::AF);
        put(0x2000, 0x2000 | ia::P | ia::RW | ia::US);
        // An L1 CD descriptor pointing at its own table, read as a CD: V clear, no context.
        put(0x3000, 0x3000 | 1);
        let c = CountingMemory::new(&m);
        let leaf = aarch64::walk(&c, 0x1000, 16, 0).unwrap();
        assert_eq!(
            (leaf.gpa, leaf.shift, c.take()),
            (0x1000, 12, aarch64::MAX_READS)
        );
        let leaf = x86::walk(&c, 0x2000, 57, VtdFlags::empty(), 0, false).unwrap();
        assert_eq!(
            (leaf.gpa, leaf.shift, c.take()),
            (0x2000, 12, x86::MAX_READS)
        );
        assert_eq!(
            smmuv3_cd::fetch_cd(&c, S1FMT_4KL2, 0x3000, 8, 0),
            Err(WalkError::NoContext)
        );
        assert_eq!(c.take(), smmuv3_cd::MAX_READS);
        const { assert!(nested::MAX_READS == 7) };
    }
}
