//! ETSI GS QKD 004 pull calls on an engine: OPEN_CONNECT, GET_KEY (with
//! its metadata buffer, [`kp_metadata`]), CLOSE, and the QoS of a stream
//! open here.

use std::ffi::c_char;
use std::ptr;
use std::time::Duration;

use keypipe_core::qkd::{GetKeyError, GetKeyReply, OpenReply, Qos, StreamError};
use uuid::Uuid;

use super::{EngineParts, enter, kp_engine};
use crate::buffer::out_buffer;
use crate::{arg_str, errors::*, guard, kp_qos, ksid_arg, qos_from_c, qos_to_c, required};

/// Longest `kp_close` waits for the stream's pushes already on the wire.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// OPEN_CONNECT. An all-zero `key_stream_id` asks the node to assign one
/// (written back). `*qos` is replaced by the negotiated QoS (status 0/1) or
/// the counter-proposal (status 7). `*status`: 0 both sides open, 1 the
/// peer side has not opened yet, 4 no QKD link, 5 KSID already open here,
/// 7 QoS not met.
///
/// # Safety
/// Pointers are NULL or valid: strings NUL-terminated, `qos` read/write,
/// `key_stream_id` 16 read/write bytes, `status` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kp_open_connect(
    e: *mut kp_engine,
    source: *const c_char,
    destination: *const c_char,
    qos: *mut kp_qos,
    key_stream_id: *mut u8,
    status: *mut u32,
) -> kp_result {
    // SAFETY: forwarded contract.
    unsafe {
        open_with(
            e,
            source,
            destination,
            qos,
            key_stream_id,
            status,
            |p, s, d, q, k| Ok(p.engine().open_connect(s, d, q, k)),
        )
    }
}

/// OPEN_CONNECT's arguments in, its results out, around `open`.
///
/// # Safety
/// As [`kp_open_connect`].
pub(crate) unsafe fn open_with(
    e: *mut kp_engine,
    source: *const c_char,
    destination: *const c_char,
    qos: *mut kp_qos,
    key_stream_id: *mut u8,
    status: *mut u32,
    open: impl Fn(&EngineParts, &str, &str, &Qos, Option<Uuid>) -> Result<OpenReply, kp_result>,
) -> kp_result {
    guard(|| {
        // SAFETY: each pointer is NULL or valid as documented.
        let (parts, source, destination, ksid) = unsafe {
            (
                enter(e)?,
                arg_str(source, "source")?,
                arg_str(destination, "destination")?,
                ksid_arg(key_stream_id)?,
            )
        };
        required(qos, "qos")?;
        required(status, "status")?;
        // SAFETY: non-NULL, readable by contract.
        let request = qos_from_c(unsafe { &*qos })?;
        let reply = open(
            &parts,
            source,
            destination,
            &request,
            (!ksid.is_nil()).then_some(ksid),
        )?;
        // SAFETY: non-NULL, writable by contract.
        unsafe {
            qos_to_c(&reply.qos, &mut *qos);
            if let Some(k) = reply.ksid {
                ptr::copy_nonoverlapping(k.as_bytes().as_ptr(), key_stream_id, 16);
            }
            status.write(reply.status.code());
        }
        Ok(KP_OK)
    })
}

/// GET_KEY: writes chunk `*index` of the stream into `key_buffer`
/// (`key_buffer_len` >= the stream's `key_chunk_size`; the buffer may be
/// uninitialised: only the chunk's bytes are written, only on delivery),
/// waiting at most the stream's timeout. `metadata` may be NULL. `*status`:
/// 0 delivered, 2 no key yet (timeout 0), 3 peer side not open, 4 no QKD
/// link (or the engine was shut down while waiting), 6 timed out, 8
/// metadata buffer too small (`metadata->size` = capacity needed; the key
/// is not consumed). An index already delivered on this node, or whose key
/// expired, gives `KP_ERR_INDEX_CONSUMED`, never key.
///
/// # Safety
/// Pointers are NULL or valid: `key_stream_id` 16 bytes, `index` read/write,
/// `key_buffer` `key_buffer_len` writable bytes, `metadata` (if not NULL)
/// read/write with `buffer` of `size` writable bytes, `status` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kp_get_key(
    e: *mut kp_engine,
    key_stream_id: *const u8,
    index: *mut u32,
    key_buffer: *mut u8,
    key_buffer_len: usize,
    metadata: *mut kp_metadata,
    status: *mut u32,
) -> kp_result {
    guard(|| {
        // SAFETY: each pointer is NULL or valid as documented.
        let (parts, ksid) = unsafe { (enter(e)?, ksid_arg(key_stream_id)?) };
        required(index, "index")?;
        required(status, "status")?;
        // SAFETY: `key_buffer` has `key_buffer_len` writable bytes.
        let buffer = unsafe { out_buffer(key_buffer, key_buffer_len, "key_buffer") }?;
        // SAFETY: `metadata` is NULL or valid by contract.
        let metadata = unsafe { metadata.as_mut() };
        if let Some(m) = metadata.as_ref().filter(|m| m.size > 0) {
            required(m.buffer, "metadata->buffer")?;
        }
        // One byte of the caller's capacity is kept for the NUL.
        let capacity = metadata
            .as_ref()
            .map(|m| (m.size as usize).saturating_sub(1));
        // SAFETY: readable by contract.
        let wanted = unsafe { index.read() };
        let reply = parts
            .engine()
            .get_key_uninit(&ksid, wanted, buffer, capacity)
            .map_err(|err| fail(get_key_error(err), err.to_string()))?;
        match reply {
            GetKeyReply::Key {
                index: delivered,
                metadata: text,
            } => {
                if let (Some(m), Some(text)) = (metadata, text) {
                    // SAFETY: `buffer` has `size` > text.len() bytes (checked
                    // through `capacity`).
                    unsafe {
                        ptr::copy_nonoverlapping(text.as_str().as_ptr(), m.buffer, text.len());
                        m.buffer.add(text.len()).write(0);
                    }
                    m.size = text.len() as u32;
                }
                // SAFETY: writable by contract.
                unsafe { index.write(delivered) };
            }
            GetKeyReply::MetadataTooSmall { needed } => {
                if let Some(m) = metadata {
                    m.size = (needed + 1) as u32;
                }
            }
            GetKeyReply::Status(_) => {}
        }
        // SAFETY: writable by contract.
        unsafe { status.write(reply.status().code()) };
        Ok(KP_OK)
    })
}

