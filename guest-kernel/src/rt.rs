//! What the prebuilt `core`/`alloc` expect from the platform: the `mem*` functions (libc's on
//! Linux), and the unwinding symbols their landing pads name, never reached with
//! `panic = "abort"`.

use core::arch::asm;

/// `memcpy`: `rep movsb`, which the compiler cannot turn back into a call to itself.
///
/// # Safety
/// As C's `memcpy`: `dst` and `src` valid for `n` bytes and not overlapping.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract; the direction flag is clear (ABI).
    unsafe {
        asm!("rep movsb", inout("rdi") dst => _, inout("rsi") src => _, inout("rcx") n => _,
             options(nostack, preserves_flags));
    }
    dst
}

/// `memmove`: forwards, or backwards when `dst` overlaps the tail of `src`.
///
/// # Safety
/// As C's `memmove`: `dst` and `src` valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: a forward copy reads each byte before it can be overwritten.
        return unsafe { memcpy(dst, src, n) };
    }
    if n == 0 {
        return dst;
    }
    // SAFETY: copies from the last byte down, so overlapping source bytes are read before
    // they are overwritten; the direction flag is restored before returning.
    unsafe {
        asm!("std", "rep movsb", "cld",
             inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
             inout("rcx") n => _, options(nostack));
    }
    dst
}

/// `memset`.
///
/// # Safety
/// As C's `memset`: `dst` valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, value: i32, n: usize) -> *mut u8 {
    // C passes the byte as an int; only its low 8 bits are stored.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let byte = value as u8;
    // SAFETY: the caller's contract; the direction flag is clear (ABI).
    unsafe {
        asm!("rep stosb", inout("rdi") dst => _, inout("rcx") n => _, in("al") byte,
             options(nostack, preserves_flags));
    }
    dst
}

/// `memcmp`.
///
/// # Safety
/// As C's `memcmp`: both valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: `i < n`, inside both buffers.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// `bcmp`: zero iff equal.
///
/// # Safety
/// As `memcmp`.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the same contract.
    unsafe { memcmp(a, b, n) }
}

/// Referenced by the prebuilt `alloc`'s unwinding paths, which `panic = "abort"` never takes.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

/// Landing pads of the prebuilt `alloc` end in this; with `panic = "abort"` no unwinding
/// starts, so it is never reached.
#[no_mangle]
pub extern "C" fn _Unwind_Resume() -> ! {
    crate::fatal(format_args!("_Unwind_Resume called"))
}
