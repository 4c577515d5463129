//! The ETSI GS QKD 004 KMS side in-process ([`kp_kms`]): a listener that
//! receives the key a QKD node pushes, and calls that hand each received
//! index to the C program once, then zeroize it.
//!
//! The listener serves `POST /api/v1/qkd/etsi004/key-material`, the same
//! route and store as the server's `etsi004-kms`.

use std::ffi::c_char;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keypipe_net::http::Server;
use keypipe_net::kms_side::{Pushers, ReceivedKeys, TakeError, Want, key_material_route};
use keypipe_net::metrics::RequestMetrics;
use keypipe_net::router::Router;
use keypipe_net::tls::allow_plaintext;
use serde::Deserialize;

use crate::buffer::{copy_to, out_buffer};
use crate::engine::serve;
use crate::handle::{Call, Handle};
use crate::{arg_str, errors::*, guard, ksid_arg, required};

/// Opaque handle to a KMS side. Thread-safe.
pub struct kp_kms {
    handle: Handle<KmsParts>,
}

/// What a KMS-side handle owns.
struct KmsParts {
    store: Arc<ReceivedKeys>,
    listener: Option<Server>,
    addr: SocketAddr,
}

impl Drop for KmsParts {
    fn drop(&mut self) {
        if let Some(server) = self.listener.take() {
            server.shutdown_handle().trigger();
            server.join();
        }
    }
}

/// The KMS side's configuration (TOML).
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct KmsConfig {
    /// Where QKD nodes push to (port 0: any free port, see `kp_kms_port`).
    listen: SocketAddr,
    /// Most key bytes (plus bookkeeping) held for consumers; a push beyond
    /// is answered 503 and the node retries later (nothing is lost).
    capacity_bytes: usize,
    /// Name in the logs and thread names.
    name: String,
    /// The QKD nodes that may push here (their certificates' `CN`, with
    /// TLS); empty: only callers on loopback without TLS.
    nodes: Vec<String>,
    /// TLS of the listener: its certificate chain (PEM).
    cert: Option<std::path::PathBuf>,
    /// Its key (PEM, mode 0600).
    key: Option<std::path::PathBuf>,
    /// The CA bundle node certificates must chain to (required with TLS:
    /// pushing nodes are always asked for a certificate).
    client_ca: Option<std::path::PathBuf>,
    /// Allow plain HTTP on an address that is not loopback.
    insecure_plaintext: bool,
}

impl Default for KmsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            capacity_bytes: 64 << 20,
            name: "kms".into(),
            nodes: Vec::new(),
            cert: None,
            key: None,
            client_ca: None,
            insecure_plaintext: false,
        }
    }
}

/// Enters a call on the KMS side behind `k`.
///
/// # Safety
/// `k` is NULL or a live KMS side whose free has not started.
unsafe fn enter<'a>(k: *const kp_kms) -> Result<Call<'a, KmsParts>, kp_result> {
    // SAFETY: NULL or live by the caller's contract.
    Handle::enter(unsafe { k.as_ref() }.map(|k| &k.handle), "KMS side")
}

/// Starts a KMS side from a TOML configuration (NULL = defaults):
///   listen = "127.0.0.1:0"        where QKD nodes push (port 0: any free)
///   capacity_bytes = 67108864     key held for consumers, at most
///   name = "kms"
///   nodes = []                    QKD nodes (certificate CN) that may push
///   cert, key, client_ca          TLS, nodes presenting certificates of
///                                 client_ca (all three, or none)
///   insecure_plaintext = false    allow plain HTTP beyond loopback
/// On success `*out` owns it. `KP_ERR_IO` when the address is in use.
///
/// # Safety
/// `config_toml` is NULL or NUL-terminated; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kp_kms_new(
    config_toml: *const c_char,
    out: *mut *mut kp_kms,
) -> kp_result {
    guard(|| {
        required(out, "out")?;
        let config: KmsConfig = if config_toml.is_null() {
            KmsConfig::default()
        } else {
            // SAFETY: NUL-terminated by contract.
            let text = unsafe { arg_str(config_toml, "config_toml") }?;
            toml::from_str(text).map_err(|e| fail(KP_ERR_CONFIG, e.to_string()))?
        };
        let tls = match (&config.cert, &config.key, &config.client_ca) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => Some(crate::engine::acceptor(cert, key, ca)?),
            _ => {
                return Err(fail(
                    KP_ERR_CONFIG,
                    "cert, key and client_ca go together (TLS with node certificates)".into(),
                ));
            }
        };
        if tls.is_none() {
            allow_plaintext(
                "listen",
                config.listen,
                config.insecure_plaintext,
                "cert, key and client_ca",
                "insecure_plaintext",
            )
            .map_err(|m| fail(KP_ERR_CONFIG, m))?;
        }
        let store = Arc::new(
            ReceivedKeys::new(config.capacity_bytes)
                .map_err(|e| fail(KP_ERR_CONFIG, e.to_string()))?,
        );
        let mut router = Router::new(Arc::new(RequestMetrics::default()));
        let pushers = Pushers {
            nodes: config.nodes.clone(),
        };
        key_material_route(&mut router, Arc::clone(&store), pushers);
        let server = serve(&config.name, config.listen, router, tls)?;
        let parts = KmsParts {
            store,
            addr: server.local_addr(),
            listener: Some(server),
        };
        let handle = Box::into_raw(Box::new(kp_kms {
            handle: Handle::new(parts),
        }));
        // SAFETY: non-NULL and writable by contract.
        unsafe { out.write(handle) };
        Ok(KP_OK)
    })
}

