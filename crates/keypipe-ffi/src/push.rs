//! ETSI GS QKD 004 push mode from C (`kp_push_open`, `kp_push_start`): the
//! engine pushes a stream's key over HTTP to a KMS (the KMS side of another
//! process, or of this one: `kp_kms_new`).
//!
//! Exactly as the server's `/api/v1/kms/etsi004` routes do: both are
//! adapters over `keypipe_net::push_mode`.

use std::ffi::c_char;

use keypipe_net::http::Origin;
use keypipe_net::push_mode::StartError;

use crate::engine::{enter, kp_engine, open_with};
use crate::{errors::*, guard, kp_qos, ksid_arg, required};

/// OPEN_CONNECT in push mode. `source` and `destination` are the two KMS
/// base URIs (`http[s]://host:port`; https needs `[tls]`): the node that
/// creates the stream pushes to `source`, the node that joins it (naming
/// the KSID its peer announced) to `destination`, which must be the one
/// the creating side gave. Otherwise as `kp_open_connect`. Pushing starts
/// with `kp_push_start`; `kp_close` ends it. A URI that does not parse or
/// resolve, or another destination than announced, gives
/// `KP_ERR_INVALID_ARGUMENT`.
///
/// # Safety
/// As `kp_open_connect`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kp_push_open(
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
            |p, s, d, q, k| {
                let origin = |name: &str, url: &str| {
                    let mut o = Origin::parse(url)
                        .map_err(|m| fail(KP_ERR_INVALID_ARGUMENT, format!("{name}: {m}")))?;
                    o.resolve()
                        .map_err(|e| fail(KP_ERR_INVALID_ARGUMENT, format!("{name}: {e}")))?;
                    Ok::<Origin, kp_result>(o)
                };
                let origins = (origin("source", s)?, origin("destination", d)?);
                // The C caller is trusted (it is the process): any URI it
                // names is allowed.
                p.mode
                    .open(s, d, q, k, origins, |_, _| Ok(()))
                    .map_err(|e| fail(KP_ERR_INVALID_ARGUMENT, e.to_string()))
            },
        )
    }
}

/// GET_KEY in push mode: the engine starts pushing the stream to its KMS,
/// from `*index` when `index` is not NULL (else from where it stands).
/// `*status` 0. `KP_ERR_UNKNOWN_KSID` when the stream is not open here (or
/// was not opened with `kp_push_open`), `KP_ERR_INDEX_CONSUMED` when
/// `*index` was already pushed and acknowledged (a chunk still on the wire
/// is not refused: the KMS side never hands an index out twice anyway), `KP_ERR_QOS_CONFLICT` or
/// `KP_ERR_STREAM_FAILED` as for `kp_get_key`.
///
/// # Safety
/// `key_stream_id` is NULL or 16 readable bytes; `index` NULL or readable;
/// `status` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kp_push_start(
    e: *mut kp_engine,
    key_stream_id: *const u8,
    index: *const u32,
    status: *mut u32,
) -> kp_result {
    guard(|| {
        // SAFETY: each pointer is NULL or valid as documented.
        let (parts, ksid) = unsafe { (enter(e)?, ksid_arg(key_stream_id)?) };
        required(status, "status")?;
        // SAFETY: NULL or readable by contract.
        let from = unsafe { index.as_ref() }.copied();
        parts.mode.start(&ksid, from).map_err(|err| {
            let code = match err {
                StartError::UnknownStream => KP_ERR_UNKNOWN_KSID,
                StartError::QosConflict => KP_ERR_QOS_CONFLICT,
                StartError::StreamFailed => KP_ERR_STREAM_FAILED,
                StartError::Delivered(_) => KP_ERR_INDEX_CONSUMED,
            };
            fail(code, err.to_string())
        })?;
        // SAFETY: writable by contract.
        unsafe { status.write(0) };
        Ok(KP_OK)
    })
}
