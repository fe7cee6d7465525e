//! SMMUv3 context-descriptor tables: finding and decoding the CD of a substream (PASID).
//!
//! A CD is 64 bytes, 8 little-endian words; only words 0 and 1 are read. Word 0: T0SZ [5:0],
//! TG0 [7:6] (must be 0, 4 KiB), EPD0 bit 14, V bit 31, AA64 bit 41 (must be 1), ASID [63:48].
//! Word 1: TTB0 [51:4] with [11:4] zero. Linear tables hold `2^s1cdmax` CDs; 4KL2 tables have
//! an L1 array of 8-byte descriptors (bit 0 valid, L2 pointer [51:12]) indexed by `ssid >> 6`,
//! each L2 table holding 64 CDs. At most two reads (L1, then the CD's two words).

use virtio_iommu_spec::ext::{S1FMT_4KL2, S1FMT_LINEAR};
use virtio_iommu_spec::formats::aarch64::T0SZ_RANGE;
use virtio_iommu_spec::formats::cd_table::{
    CD0_AA64, CD0_ASID_SHIFT, CD0_EPD0, CD0_T0SZ_MASK, CD0_TG0_MASK, CD0_V, CD1_TTB0_MASK,
    CD1_TTB0_RES0, CD_SIZE, L1_L2PTR_MASK, L1_VALID, L2_CDS_LOG2,
};
use virtio_iommu_spec::formats::ENTRY_SIZE;

use super::walk::{TableMemory, WalkError};

/// Entry reads of one CD lookup at most: the L1 descriptor, then the CD's two words.
pub const MAX_READS: u32 = 3;

/// The fields of a CD the walker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextDesc {
    /// Address-space ID: the tag `InvalFlags::ARCHID` invalidations name.
    pub asid: u16,
    /// T0SZ: the input space is `64 − t0sz` bits.
    pub t0sz: u32,
    /// Guest-physical address of the stage-1 table.
    pub ttb0: u64,
    /// TTB0 walks disabled: every access faults.
    pub epd0: bool,
}

/// Reads the CD of substream `ssid`.
///
/// # Errors
/// `NoContext` for an ssid beyond `2^s1cdmax`, an invalid L1 descriptor or CD; `Malformed` for
/// bad CD fields, an unsupported `s1fmt` or a table outside guest RAM.
pub fn fetch_cd(
    mem: &impl TableMemory,
    s1fmt: u8,
    s1contextptr: u64,
    s1cdmax: u32,
    ssid: u32,
) -> Result<ContextDesc, WalkError> {
    if s1cdmax >= 32 || ssid >> s1cdmax != 0 {
        return Err(WalkError::NoContext);
    }
    let cd_addr = match s1fmt {
        S1FMT_LINEAR => s1contextptr.checked_add(u64::from(ssid) * CD_SIZE),
        S1FMT_4KL2 => {
            let l1_addr = s1contextptr
                .checked_add(u64::from(ssid >> L2_CDS_LOG2) * ENTRY_SIZE)
                .ok_or(WalkError::Malformed)?;
            let l1 = mem.read_entry(l1_addr)?;
            if l1 & L1_VALID == 0 {
                return Err(WalkError::NoContext);
            }
            let index = ssid & ((1 << L2_CDS_LOG2) - 1);
            (l1 & L1_L2PTR_MASK).checked_add(u64::from(index) * CD_SIZE)
        }
        _ => return Err(WalkError::Malformed),
    }
    .ok_or(WalkError::Malformed)?;
    let w0 = mem.read_entry(cd_addr)?;
    let w1 = mem.read_entry(cd_addr.checked_add(8).ok_or(WalkError::Malformed)?)?;
    decode(w0, w1)
}

