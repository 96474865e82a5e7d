//! Language runtime items a freestanding binary must supply: the panic
//! handler, `rust_eh_personality` (still referenced by the prebuilt `libcore`
//! even with `panic = "abort"`), and the `mem*` functions normally provided by
//! libc.
//!
//! The `mem*` functions are written with `rep movsb`/`rep stosb` so LLVM cannot
//! turn their bodies back into calls to themselves.

use core::panic::PanicInfo;

use crate::exit::{exit, STATUS_PANIC};

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    crate::println!("probe: panic: {}", info);
    exit(STATUS_PANIC)
}

/// Unwinding personality routine; never called because the probe aborts on panic.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

/// Referenced by the prebuilt `liballoc` landing pads; unreachable because
/// the probe aborts on panic, but if it ever runs the probe reports a panic.
#[no_mangle]
pub extern "C" fn _Unwind_Resume() -> ! {
    crate::println!("probe: panic: _Unwind_Resume called");
    exit(STATUS_PANIC)
}

/// Copies `n` bytes from `src` to `dest` (regions must not overlap).
///
/// # Safety
/// `dest` and `src` must be valid for `n` bytes and not overlap.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid for n bytes; DF is
    // clear per the SysV ABI.
    unsafe {
        core::arch::asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _, options(nostack, preserves_flags));
    }
    dest
}

/// Copies `n` bytes from `src` to `dest`; the regions may overlap.
///
/// # Safety
/// `dest` and `src` must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // Forward copy is safe: dest is below src or beyond the end of src.
        // SAFETY: same contract as ours.
        return unsafe { memcpy(dest, src, n) };
    }
    // SAFETY: dest overlaps the tail of src; copy backwards from the last byte
    // with DF set, then restore DF as the ABI requires.
    unsafe {
        core::arch::asm!(
            "std", "rep movsb", "cld",
            inout("rcx") n => _,
            inout("rdi") dest.add(n - 1) => _,
            inout("rsi") src.add(n - 1) => _,
            options(nostack)
        );
    }
    dest
}

/// Fills `n` bytes at `dest` with the low byte of `c`.
///
/// # Safety
/// `dest` must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees dest is valid for n bytes.
    unsafe {
        core::arch::asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _, in("al") c as u8, options(nostack, preserves_flags));
    }
    dest
}

/// Compares `n` bytes; returns <0, 0 or >0 like C `memcmp`.
///
/// # Safety
/// `a` and `b` must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n and both ranges are valid for n bytes.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// Like `memcmp`, but only the zero/non-zero result is meaningful.
///
/// # Safety
/// `a` and `b` must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}
