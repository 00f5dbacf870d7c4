//! This crate's only `unsafe` code: `mlock`/`munlock` of the pages under a live buffer that
//! holds a secret value, so the value is not written to swap. Kept to this one module (the
//! crate root denies `unsafe_code` and allows it here only), each block with a `SAFETY:`
//! comment. `rustix` marks these calls `unsafe` because they take a raw pointer; neither reads
//! nor writes the memory.

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