/// Decodes words 0 and 1 of a CD.
///
/// # Errors
/// `NoContext` if V is clear, `Malformed` for AA64 clear, TG0 ≠ 0, T0SZ outside 16..=39 or
/// TTB0 bits [11:4] set.
pub fn decode(w0: u64, w1: u64) -> Result<ContextDesc, WalkError> {
    if w0 & CD0_V == 0 {
        return Err(WalkError::NoContext);
    }
    // The mask and the shift leave 6 and 16 bits.
    let t0sz = u32::try_from(w0 & CD0_T0SZ_MASK).unwrap_or(u32::MAX);
    let asid = u16::try_from(w0 >> CD0_ASID_SHIFT).unwrap_or(0);
    let ttb0 = w1 & CD1_TTB0_MASK;
    if w0 & CD0_AA64 == 0
        || w0 & CD0_TG0_MASK != 0
        || !T0SZ_RANGE.contains(&t0sz)
        || ttb0 & CD1_TTB0_RES0 != 0
    {
        return Err(WalkError::Malformed);
    }
    Ok(ContextDesc {
        asid,
        t0sz,
        ttb0,
        epd0: w0 & CD0_EPD0 != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GuestRam;
    use vm_memory::{Bytes, GuestAddress};

    const V: u64 = CD0_V;
    const AA64: u64 = CD0_AA64;

    fn put(m: &GuestRam, gpa: u64, v: u64) {
        m.write_slice(&v.to_le_bytes(), GuestAddress(gpa)).unwrap();
    }

    #[test]
    fn decode_fields() {
        let w0 = V | AA64 | 16 | (7 << 48) | (1 << 14);
        assert_eq!(
            decode(w0, 0x5000),
            Ok(ContextDesc {
                asid: 7,
                t0sz: 16,
                ttb0: 0x5000,
                epd0: true
            })
        );
        assert_eq!(decode(w0 & !V, 0x5000), Err(WalkError::NoContext));
        assert_eq!(decode(w0 & !AA64, 0x5000), Err(WalkError::Malformed));
        assert_eq!(decode(w0 | (1 << 6), 0x5000), Err(WalkError::Malformed));
        assert_eq!(decode((w0 & !0x3f) | 40, 0x5000), Err(WalkError::Malformed));
        assert_eq!(decode(w0, 0x5010), Err(WalkError::Malformed));
        // Bits outside [51:4] of word 1 are ignored.
        assert_eq!(decode(w0, 0x5003).unwrap().ttb0, 0x5000);
    }

    #[test]
    fn linear_and_two_level() {
        let m = GuestRam::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
        put(&m, 0x1000 + 3 * 64, V | AA64 | 16);
        put(&m, 0x1000 + 3 * 64 + 8, 0x4000);
        assert_eq!(
            fetch_cd(&m, S1FMT_LINEAR, 0x1000, 2, 3).unwrap().ttb0,
            0x4000
        );
        assert_eq!(
            fetch_cd(&m, S1FMT_LINEAR, 0x1000, 2, 4),
            Err(WalkError::NoContext)
        );
        assert_eq!(
            fetch_cd(&m, S1FMT_LINEAR, 0x1000, 2, 2),
            Err(WalkError::NoContext)
        );
        // PASID 67 = L1 index 1, CD 3 of the L2 table at 0x1000.
        put(&m, 0x2008, 0x1000 | 1);
        assert_eq!(
            fetch_cd(&m, S1FMT_4KL2, 0x2000, 20, 67).unwrap().ttb0,
            0x4000
        );
        assert_eq!(
            fetch_cd(&m, S1FMT_4KL2, 0x2000, 20, 3),
            Err(WalkError::NoContext)
        );
        put(&m, 0x2010, 0xfff_0000_0000 | 1);
        assert_eq!(
            fetch_cd(&m, S1FMT_4KL2, 0x2000, 20, 130),
            Err(WalkError::Malformed)
        );
        assert_eq!(
            fetch_cd(&m, S1FMT_LINEAR, u64::MAX - 63, 2, 1),
            Err(WalkError::Malformed)
        );
        assert_eq!(fetch_cd(&m, 2, 0x2000, 20, 0), Err(WalkError::Malformed));
    }
}
