//! Stable result codes, their messages, the per-thread error detail, and
//! the library version.

use std::cell::RefCell;
use std::ffi::{CStr, c_char};

/// 0 = the call ran (see `*status`); < 0 = misuse or internal error.
pub type kp_result = i32;

/// The call ran; its outcome is in `*status`.
pub const KP_OK: kp_result = 0;
/// A required pointer argument was NULL.
pub const KP_ERR_NULL_ARGUMENT: kp_result = -1;
/// An argument is malformed (not UTF-8, not NUL-terminated, wrong device).
pub const KP_ERR_INVALID_ARGUMENT: kp_result = -2;
/// The configuration TOML is malformed or has an invalid value.
pub const KP_ERR_CONFIG: kp_result = -3;
/// `key_buffer_len` is smaller than the stream's `key_chunk_size`.
pub const KP_ERR_KEY_BUFFER_TOO_SMALL: kp_result = -4;
/// No key stream with this KSID is open on this node.
pub const KP_ERR_UNKNOWN_KSID: kp_result = -5;
/// The index was already delivered on this node, or its key expired.
pub const KP_ERR_INDEX_CONSUMED: kp_result = -6;
/// The engine could not start (key arena, device, or thread).
pub const KP_ERR_ENGINE_START: kp_result = -7;
/// Internal error: a panic was caught at the C boundary.
pub const KP_ERR_PANIC: kp_result = -8;
/// Both sides opened this KSID on their own with different chunk sizes:
/// close it and open it again.
pub const KP_ERR_QOS_CONFLICT: kp_result = -9;
/// Key confirmation failed: the two nodes' devices disagree, so the stream
/// was stopped on both nodes for good.
pub const KP_ERR_STREAM_FAILED: kp_result = -10;

/// The handle was shut down (`kp_engine_shutdown`, `kp_kms_shutdown`):
/// no call on it runs any more; free it.
pub const KP_ERR_SHUT_DOWN: kp_result = -11;
/// A socket or listener could not be set up (the address is in use, a
/// KMS URI does not resolve).
pub const KP_ERR_IO: kp_result = -12;

/// The ABI version: programs built against one ABI version run with any
/// library of the same version (`libkeypipe.so.<KP_ABI_VERSION>`).
pub const KP_ABI_VERSION: u32 = 2;

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Records `detail` as this thread's last error and returns `code`.
pub(crate) fn fail(code: kp_result, detail: String) -> kp_result {
    LAST_ERROR.with(|e| *e.borrow_mut() = detail);
    code
}

/// A static, NUL-terminated description of a result code (never NULL).
#[unsafe(no_mangle)]
pub extern "C" fn kp_result_message(code: kp_result) -> *const c_char {
    let text: &'static CStr = match code {
        KP_OK => c"ok: the call ran, see status",
        KP_ERR_NULL_ARGUMENT => c"a required pointer argument is NULL",
        KP_ERR_INVALID_ARGUMENT => c"an argument is malformed",
        KP_ERR_CONFIG => c"invalid configuration",
        KP_ERR_KEY_BUFFER_TOO_SMALL => c"key buffer smaller than the stream's key_chunk_size",
        KP_ERR_UNKNOWN_KSID => c"no key stream with this KSID is open on this node",
        KP_ERR_INDEX_CONSUMED => c"index already delivered on this node, or its key expired",
        KP_ERR_ENGINE_START => c"the engine could not start",
        KP_ERR_PANIC => c"internal error (panic caught at the C boundary)",
        KP_ERR_QOS_CONFLICT => c"both sides opened this KSID with different key_chunk_size",
        KP_ERR_STREAM_FAILED => {
            c"key confirmation failed: the nodes' devices disagree; stream stopped"
        }
        KP_ERR_SHUT_DOWN => c"the handle was shut down",
        KP_ERR_IO => c"a socket or listener could not be set up",
        _ => c"unknown result code",
    };
    text.as_ptr()
}

/// Copies the calling thread's last error detail (set by the last call on
/// this thread that returned < 0) into `buf` as a NUL-terminated string,
/// truncated to `len - 1` bytes; `*out_n` (if not NULL) gets the full
/// length without the NUL. An empty string when there was none.
///
/// # Safety
/// `buf` is NULL (with `len` 0) or has `len` writable bytes; `out_n` is NULL
/// or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kp_last_error(
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> kp_result {
    let result = std::panic::catch_unwind(|| {
        if buf.is_null() && len > 0 {
            return KP_ERR_NULL_ARGUMENT;
        }
        LAST_ERROR.with(|e| {
            let e = e.borrow();
            if len > 0 {
                let n = e.len().min(len - 1);
                // SAFETY: `buf` has `len` > n bytes by contract.
                unsafe {
                    std::ptr::copy_nonoverlapping(e.as_ptr().cast::<c_char>(), buf, n);
                    buf.add(n).write(0);
                }
            }
            if !out_n.is_null() {
                // SAFETY: writable by contract.
                unsafe { out_n.write(e.len()) };
            }
        });
        KP_OK
    });
    result.unwrap_or(KP_ERR_PANIC)
}

/// The library version, a static NUL-terminated string such as "0.1.0".
#[unsafe(no_mangle)]
pub extern "C" fn kp_version() -> *const c_char {
    const VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => c"unknown",
        };
    VERSION.as_ptr()
}