/// The TCP port the KMS side listens on (useful with port 0).
///
/// # Safety
/// `kms` is NULL or live; `port` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kp_kms_port(kms: *mut kp_kms, port: *mut u16) -> kp_result {
    guard(|| {
        // SAFETY: the caller's contract.
        let parts = unsafe { enter(kms) }?;
        required(port, "port")?;
        // SAFETY: writable by contract.
        unsafe { port.write(parts.addr.port()) };
        Ok(KP_OK)
    })
}

/// Takes chunk `index` of stream `key_stream_id` if it was received,
/// without waiting: as [`kp_kms_wait_key`] with `timeout_ms` 0.
///
/// # Safety
/// As [`kp_kms_wait_key`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kp_kms_get_key(
    kms: *mut kp_kms,
    key_stream_id: *const u8,
    index: u32,
    key_buffer: *mut u8,
    key_len: *mut usize,
    status: *mut u32,
) -> kp_result {
    // SAFETY: forwarded contract.
    unsafe { kp_kms_wait_key(kms, key_stream_id, index, key_buffer, key_len, 0, status) }
}

/// Takes chunk `index` of stream `key_stream_id`, waiting at most
/// `timeout_ms` for it to be pushed. `*key_len`: in, the capacity of
/// `key_buffer` (may be uninitialised); out, the chunk's length. Each index
/// is handed out once, and the KMS side's copy is zeroized at once.
/// `*status`: 0 key written; 2 not received yet (`timeout_ms` 0); 6 timed
/// out (an index a node lost in a crash is never pushed: a consumer waits
/// for it in vain, see docs/ledger.md). Errors: `KP_ERR_INDEX_CONSUMED`
/// when the index was taken already (never key twice, also after a node
/// re-pushed it), `KP_ERR_KEY_BUFFER_TOO_SMALL` with `*key_len` = the
/// chunk's length (the chunk stays held), `KP_ERR_SHUT_DOWN`.
///
/// # Safety
/// `key_stream_id` 16 readable bytes; `key_len` read/write; `key_buffer`
/// `*key_len` writable bytes; `status` writable (each NULL or valid).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kp_kms_wait_key(
    kms: *mut kp_kms,
    key_stream_id: *const u8,
    index: u32,
    key_buffer: *mut u8,
    key_len: *mut usize,
    timeout_ms: u32,
    status: *mut u32,
) -> kp_result {
    let mut at = index;
    // SAFETY: forwarded contract.
    unsafe {
        take(
            kms,
            key_stream_id,
            Want::Index(index),
            &mut at,
            key_buffer,
            key_len,
            timeout_ms,
            status,
        )
    }
}

/// The iterator form: takes the lowest-indexed chunk of the stream held
/// now, waiting at most `timeout_ms` for one; `*index` gets its index.
/// Every received index comes out exactly once, but not always in
/// increasing order: a gap (an index still in flight) is not waited for,
/// so a push that arrives late (retried after a 503, or overtaken by the
/// next ones in flight) comes out after higher indexes. Use `*index`, not
/// the call order. Statuses and errors as [`kp_kms_wait_key`].
///
/// # Safety
/// As [`kp_kms_wait_key`]; `index` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kp_kms_next_key(
    kms: *mut kp_kms,
    key_stream_id: *const u8,
    index: *mut u32,
    key_buffer: *mut u8,
    key_len: *mut usize,
    timeout_ms: u32,
    status: *mut u32,
) -> kp_result {
    guard(|| {
        required(index, "index")?;
        let mut at = 0;
        // SAFETY: forwarded contract.
        let code = unsafe {
            take(
                kms,
                key_stream_id,
                Want::Next,
                &mut at,
                key_buffer,
                key_len,
                timeout_ms,
                status,
            )
        };
        // SAFETY: `status` was written when the call ran.
        if code == KP_OK && unsafe { status.read() } == 0 {
            // SAFETY: non-NULL (checked) and writable by contract.
            unsafe { index.write(at) };
        }
        Ok(code)
    })
}

