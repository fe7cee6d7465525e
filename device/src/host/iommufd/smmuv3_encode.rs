//! Pure SMMUv3 encoders for the vIOMMU path (field layouts: SMMUv3 spec §5.2 STE, §4 commands,
//! §7.3 events; bit positions as in Linux `arm-smmu-v3.h`): the vSTE of a guest CD table, the
//! CMDQ commands of one virtio INVALIDATE, and the virtio fault of a vEVENTQ record.
//!
//! Guest input is hostile: every count is capped and anything that cannot be expressed exactly
//! falls back to a broader invalidation, never to a narrower one.

use virtio_iommu_spec::event::{FaultEvent, FaultFlags, FaultReason};
use virtio_iommu_spec::ext::{InvalCaches, InvalScope};
use virtio_iommu_spec::request::Invalidate;

use crate::host::HostError;

/// STE.Config values (dword 0, bits 3:1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SteCfg {
    /// Every access aborts.
    Abort,
    /// Stage 1 bypassed (only the parent translates).
    Bypass,
    /// Stage 1 through the guest CD table.
    S1Translate,
}

impl SteCfg {
    const fn bits(self) -> u64 {
        match self {
            SteCfg::Abort => 0,
            SteCfg::Bypass => 4,
            SteCfg::S1Translate => 5,
        }
    }
}

/// S1CIR/S1COR: write-back read-allocate (how Linux fetches CD tables).
const S1C_WBRA: u64 = 1;
/// S1CSH: inner shareable.
const S1CSH_ISH: u64 = 3;
/// S1ContextPtr: bits 51:6.
const S1CTXPTR_MASK: u64 = ((1 << 52) - 1) & !0x3f;

/// The two vSTE dwords (`iommu_hwpt_arm_smmuv3.ste`) of a guest CD table. Only the fields the
/// kernel allows are set; EATS stays 0 (no ATS translation requests). `stall_disable` sets
/// S1STALLD: stalls cannot be forwarded on this path, so faults must terminate.
///
/// # Errors
/// `Invalid` for an out-of-range field (the kernel would answer `EIO`).
pub fn vste(
    cfg: SteCfg,
    s1fmt: u8,
    s1dss: u8,
    s1contextptr: u64,
    s1cdmax: u32,
    stall_disable: bool,
) -> Result<[u64; 2], HostError> {
    let mut d0 = 1 | (cfg.bits() << 1);
    let mut d1 = 0;
    if cfg == SteCfg::S1Translate {
        if s1fmt > 2 || s1dss > 2 || s1cdmax > 31 || s1contextptr & !S1CTXPTR_MASK != 0 {
            return Err(HostError::Invalid);
        }
        d0 |= (u64::from(s1fmt) << 4) | s1contextptr | (u64::from(s1cdmax) << 59);
        d1 = u64::from(s1dss) | (S1C_WBRA << 2) | (S1C_WBRA << 4) | (S1CSH_ISH << 6);
        if stall_disable {
            d1 |= 1 << 27;
        }
    }
    Ok([d0, d1])
}

/// Little-endian bytes of 64-bit words (vSTE, CMDQ entries).
#[must_use]
pub fn le_bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// One 16-byte CMDQ command.
pub type Cmd = [u64; 2];

/// Command opcodes the kernel forwards from a vIOMMU.
pub mod op {
    /// Invalidate one CD (StreamID, SubstreamID).
    pub const CFGI_CD: u64 = 0x05;
    /// Invalidate every CD of a StreamID.
    pub const CFGI_CD_ALL: u64 = 0x06;
    /// Invalidate every stage-1 TLB entry of the VMID.
    pub const TLBI_NH_ALL: u64 = 0x10;
    /// Invalidate the TLB entries of one ASID.
    pub const TLBI_NH_ASID: u64 = 0x11;
    /// Invalidate by VA within one ASID.
    pub const TLBI_NH_VA: u64 = 0x12;
    /// Invalidate by VA in every ASID.
    pub const TLBI_NH_VAA: u64 = 0x13;
    /// Invalidate a device's ATC (ATS).
    pub const ATC_INV: u64 = 0x40;
}

