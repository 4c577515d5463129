//! Caller buffers (security review F17): taken as `MaybeUninit<u8>`, so
//! uninitialised memory (a fresh `malloc`) is never seen as `&mut [u8]`,
//! with their length checked.

use std::mem::MaybeUninit;

use crate::errors::{KP_ERR_INVALID_ARGUMENT, KP_ERR_NULL_ARGUMENT, fail, kp_result};

/// The caller's output buffer `p` of `len` bytes, possibly uninitialised.
///
/// # Safety
/// `p` is NULL or valid for `len` byte writes, not aliased during the call.
pub(crate) unsafe fn out_buffer<'a>(
    p: *mut u8,
    len: usize,
    name: &str,
) -> Result<&'a mut [MaybeUninit<u8>], kp_result> {
    if p.is_null() {
        return Err(fail(KP_ERR_NULL_ARGUMENT, format!("{name} is NULL")));
    }
    if len > isize::MAX as usize {
        return Err(fail(
            KP_ERR_INVALID_ARGUMENT,
            format!("{name}: length {len} is larger than any object"),
        ));
    }
    // SAFETY: `p` is valid for `len` writes by contract; `MaybeUninit<u8>`
    // makes no claim that the bytes are initialised.
    Ok(unsafe { std::slice::from_raw_parts_mut(p.cast::<MaybeUninit<u8>>(), len) })
}

/// Copies `src` to the start of `buf` (which holds at least `src.len()`).
pub(crate) fn copy_to(buf: &mut [MaybeUninit<u8>], src: &[u8]) {
    keypipe_core::key::write_bytes(buf, src);
}
