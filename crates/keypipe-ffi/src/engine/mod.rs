//! The engine handle ([`kp_engine`]): what it owns (the engine, its
//! network link and listener, push mode) and its life: create (alone,
//! linked over the network, or as an in-process pair), shut down, free.
//!
//! The rest is in submodules: the listeners (`listener`), the pull calls
//! OPEN_CONNECT / GET_KEY / CLOSE (`pull`), the counters (`stats`) and the
//! simulated link's outage switch (`simulated`).

// cbindgen writes this module's items, then each submodule's in
// declaration order, and that is the order of `include/keypipe.h` (the
// order of the single file these came from): `simulated` stays last.
mod listener;
mod pull;
mod stats;
// Apart from the group above, which rustfmt sorts.
mod simulated;

use std::ffi::c_char;
use std::sync::Arc;

use keypipe_core::qkd::{Engine, EngineConfig, EngineError};
use keypipe_net::http::Server;
use keypipe_net::linked::{LinkedEngine, LinkedSettings, StartError};
use keypipe_net::push_mode::PushMode;

use crate::handle::{Call, Handle};
use crate::{arg_str, errors::*, guard, required};
use listener::link_listener;
pub(crate) use listener::{acceptor, serve};
pub(crate) use pull::open_with;
pub use pull::{kp_close, kp_get_key, kp_metadata, kp_open_connect, kp_stream_qos};
pub use simulated::kp_simulated_link_set_down;
pub use stats::{kp_engine_stats, kp_stats};

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