/// Most commands one INVALIDATE may produce (guest input must not size our allocations).
pub const MAX_CMDS: usize = 64;
/// Most single-page TLBI_NH_VA commands before a range is flushed by ASID/VMID instead.
pub const MAX_PAGE_CMDS: u64 = 32;
/// ATC_INV size meaning "the whole address space".
const ATC_SIZE_ALL: u64 = 52;
/// SubstreamIDs are 20 bits.
const MAX_SSID: u32 = (1 << 20) - 1;

/// StreamID field (dword 0, bits 63:32) shared by CFGI_* and ATC_INV.
fn sid(vsid: u32) -> u64 {
    u64::from(vsid) << 32
}

fn ssid_ok(pasid: Option<u32>) -> Option<u32> {
    pasid.filter(|p| *p <= MAX_SSID)
}

/// The CMDQ commands for `inval` on the endpoint with StreamID `vsid`, in the order the
/// hardware needs them (CD caches, then TLB, then ATC). `range_inv`: the host SMMU has range
/// invalidation (IDR3.RIL).
#[must_use]
pub fn commands(inval: &Invalidate, vsid: u32, range_inv: bool) -> Vec<Cmd> {
    let mut out = Vec::new();
    let pasid = match inval.scope {
        InvalScope::Domain => None,
        InvalScope::Pasid(p) => Some(p),
        InvalScope::Range { pasid, .. } => pasid,
    };
    if inval.caches.contains(InvalCaches::PASID) {
        out.push(match ssid_ok(pasid) {
            // Leaf 0: also drop a cached L1 CD descriptor.
            Some(p) => [op::CFGI_CD | (u64::from(p) << 12) | sid(vsid), 0],
            None => [op::CFGI_CD_ALL | sid(vsid), 0],
        });
    }
    if inval.caches.contains(InvalCaches::IOTLB) {
        tlbi(inval, range_inv, &mut out);
    }
    if inval.caches.contains(InvalCaches::DEV_IOTLB) {
        out.push(atc_inv(inval.scope, ssid_ok(pasid), vsid));
    }
    out.truncate(MAX_CMDS);
    out
}

fn tlbi(inval: &Invalidate, range_inv: bool, out: &mut Vec<Cmd>) {
    // An ASID is 16 bits; a larger archid cannot name one, so flush the whole VMID.
    let asid = inval.archid.map(|a| u16::try_from(a).ok());
    let broad = match asid {
        Some(Some(a)) => [op::TLBI_NH_ASID | (u64::from(a) << 48), 0],
        _ => [op::TLBI_NH_ALL, 0],
    };
    let InvalScope::Range {
        start,
        nr_pages,
        granule,
        ..
    } = inval.scope
    else {
        // Domain: everything; PASID: SMMU TLBs are tagged by ASID, not PASID.
        out.push(if matches!(inval.scope, InvalScope::Domain) {
            [op::TLBI_NH_ALL, 0]
        } else {
            broad
        });
        return;
    };
    let (opcode, asid_bits) = match asid {
        None => (op::TLBI_NH_VAA, 0),
        Some(Some(a)) => (op::TLBI_NH_VA, u64::from(a) << 48),
        Some(None) => return out.push(broad),
    };
    let Some((first, pages)) = page_span(start, nr_pages, granule) else {
        return out.push(broad);
    };
    let leaf = u64::from(inval.leaf);
    let g = u32::from(granule);
    let tg = match granule {
        12 => 1,
        14 => 2,
        16 => 3,
        _ => 0,
    };
    let before = out.len();
    if range_inv && tg != 0 {
        // Range commands cover (NUM + 1) << SCALE pages of the granule each (Linux's split).
        let (mut page, mut left) = (first, pages);
        while left > 0 {
            let scale = left.trailing_zeros();
            let num = (left >> scale) & 31;
            let addr = page << g;
            out.push([
                opcode | ((num - 1) << 12) | (u64::from(scale) << 20) | asid_bits,
                leaf | (tg << 10) | (addr & !0xfff),
            ]);
            left -= num << scale;
            page += num << scale;
            if out.len() - before > MAX_CMDS / 2 {
                break;
            }
        }
        if left == 0 {
            return;
        }
    } else if pages <= MAX_PAGE_CMDS {
        for i in 0..pages {
            let addr = (first + i) << g;
            out.push([opcode | asid_bits, leaf | (addr & !0xfff)]);
        }
        return;
    }
    out.truncate(before);
    out.push(broad);
}

