//! The engine handle: create (alone, linked over the network, or as an
//! in-process pair), OPEN_CONNECT / GET_KEY / CLOSE (pull), stats, and
//! shutdown.

use std::ffi::c_char;
use std::net::SocketAddr;
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use keypipe_core::qkd::{
    Engine, EngineConfig, EngineError, GetKeyError, GetKeyReply, OpenReply, Qos, StreamError,
};
use keypipe_net::http::{Pool, Server, ServerConfig};
use keypipe_net::linked::{LinkedEngine, LinkedSettings, StartError};
use keypipe_net::metrics::RequestMetrics;
use keypipe_net::push_mode::PushMode;
use keypipe_net::router::Router;
use keypipe_net::tls::{ClientAuth, Revoked, ServerTlsFiles, TlsAcceptor, allow_plaintext};
use uuid::Uuid;

use crate::buffer::out_buffer;
use crate::handle::{Call, Handle};
use crate::{arg_str, errors::*, guard, kp_qos, ksid_arg, qos_from_c, qos_to_c, required};

/// Longest `kp_close` waits for the stream's pushes already on the wire.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Opaque handle to one node's engine. Thread-safe.
pub struct kp_engine {
    handle: Handle<EngineParts>,
}

/// What an engine handle owns. Dropped in field order after the listener.
pub(crate) struct EngineParts {
    /// Push mode over the engine (also the engine itself).
    pub(crate) mode: PushMode,
    /// The listener of the peer's link sync (network link only).
    listener: Option<Server>,
    /// The outbound thread (link sync and pushes).
    linked: LinkedEngine,
}

impl EngineParts {
    fn start(config: &EngineConfig, engine: Option<Engine>) -> Result<Self, kp_result> {
        let settings = LinkedSettings::default();
        if config.link.as_ref().is_some_and(|l| l.listen.is_none()) {
            return Err(fail(
                KP_ERR_CONFIG,
                "link.listen is required: where this node receives the peer's link sync".into(),
            ));
        }
        let linked = match engine {
            Some(e) => LinkedEngine::around(Arc::new(e), settings),
            None => LinkedEngine::start(config, settings),
        }
        .map_err(linked_error)?;
        let listener = match &config.link {
            Some(link) => Some(link_listener(config, link.listen, &linked)?),
            None => None,
        };
        Ok(EngineParts {
            mode: PushMode::new(Arc::clone(linked.engine()), Arc::clone(linked.pushes())),
            listener,
            linked,
        })
    }

    /// The engine.
    pub(crate) fn engine(&self) -> &Arc<Engine> {
        self.mode.engine()
    }

    fn wake(&self) {
        self.engine().shut_down();
        self.linked.pushes().stop_all();
    }
}

impl Drop for EngineParts {
    fn drop(&mut self) {
        if let Some(server) = self.listener.take() {
            server.shutdown_handle().trigger();
            server.join();
        }
        self.linked.stop();
    }
}

/// The listener for the peer's link sync: the link routes only.
fn link_listener(
    config: &EngineConfig,
    listen: Option<SocketAddr>,
    linked: &LinkedEngine,
) -> Result<Server, kp_result> {
    let listen = listen.ok_or_else(|| fail(KP_ERR_CONFIG, "link.listen is required".into()))?;
    let link = config.link.as_ref().expect("called for a [link]");
    let tls = match (&link.listen_cert, &link.listen_key, &config.tls) {
        (Some(cert), Some(key), Some(files)) => Some(acceptor(cert, key, &files.ca)?),
        _ => None,
    };
    if tls.is_none() {
        // Link sync between hosts needs mutual TLS.
        allow_plaintext(
            "link.listen",
            listen,
            link.insecure_plaintext,
            "link.listen_cert, link.listen_key and [tls]",
            "link.insecure_plaintext",
        )
        .map_err(|m| fail(KP_ERR_CONFIG, m))?;
    }
    let mut router = Router::new(Arc::new(RequestMetrics::default()));
    linked.mount(&mut router);
    serve(&config.name, listen, router, tls)
}