/// CLOSE: no new key for the stream on this node; a pushed stream's
/// pushes already on the wire are answered first (at most 5 s), so no push
/// follows the return; undelivered key here is zeroized and the peer is
/// told (it keeps its own until it closes or the TTL ends).
///
/// # Safety
/// `key_stream_id` is NULL or 16 readable bytes; `status` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kp_close(
    e: *mut kp_engine,
    key_stream_id: *const u8,
    status: *mut u32,
) -> kp_result {
    guard(|| {
        // SAFETY: each pointer is NULL or valid as documented.
        let (parts, ksid) = unsafe { (enter(e)?, ksid_arg(key_stream_id)?) };
        required(status, "status")?;
        let closed =
            parts
                .mode
                .close(&ksid, CLOSE_WAIT)
                .map_err(|err @ StreamError::UnknownStream| {
                    fail(KP_ERR_UNKNOWN_KSID, err.to_string())
                })?;
        // SAFETY: writable by contract.
        unsafe { status.write(closed.code()) };
        Ok(KP_OK)
    })
}

/// The negotiated QoS of a stream open on this node, into `*qos` (its
/// `key_chunk_size` is the buffer `kp_get_key` needs). For a stream that
/// resumed after a restart, or was opened by another part of the program.
/// `KP_ERR_UNKNOWN_KSID` when the stream is not open here,
/// `KP_ERR_QOS_CONFLICT` / `KP_ERR_STREAM_FAILED` when it stopped.
///
/// # Safety
/// `key_stream_id` is NULL or 16 readable bytes; `qos` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kp_stream_qos(
    e: *mut kp_engine,
    key_stream_id: *const u8,
    qos: *mut kp_qos,
) -> kp_result {
    guard(|| {
        // SAFETY: each pointer is NULL or valid as documented.
        let (parts, ksid) = unsafe { (enter(e)?, ksid_arg(key_stream_id)?) };
        required(qos, "qos")?;
        let open = parts
            .engine()
            .stream_qos(&ksid)
            .map_err(|err| fail(get_key_error(err), err.to_string()))?;
        // SAFETY: `qos` is writable by contract; `kp_qos` is plain data,
        // so filling a zeroed value first never reads uninitialised memory.
        unsafe {
            qos.write(std::mem::zeroed());
            qos_to_c(&open, &mut *qos);
        }
        Ok(KP_OK)
    })
}

fn get_key_error(err: GetKeyError) -> kp_result {
    match err {
        GetKeyError::UnknownStream => KP_ERR_UNKNOWN_KSID,
        GetKeyError::Consumed => KP_ERR_INDEX_CONSUMED,
        GetKeyError::BufferTooSmall { .. } => KP_ERR_KEY_BUFFER_TOO_SMALL,
        GetKeyError::QosConflict => KP_ERR_QOS_CONFLICT,
        GetKeyError::StreamFailed => KP_ERR_STREAM_FAILED,
    }
}

/// Metadata buffer of `kp_get_key`. `size`: in = capacity of `buffer` in
/// bytes; out = length of the NUL-terminated JSON text written (status 0),
/// or the capacity needed including the NUL (status 8).
#[repr(C)]
pub struct kp_metadata {
    /// See the type's description.
    pub size: u32,
    /// Caller-owned buffer of `size` bytes.
    pub buffer: *mut u8,
}
