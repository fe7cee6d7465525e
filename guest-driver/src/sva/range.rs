//! Argument checks shared by the stage-1 formats.

use super::error::SvaError;
use super::radix::PAGE_SHIFT;

const PAGE_MASK: u64 = (1 << PAGE_SHIFT) - 1;

/// `va` and `size` are page-aligned and `[va, va + size)` is non-empty and does not wrap.
/// Returns the last address of the range.
pub(crate) fn input(va: u64, size: u64) -> Result<u64, SvaError> {
    if va & PAGE_MASK != 0 || size & PAGE_MASK != 0 {
        return Err(SvaError::Unaligned);
    }
    size.checked_sub(1)
        .and_then(|s| va.checked_add(s))
        .ok_or(SvaError::EmptyRange)
}

/// `pa` is page-aligned and `[pa, pa + size)` fits an output field of `bits` bits.
pub(crate) fn output(pa: u64, size: u64, bits: u32) -> Result<(), SvaError> {
    if pa & PAGE_MASK != 0 {
        return Err(SvaError::Unaligned);
    }
    let last = size
        .checked_sub(1)
        .and_then(|s| pa.checked_add(s))
        .ok_or(SvaError::EmptyRange)?;
    if last >> bits != 0 {
        return Err(SvaError::OutputTooWide);
    }
    Ok(())
}