/// First page number and page count of the pages of size 2^`granule` that
/// `[start, start + nr_pages · 2^granule)` touches; `None` if it cannot be counted.
fn page_span(start: u64, nr_pages: u64, granule: u8) -> Option<(u64, u64)> {
    if !(12..64).contains(&granule) || nr_pages == 0 {
        return None;
    }
    let g = u32::from(granule);
    let len = nr_pages.checked_mul(1u64 << g)?;
    let last = start.checked_add(len - 1)?;
    let first = start >> g;
    Some((first, (last >> g) - first + 1))
}

/// ATC_INV for `scope`: the whole space, or the aligned power-of-two span of 4 KiB pages that
/// covers the range (the encoding PCIe ATS invalidations need).
fn atc_inv(scope: InvalScope, ssid: Option<u32>, vsid: u32) -> Cmd {
    let d0 = op::ATC_INV | sid(vsid) | ssid.map_or(0, |p| (1 << 11) | (u64::from(p) << 12));
    let span = match scope {
        InvalScope::Range {
            start,
            nr_pages,
            granule,
            ..
        } if (12..64).contains(&granule) && nr_pages > 0 => nr_pages
            .checked_mul(1u64 << granule)
            .and_then(|len| start.checked_add(len - 1))
            .map(|last| (start >> 12, last >> 12)),
        _ => None,
    };
    match span {
        Some((lo, hi)) => {
            let log2 = u64::from(64 - (lo ^ hi).leading_zeros());
            if log2 >= ATC_SIZE_ALL {
                return [d0, ATC_SIZE_ALL];
            }
            let base = lo & !((1u64 << log2) - 1);
            [d0, log2 | (base << 12)]
        }
        None => [d0, ATC_SIZE_ALL],
    }
}

/// Size of one SMMUv3 vEVENTQ record (`iommu_vevent_arm_smmuv3`).
pub const EVENT_SIZE: usize = 32;

/// The StreamID (the vSID) of an event record.
#[must_use]
pub fn event_sid(rec: &[u8; EVENT_SIZE]) -> u32 {
    let d0 = word(rec, 0);
    u32::try_from(d0 >> 32).unwrap_or(u32::MAX)
}

fn word(rec: &[u8; EVENT_SIZE], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&rec[i * 8..i * 8 + 8]);
    u64::from_le_bytes(w)
}

