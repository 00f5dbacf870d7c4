//! This crate's only `unsafe` code: `mlock`/`munlock` of the pages under a live buffer that
//! holds a secret value, so the value is not written to swap, and the compiler barrier of
//! [`wipe`]. Kept to this one module (the crate root denies `unsafe_code` and allows it here
//! only), each block with a `SAFETY:` comment. `rustix` marks the lock calls `unsafe` because
//! they take a raw pointer; neither reads nor writes the memory.

use std::ffi::c_void;

/// Locks the pages that `bytes` lies on (the kernel rounds to whole pages).
pub(crate) fn mlock(bytes: &[u8]) -> rustix::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    // SAFETY: `bytes` is a live borrowed slice, so `[ptr, ptr + len)` is mapped memory of this
    // process for the whole call. `mlock` only changes whether those pages may be paged out:
    // it does not read, write, move or free them, so no reference anywhere is invalidated.
    unsafe { rustix::mm::mlock(bytes.as_ptr().cast::<c_void>().cast_mut(), bytes.len()) }
}

/// Unlocks the pages that `bytes` lies on.
pub(crate) fn munlock(bytes: &[u8]) -> rustix::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    // SAFETY: as for `mlock`: a live slice, mapped for the whole call; `munlock` only allows
    // the pages to be paged out again and never touches their contents.
    unsafe { rustix::mm::munlock(bytes.as_ptr().cast::<c_void>().cast_mut(), bytes.len()) }
}

/// Overwrites `bytes` with zeros so that the compiler cannot drop the stores as dead (the
/// buffer is about to be freed): a plain, vectorised `memset`, then an empty `asm!` block that
/// is handed the buffer's address and, lacking `nomem`, may read any memory, so the zeros must
/// be in memory before it runs (the pattern of glibc's `explicit_bzero`). `zeroize`'s volatile
/// byte-at-a-time stores cost about 9× as much (165 µs against 18 µs per MiB, measured).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    barrier(bytes);
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn barrier(bytes: &[u8]) {
    // SAFETY: the template is a comment: no instruction runs, no register but the input is
    // named, the stack is not used and flags are kept. Without `nomem`/`readonly` the compiler
    // must assume the block reads the memory behind the pointer, which is the whole point.
    unsafe {
        std::arch::asm!("/* {0} */", in(reg) bytes.as_ptr(), options(nostack, preserves_flags));
    }
}

/// Elsewhere `zeroize`'s volatile stores (slower, but guaranteed) instead of a barrier.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub(crate) fn wipe(bytes: &mut [u8]) {
    zeroize::Zeroize::zeroize(bytes);
}