/// Serves `router` on `listen` with one event loop and one pool thread.
pub(crate) fn serve(
    name: &str,
    listen: SocketAddr,
    router: Router,
    tls: Option<Arc<TlsAcceptor>>,
) -> Result<Server, kp_result> {
    let config = ServerConfig {
        listen,
        workers: 1,
        tls,
        ..ServerConfig::default()
    };
    let io = |e: std::io::Error| fail(KP_ERR_IO, format!("cannot listen on {listen}: {e}"));
    let pool = Pool::new(1).map_err(io)?;
    Server::start(name, &config, Arc::new(router), pool).map_err(io)
}

/// A TLS listener's acceptor: server certificate `cert` and `key`, client
/// certificates required, chaining to `client_ca`.
pub(crate) fn acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: &std::path::Path,
) -> Result<Arc<TlsAcceptor>, kp_result> {
    let files = ServerTlsFiles {
        cert: cert.to_owned(),
        key: key.to_owned(),
        client_ca: Some(client_ca.to_owned()),
        client_auth: ClientAuth::Required,
    };
    TlsAcceptor::new(files, Arc::new(Revoked::new()))
        .map(Arc::new)
        .map_err(|e| fail(KP_ERR_CONFIG, format!("tls: {e}")))
}

fn linked_error(e: StartError) -> kp_result {
    match e {
        StartError::Config(m) => fail(KP_ERR_CONFIG, m),
        StartError::Engine(e) => start_error(e),
        StartError::Io(e) => fail(KP_ERR_IO, e.to_string()),
    }
}

fn start_error(e: EngineError) -> kp_result {
    let code = match e {
        EngineError::Config(_) => KP_ERR_CONFIG,
        _ => KP_ERR_ENGINE_START,
    };
    fail(code, e.to_string())
}

/// Enters a call on the engine behind `e`.
///
/// # Safety
/// `e` is NULL or a live engine whose free has not started.
pub(crate) unsafe fn enter<'a>(e: *const kp_engine) -> Result<Call<'a, EngineParts>, kp_result> {
    // SAFETY: NULL or live by the caller's contract.
    Handle::enter(unsafe { e.as_ref() }.map(|e| &e.handle), "engine")
}

fn boxed(parts: EngineParts) -> *mut kp_engine {
    Box::into_raw(Box::new(kp_engine {
        handle: Handle::new(parts),
    }))
}

/// Parses an optional TOML text; NULL means the defaults.
///
/// # Safety
/// As `arg_str`.
unsafe fn config_arg(config_toml: *const c_char) -> Result<EngineConfig, kp_result> {
    if config_toml.is_null() {
        return Ok(EngineConfig::default());
    }
    // SAFETY: forwarded contract.
    let text = unsafe { arg_str(config_toml, "config_toml") }?;
    EngineConfig::from_toml(text).map_err(|e| fail(KP_ERR_CONFIG, e.to_string()))
}

/// Creates one node from a TOML configuration (keys in the header's
/// comment; NULL = defaults). With a `[link]` section (`peer`, `secret`,
/// `listen`) the node links to its peer node over the network (HTTP link
/// sync, as the server does, on a listener that serves nothing else);
/// without one it has no peer and answers status 4. On success `*out` owns
/// the engine.
///
/// # Safety
/// `config_toml` is NULL or NUL-terminated; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kp_engine_new(
    config_toml: *const c_char,
    out: *mut *mut kp_engine,
) -> kp_result {
    guard(|| {
        required(out, "out")?;
        // SAFETY: forwarded contract.
        let config = unsafe { config_arg(config_toml) }?;
        let parts = EngineParts::start(&config, None)?;
        // SAFETY: `out` is non-NULL and writable by contract.
        unsafe { out.write(boxed(parts)) };
        Ok(KP_OK)
    })
}