/// The virtio fault of an SMMUv3 event record raised for `endpoint`: translation, address
/// size, access-flag and permission faults are MAPPING faults at the input address; bad STE,
/// CD or SubstreamID and a disabled stream are DOMAIN faults; anything else is UNKNOWN.
#[must_use]
pub fn event_to_fault(rec: &[u8; EVENT_SIZE], endpoint: u32) -> FaultEvent {
    let (d0, d1) = (word(rec, 0), word(rec, 1));
    let pasid = (d0 & (1 << 11) != 0).then(|| {
        // SubstreamID: bits 31:12, 20 bits.
        u32::try_from((d0 >> 12) & u64::from(MAX_SSID)).unwrap_or(0)
    });
    let (reason, address, access) = match d0 & 0xff {
        0x10..=0x13 => {
            let mut a = if d1 & (1 << 35) != 0 {
                FaultFlags::READ
            } else {
                FaultFlags::WRITE
            };
            a.set(FaultFlags::EXEC, d1 & (1 << 34) != 0);
            a.set(FaultFlags::PRIV, d1 & (1 << 33) != 0);
            (FaultReason::Mapping, Some(word(rec, 2)), a)
        }
        0x04 | 0x06 | 0x08 | 0x0a => (FaultReason::Domain, None, FaultFlags::empty()),
        _ => (FaultReason::Unknown, None, FaultFlags::empty()),
    };
    FaultEvent {
        reason,
        access,
        endpoint,
        address,
        pasid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inval(
        caches: InvalCaches,
        scope: InvalScope,
        archid: Option<u64>,
        leaf: bool,
    ) -> Invalidate {
        Invalidate {
            domain: 1,
            caches,
            scope,
            archid,
            leaf,
        }
    }

    fn range(pasid: Option<u32>, start: u64, nr_pages: u64, granule: u8) -> InvalScope {
        InvalScope::Range {
            pasid,
            start,
            nr_pages,
            granule,
        }
    }

    #[test]
    fn vste_fields() {
        let s = vste(SteCfg::S1Translate, 1, 2, 0x8_1234_5000, 4, true).unwrap();
        // V | Cfg 5 | S1Fmt 1 | ptr | S1CDMax 4.
        assert_eq!(s[0], 0x1 | 0xa | 0x10 | 0x8_1234_5000 | (4 << 59));
        // S1DSS 2 | CIR 1 | COR 1 | CSH 3 | S1STALLD.
        assert_eq!(s[1], 2 | 0x4 | 0x10 | 0xc0 | (1 << 27));
        assert_eq!(s[1], 0x0800_00d6);
        let b = le_bytes(&s);
        assert_eq!(b.len(), 16);
        assert_eq!(b[0], 0x1b);
        assert_eq!((b[11], b[15]), (0x08, 0));
        assert_eq!(
            vste(SteCfg::S1Translate, 0, 0, 0x1000, 0, false).unwrap(),
            [0x100b, 0xd4]
        );
        assert_eq!(vste(SteCfg::Abort, 9, 9, 0xfff, 99, true).unwrap(), [1, 0]);
        assert_eq!(vste(SteCfg::Bypass, 0, 0, 0, 0, false).unwrap(), [9, 0]);
    }

    #[test]
    fn vste_rejects_hostile_fields() {
        let bad = |fmt, dss, ptr, max| vste(SteCfg::S1Translate, fmt, dss, ptr, max, false);
        assert_eq!(bad(3, 0, 0x1000, 0), Err(HostError::Invalid));
        assert_eq!(bad(0, 3, 0x1000, 0), Err(HostError::Invalid));
        assert_eq!(bad(0, 0, 0x1000, 32), Err(HostError::Invalid));
        assert_eq!(bad(0, 0, 1 << 52, 0), Err(HostError::Invalid));
        assert_eq!(bad(0, 0, 0x1020, 0), Err(HostError::Invalid));
        assert_eq!(bad(0, 0, u64::MAX, u32::MAX), Err(HostError::Invalid));
    }

    #[test]
    fn cd_cache_commands() {
        let c = commands(
            &inval(InvalCaches::PASID, InvalScope::Pasid(7), None, false),
            5,
            false,
        );
        assert_eq!(c, vec![[0x05 | (7 << 12) | (5 << 32), 0]]);
        let c = commands(
            &inval(InvalCaches::PASID, InvalScope::Domain, None, false),
            5,
            false,
        );
        assert_eq!(c, vec![[0x06 | (5 << 32), 0]]);
        // A PASID wider than a SubstreamID: every CD of the stream.
        let c = commands(
            &inval(InvalCaches::PASID, InvalScope::Pasid(1 << 20), None, false),
            5,
            false,
        );
        assert_eq!(c, vec![[0x0000_0005_0000_0006, 0]]);
    }

    #[test]
    fn tlb_scopes() {
        let t =
            |scope, archid| commands(&inval(InvalCaches::IOTLB, scope, archid, false), 1, false);
        assert_eq!(t(InvalScope::Domain, Some(3)), vec![[0x10, 0]]);
        assert_eq!(
            t(InvalScope::Pasid(2), Some(3)),
            vec![[0x11 | (3 << 48), 0]]
        );
        assert_eq!(t(InvalScope::Pasid(2), None), vec![[0x10, 0]]);
        assert_eq!(t(InvalScope::Pasid(2), Some(0x1_0000)), vec![[0x10, 0]]);
        // Two pages' worth of ASID 9 from an unaligned start touch three pages: one each.
        let c = commands(
            &inval(
                InvalCaches::IOTLB,
                range(None, 0x4_0123, 2, 12),
                Some(9),
                true,
            ),
            1,
            false,
        );
        assert_eq!(
            c,
            vec![
                [0x12 | (9 << 48), 0x4_0001],
                [0x12 | (9 << 48), 0x4_1001],
                [0x12 | (9 << 48), 0x4_2001]
            ]
        );
        // No ASID: VAA. A 2 MiB block: one command at the block address.
        let c = t(range(None, 0x20_0000, 1, 21), None);
        assert_eq!(c, vec![[0x13, 0x20_0000]]);
        // Too many pages without range invalidation: flush the ASID.
        let c = t(range(None, 0, MAX_PAGE_CMDS + 1, 12), Some(4));
        assert_eq!(c, vec![[0x11 | (4 << 48), 0]]);
        // Ranges past 2^64 and hostile granules fall back too.
        assert_eq!(
            t(range(None, u64::MAX - 0xfff, 2, 12), None),
            vec![[0x10, 0]]
        );
        assert_eq!(
            t(range(None, 0, u64::MAX, 63), Some(1)),
            vec![[0x11 | (1 << 48), 0]]
        );
        assert_eq!(t(range(None, 0, 1, 200), None), vec![[0x10, 0]]);
    }

    #[test]
    fn tlb_range_commands() {
        let c = commands(
            &inval(
                InvalCaches::IOTLB,
                range(None, 0x10_0000, 35, 12),
                Some(2),
                false,
            ),
            1,
            true,
        );
        // 35 = 0b100011: 3 pages (scale 0, num 3), then 32 (scale 5, num 1); TG 4K.
        assert_eq!(
            c,
            vec![
                [0x12 | (2 << 12) | (2 << 48), (1 << 10) | 0x10_0000],
                [0x12 | (5 << 20) | (2 << 48), (1 << 10) | 0x10_3000],
            ]
        );
        // 64 KiB granule, leaf: TG 3.
        let c = commands(
            &inval(InvalCaches::IOTLB, range(None, 0x1_0000, 1, 16), None, true),
            1,
            true,
        );
        assert_eq!(c, vec![[0x13, 1 | (3 << 10) | 0x1_0000]]);
        // Every page count up to 2^52 stays far below the cap.
        let c = commands(
            &inval(
                InvalCaches::IOTLB,
                range(None, 0, (1 << 52) - 1, 12),
                None,
                false,
            ),
            1,
            true,
        );
        assert!(c.len() <= 11, "{}", c.len());
        // 2 MiB blocks have no TG: single-page commands even with RIL.
        let c = commands(
            &inval(InvalCaches::IOTLB, range(None, 0, 2, 21), None, false),
            1,
            true,
        );
        assert_eq!(c, vec![[0x13, 0], [0x13, 0x20_0000]]);
    }

    #[test]
    fn atc_commands() {
        let a = |scope| commands(&inval(InvalCaches::DEV_IOTLB, scope, None, false), 3, false);
        assert_eq!(a(InvalScope::Domain), vec![[0x40 | (3 << 32), 52]]);
        assert_eq!(
            a(InvalScope::Pasid(5)),
            vec![[0x40 | (1 << 11) | (5 << 12) | (3 << 32), 52]]
        );
        // One page: size 0 at the page.
        assert_eq!(
            a(range(None, 0x5000, 1, 12)),
            vec![[0x40 | (3 << 32), 0x5000]]
        );
        // 0x3000..0x4fff spans pages 3 and 4: aligned span of 8 pages at 0.
        assert_eq!(
            a(range(Some(1), 0x3000, 2, 12)),
            vec![[0x40 | 0x800 | 0x1000 | (3 << 32), 3]]
        );
        // A 2 MiB page: 512 pages, log2 9.
        assert_eq!(
            a(range(None, 0x20_0000, 1, 21)),
            vec![[0x40 | (3 << 32), 9 | 0x20_0000]]
        );
        // The upper half of the address space: 2^51 pages at 2^63.
        assert_eq!(
            a(range(None, 1 << 63, 1, 63)),
            vec![[0x40 | (3 << 32), 51 | (1 << 63)]]
        );
        // More than 2^64 bytes: the whole space.
        assert_eq!(a(range(None, 0, 2, 63)), vec![[0x40 | (3 << 32), 52]]);
    }

    #[test]
    fn all_caches_in_order_and_capped() {
        let all = InvalCaches::PASID | InvalCaches::IOTLB | InvalCaches::DEV_IOTLB;
        let c = commands(&inval(all, InvalScope::Domain, None, false), 1, false);
        assert_eq!(
            c.iter().map(|c| c[0] & 0xff).collect::<Vec<_>>(),
            vec![0x06, 0x10, 0x40]
        );
        let c = commands(
            &inval(all, range(Some(1), 0, MAX_PAGE_CMDS, 12), Some(1), false),
            1,
            false,
        );
        assert_eq!(c.len(), usize::try_from(MAX_PAGE_CMDS).unwrap() + 2);
        assert!(c.len() <= MAX_CMDS);
        assert!(commands(
            &inval(InvalCaches::empty(), InvalScope::Domain, None, false),
            1,
            false
        )
        .is_empty());
    }

    fn event(d0: u64, d1: u64, d2: u64) -> [u8; EVENT_SIZE] {
        let mut r = [0u8; EVENT_SIZE];
        r[..8].copy_from_slice(&d0.to_le_bytes());
        r[8..16].copy_from_slice(&d1.to_le_bytes());
        r[16..24].copy_from_slice(&d2.to_le_bytes());
        r[24..].copy_from_slice(&0xdead_0000u64.to_le_bytes());
        r
    }

    #[test]
    fn events_become_faults() {
        // F_TRANSLATION, vSID 7, SSV PASID 3, read, privileged, at 0x1234_5678.
        let r = event(
            0x10 | (1 << 11) | (3 << 12) | (7 << 32),
            (1 << 35) | (1 << 33),
            0x1234_5678,
        );
        assert_eq!(event_sid(&r), 7);
        assert_eq!(
            event_to_fault(&r, 7),
            FaultEvent {
                reason: FaultReason::Mapping,
                access: FaultFlags::READ | FaultFlags::PRIV,
                endpoint: 7,
                address: Some(0x1234_5678),
                pasid: Some(3),
            }
        );
        // F_PERMISSION on an instruction write without PASID.
        let f = event_to_fault(&event(0x13 | (2 << 32), 1 << 34, 0xf000), 2);
        assert_eq!(f.reason, FaultReason::Mapping);
        assert_eq!(f.access, FaultFlags::WRITE | FaultFlags::EXEC);
        assert_eq!((f.address, f.pasid), (Some(0xf000), None));
        for ty in [0x04, 0x06, 0x08, 0x0a] {
            let f = event_to_fault(&event(ty | (1 << 32), u64::MAX, 0x1000), 1);
            assert_eq!(
                (f.reason, f.access, f.address),
                (FaultReason::Domain, FaultFlags::empty(), None),
                "{ty:#x}"
            );
        }
        let f = event_to_fault(&event(0xff | (u64::MAX << 32), u64::MAX, u64::MAX), 9);
        assert_eq!((f.reason, f.address), (FaultReason::Unknown, None));
        assert_eq!(event_sid(&event(u64::MAX, 0, 0)), u32::MAX);
    }
}