/// The take calls (by index with a wait, and the next one).
///
/// # Safety
/// As [`kp_kms_wait_key`].
#[allow(clippy::too_many_arguments)]
unsafe fn take(
    kms: *mut kp_kms,
    key_stream_id: *const u8,
    want: Want,
    at: &mut u32,
    key_buffer: *mut u8,
    key_len: *mut usize,
    timeout_ms: u32,
    status: *mut u32,
) -> kp_result {
    guard(|| {
        // SAFETY: each pointer is NULL or valid as documented.
        let (parts, ksid) = unsafe { (enter(kms)?, ksid_arg(key_stream_id)?) };
        required(key_len, "key_len")?;
        required(status, "status")?;
        // SAFETY: readable by contract.
        let capacity = unsafe { key_len.read() };
        // SAFETY: `key_buffer` has `*key_len` writable bytes by contract.
        let buffer = unsafe { out_buffer(key_buffer, capacity, "key_buffer") }?;
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        let taken = parts
            .store
            .take_into(&ksid, want, capacity, timeout, |key| copy_to(buffer, key));
        let code = match taken {
            Ok((index, len)) => {
                *at = index;
                // SAFETY: writable by contract.
                unsafe { key_len.write(len) };
                0
            }
            Err(TakeError::NotYet) if timeout_ms == 0 => 2,
            Err(TakeError::NotYet) => 6,
            Err(e @ TakeError::Consumed) => return Err(fail(KP_ERR_INDEX_CONSUMED, e.to_string())),
            Err(e @ TakeError::TooSmall { needed }) => {
                // SAFETY: writable by contract.
                unsafe { key_len.write(needed) };
                return Err(fail(KP_ERR_KEY_BUFFER_TOO_SMALL, e.to_string()));
            }
            Err(e @ TakeError::Closed) => return Err(fail(KP_ERR_SHUT_DOWN, e.to_string())),
        };
        // SAFETY: writable by contract.
        unsafe { status.write(code) };
        Ok(KP_OK)
    })
}

/// Counters of a KMS side (`kp_kms_stats`).
#[repr(C)]
#[derive(Default)]
pub struct kp_kms_counters {
    /// Chunks received and not yet taken.
    pub chunks_held: u64,
    /// Key bytes held.
    pub key_bytes_held: u64,
    /// Chunks received since the start.
    pub chunks_received: u64,
}

/// Fills `*out` with the KMS side's counters.
///
/// # Safety
/// `kms` is NULL or live; `out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kp_kms_stats(kms: *mut kp_kms, out: *mut kp_kms_counters) -> kp_result {
    guard(|| {
        // SAFETY: the caller's contract.
        let parts = unsafe { enter(kms) }?;
        required(out, "out")?;
        let (held, bytes, received) = parts.store.stats();
        let stats = kp_kms_counters {
            chunks_held: held as u64,
            key_bytes_held: bytes as u64,
            chunks_received: received,
        };
        // SAFETY: writable by contract.
        unsafe { out.write(stats) };
        Ok(KP_OK)
    })
}

fn wake(parts: &KmsParts) {
    parts.store.close();
}

/// Shuts a KMS side down without freeing it: waiting calls return
/// (`KP_ERR_SHUT_DOWN`), later calls fail with `KP_ERR_SHUT_DOWN`; returns
/// once no call is in flight. Idempotent.
///
/// # Safety
/// `kms` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kp_kms_shutdown(kms: *mut kp_kms) -> kp_result {
    guard(|| {
        // SAFETY: NULL or live by contract.
        let k = unsafe { kms.as_ref() }
            .ok_or_else(|| fail(KP_ERR_NULL_ARGUMENT, "KMS side is NULL".into()))?;
        k.handle.shut_down(wake);
        Ok(KP_OK)
    })
}

/// Frees a KMS side: shuts it down, stops its listener and zeroizes the
/// key it holds. NULL is a no-op.
///
/// # Safety
/// `kms` is NULL or from `kp_kms_new`, freed once; no call on it may start
/// once the free has begun.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kp_kms_free(kms: *mut kp_kms) {
    guard(|| {
        if !kms.is_null() {
            // SAFETY: live by contract.
            unsafe { &*kms }.handle.shut_down_for_free(wake);
            // SAFETY: from `kp_kms_new`, freed once, no call in flight.
            drop(unsafe { Box::from_raw(kms) });
        }
        Ok(KP_OK)
    });
}