/// Creates both nodes of a simulated link (or of a shared key file),
/// linked in-process: `*a` is node A (leader), `*b` node B. NULL config =
/// defaults (simulated link, no rate limit, random link secret).
///
/// # Safety
/// `config_toml` is NULL or NUL-terminated; `a` and `b` are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kp_engine_pair_new(
    config_toml: *const c_char,
    a: *mut *mut kp_engine,
    b: *mut *mut kp_engine,
) -> kp_result {
    guard(|| {
        required(a, "a")?;
        required(b, "b")?;
        // SAFETY: forwarded contract.
        let config = unsafe { config_arg(config_toml) }?;
        let (ea, eb) = Engine::pair(&config).map_err(start_error)?;
        let pa = EngineParts::start(&config, Some(ea))?;
        let pb = EngineParts::start(&config, Some(eb))?;
        // SAFETY: both non-NULL and writable by contract.
        unsafe {
            a.write(boxed(pa));
            b.write(boxed(pb));
        }
        Ok(KP_OK)
    })
}

/// Shuts an engine down without freeing it: calls blocked in
/// `kp_get_key` / `kp_open_connect` return at once (status 4), pushes stop,
/// and every later call on it fails with `KP_ERR_SHUT_DOWN`. Returns when
/// no call is in flight on it any more. Idempotent; NULL is
/// `KP_ERR_NULL_ARGUMENT`.
///
/// # Safety
/// `engine` is NULL or live (not yet freed).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kp_engine_shutdown(engine: *mut kp_engine) -> kp_result {
    guard(|| {
        // SAFETY: NULL or live by contract.
        let e = unsafe { engine.as_ref() }
            .ok_or_else(|| fail(KP_ERR_NULL_ARGUMENT, "engine is NULL".into()))?;
        e.handle.shut_down(EngineParts::wake);
        Ok(KP_OK)
    })
}

/// Frees an engine: shuts it down (waking blocked calls and waiting for
/// calls in flight to return), stops its threads, records its streams and
/// zeroizes all its key. NULL is a no-op. Freeing one node of an in-process
/// pair makes the other answer status 4 for new key.
///
/// # Safety
/// `engine` is NULL or from `kp_engine_new`/`kp_engine_pair_new`, freed
/// once; no call on it may *start* once the free has begun.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kp_engine_free(engine: *mut kp_engine) {
    guard(|| {
        if !engine.is_null() {
            // SAFETY: live by contract.
            unsafe { &*engine }
                .handle
                .shut_down_for_free(EngineParts::wake);
            // SAFETY: allocated by `boxed`, freed once, and no call is in
            // flight any more.
            drop(unsafe { Box::from_raw(engine) });
        }
        Ok(KP_OK)
    });
}

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

/// Fills `*out` with the engine's counters and health: what a product
/// polls to monitor the engine (ring fill, device and link up, streams,
/// pushes) without the HTTP server. Cheap (one short lock). Also answers
/// on a shut-down engine (its last counters, `shut_down` 1).
///
/// # Safety
/// `e` is NULL or live; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kp_engine_stats(e: *mut kp_engine, out: *mut kp_stats) -> kp_result {
    guard(|| {
        required(out, "out")?;
        // SAFETY: NULL or live by contract.
        let handle = unsafe { e.as_ref() }.map(|e| &e.handle);
        // A shut-down engine still reports its last counters.
        let (call, shut_down) = Handle::enter_even_closed(handle)
            .ok_or_else(|| fail(KP_ERR_NULL_ARGUMENT, "engine is NULL".into()))?;
        let stats = stats_of(&call, shut_down);
        // SAFETY: non-NULL, writable by contract.
        unsafe { out.write(stats) };
        Ok(KP_OK)
    })
}

fn stats_of(parts: &EngineParts, shut_down: bool) -> kp_stats {
    let s = parts.engine().stats();
    let p = |f: &std::sync::atomic::AtomicU64| f.load(std::sync::atomic::Ordering::Relaxed);
    let (taken, acked, refused, expired, discarded, rejected) =
        parts.linked.pushes().with_stats(|ps| {
            (
                p(&ps.taken),
                p(&ps.acked),
                p(&ps.refused),
                p(&ps.expired),
                p(&ps.discarded),
                p(&ps.rejected),
            )
        });
    kp_stats {
        blocks_produced: s.counters.produced,
        blocks_consumed: s.counters.consumed,
        blocks_expired: s.counters.expired,
        ring_full_stalls: s.counters.ring_full_stalls,
        ring_len: s.ring_len as u64,
        ring_capacity: s.ring_capacity as u64,
        arena_free: s.arena_free as u64,
        arena_capacity: s.arena_capacity as u64,
        streams: s.streams as u64,
        device_up: s.device_up.into(),
        link_up: s.link_up.into(),
        memory_locked: s.protection.locked.into(),
        ledger_failed: s.ledger_failed.into(),
        link_refused: parts
            .linked
            .link()
            .is_some_and(|l| l.refusal().is_some())
            .into(),
        shut_down: shut_down.into(),
        held_blocks: s.held_blocks,
        ledger_position: s.position,
        pushes_taken: taken,
        pushes_acked: acked,
        pushes_refused: refused,
        pushes_expired: expired,
        pushes_discarded: discarded,
        pushes_rejected: rejected,
    }
}

/// Injects (`down` != 0) or ends an outage of the engine's simulated link
/// (both nodes of a pair see it). `KP_ERR_INVALID_ARGUMENT` for other
/// devices.
///
/// # Safety
/// `e` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kp_simulated_link_set_down(e: *mut kp_engine, down: i32) -> kp_result {
    guard(|| {
        // SAFETY: the caller's contract.
        let engine = unsafe { enter(e) }?;
        let control = engine.engine().link_control().ok_or_else(|| {
            fail(
                KP_ERR_INVALID_ARGUMENT,
                "the engine's device is not a simulated link".into(),
            )
        })?;
        control.set_down(down != 0);
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

/// Counters and health of an engine (`kp_engine_stats`).
#[repr(C)]
#[derive(Default)]
pub struct kp_stats {
    /// Blocks the device produced.
    pub blocks_produced: u64,
    /// Blocks taken from the ring for streams.
    pub blocks_consumed: u64,
    /// Blocks zeroized undelivered (TTL or close).
    pub blocks_expired: u64,
    /// Times the device poller paused on a full ring or arena.
    pub ring_full_stalls: u64,
    /// Blocks waiting in the ring.
    pub ring_len: u64,
    /// Ring capacity, blocks.
    pub ring_capacity: u64,
    /// Arena slots free.
    pub arena_free: u64,
    /// Arena slots.
    pub arena_capacity: u64,
    /// Streams known to the node.
    pub streams: u64,
    /// 1 when the device is producing.
    pub device_up: u8,
    /// 1 when the peer node is reachable.
    pub link_up: u8,
    /// 1 when the arena is locked in memory (mlock).
    pub memory_locked: u8,
    /// 1 when the key ledger cannot be written (no key flows until it can).
    pub ledger_failed: u8,
    /// 1 when the peer refused to pair (device parameters differ; see the
    /// log) or this node refused the peer.
    pub link_refused: u8,
    /// 1 once `kp_engine_shutdown` ran.
    pub shut_down: u8,
    /// Device blocks taken by streams and not yet delivered.
    pub held_blocks: u64,
    /// The device stream position the ledger has reserved up to.
    pub ledger_position: u64,
    /// Chunks taken for pushes to a KMS.
    pub pushes_taken: u64,
    /// Pushed chunks a KMS acknowledged (201).
    pub pushes_acked: u64,
    /// Push answers other than 201 (each is resent).
    pub pushes_refused: u64,
    /// Pushed chunks dropped: their key expired (TTL) or was lost.
    pub pushes_expired: u64,
    /// Chunks taken but not sent when their stream closed (zeroized).
    pub pushes_discarded: u64,
    /// Chunks a KMS refused for good (409), dropped and not resent.
    pub pushes_rejected: u64,
}
