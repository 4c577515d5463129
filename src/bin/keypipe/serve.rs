//! `keypipe serve`: the server process from start to exit: logging, the
//! configuration, the KEK and the store, the nodes, then signals (SIGHUP
//! reloads TLS files; SIGTERM and SIGINT shut down within the grace).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keypipe_server::config::{
    Config, DEFAULT_CONFIG, GENERATED_DEVICE_SECRET, GENERATED_LINK_SECRET,
};
use keypipe_server::http::Pool;
use keypipe_server::node::RunningNode;
use keypipe_server::store::{SecretStore, Store};
use keypipe_server::tls::Revoked;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use zeroize::Zeroizing;

/// Takes the variable `name` out of this process's environment: its value
/// (zeroized on drop). The text in the environment block is overwritten
/// first (`unsetenv` alone leaves it there, where `/proc/PID/environ` and
/// a core dump would show it), then the variable is removed, so no child
/// inherits it.
fn take_env_var(name: &str) -> Result<Option<Zeroizing<String>>, String> {
    let Some(value) = std::env::var_os(name) else {
        return Ok(None);
    };
    let c_name = std::ffi::CString::new(name).map_err(|_| format!("bad variable name {name:?}"))?;
    // `serve` calls this on the main thread before it starts any other
    // thread (logging and configuration start none): nothing else reads or
    // changes the environment meanwhile.
    // SAFETY: single-threaded here (above); a valid C string.
    let text = unsafe { libc::getenv(c_name.as_ptr()) };
    if !text.is_null() {
        // SAFETY: `text` is the NUL-terminated value in our environment block.
        let len = unsafe { libc::strlen(text) };
        for i in 0..len {
            // SAFETY: in bounds of that value, overwritten in place.
            unsafe { std::ptr::write_volatile(text.add(i), b'0' as libc::c_char) };
        }
    }
    // SAFETY: single-threaded here (above).
    unsafe { std::env::remove_var(name) };
    value
        .into_string()
        .map(|v| Some(Zeroizing::new(v)))
        .map_err(|_| format!("environment variable {name} is not UTF-8"))
}

/// Runs the server until SIGTERM or SIGINT: `path` (default: the embedded
/// configuration), `data_dir` over its `data_dir`, the ledgers of
/// `reset_ledger` started afresh, the public demo secrets allowed by `demo`.
pub fn serve(
    path: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    reset_ledger: &[String],
    demo: bool,
) -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEYPIPE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal, never into log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // The text may hold the device and link secrets: wiped once parsed.
    let text = Zeroizing::new(match &path {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
        None => DEFAULT_CONFIG.to_owned(),
    });
    let mut config = Config::from_toml(&text).map_err(|e| match &path {
        Some(p) => format!("{}: {e}", p.display()),
        None => e,
    })?;
    drop(text);
    keypipe_server::process::protect(&config.process)?;
    let kek_env = take_env_var(&config.kek_env)?;
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    config.apply_data_dir();
    for name in reset_ledger {
        let engine = config
            .nodes
            .iter_mut()
            .find(|n| &n.name == name)
            .and_then(|n| n.engine.as_mut())
            .ok_or_else(|| format!("--reset-ledger {name}: no node {name} with an engine"))?;
        engine.reset_ledger = true;
    }
    let demo_users = config.demo_secret_users();
    if !demo_users.is_empty() {
        if !demo || !config.all_loopback() {
            return Err(format!(
                "node {} still uses the public demo secrets of keypipe's first default \
                 configuration: anyone can compute its keys and forge its link. Remove \
                 device.link_secret and link.secret (keypipe then generates fresh ones in the data \
                 directory), or set your own{}",
                demo_users.join(", "),
                if config.all_loopback() {
                    "; for a local demo only, start with --demo"
                } else {
                    " (--demo is only for configurations whose listeners are all on loopback)"
                }
            ));
        }
        tracing::warn!(nodes = %demo_users.join(", "), "--demo: public demo secrets in use; never for real key");
    }
    let store = if config.needs_store() {
        let lookup = |name: &str| {
            (name == config.kek_env)
                .then(|| kek_env.as_deref().map(std::ffi::OsString::from))
                .flatten()
        };
        let store = Store::open_with_env(&config.store_options(), &lookup)
            .map_err(|e| format!("store {}: {e}", config.data_dir.display()))?;
        Some(Arc::new(store))
    } else {
        None
    };
    // The store holds the KEK in locked memory now.
    drop(kek_env);
    if config.needs_generated_secrets() {
        let store = store.as_ref().expect("opened for the secrets");
        let secret = |name| {
            store
                .generated_secret(name)
                .map_err(|e| format!("generated secret {name}: {e}"))
        };
        let (device, link) = (
            secret(GENERATED_DEVICE_SECRET)?,
            secret(GENERATED_LINK_SECRET)?,
        );
        config.fill_secrets(&device, &link);
        tracing::info!(
            data_dir = %config.data_dir.display(),
            "secrets not in the configuration are this data directory's own (generated on first start)"
        );
    }
    let revoked = Arc::new(Revoked::new());
    if let Some(store) = &store
        && config.checks_client_certificates()
    {
        keypipe_server::revocation::watch(Arc::clone(store) as _, Arc::clone(&revoked))
            .map_err(|e| format!("revocation watch: {e}"))?;
    }
    let services = crate::services::start(&mut config, store, revoked)?;
    // Signals are blocked for the threads started below (they inherit the
    // handler registration; the iterator thread receives them).
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(|e| e.to_string())?;
    let pool = Pool::new(config.pool_threads).map_err(|e| e.to_string())?;
    let mut nodes = Vec::new();
    for node in &config.nodes {
        let running = RunningNode::start_with(node, &pool, &services).map_err(|e| e.to_string())?;
        println!(
            "listening {} {}://{}",
            running.name(),
            if running.tls().is_some() {
                "https"
            } else {
                "http"
            },
            running.local_addr()
        );
        if let [tls @ .., plain] = running.keytalk_addrs().as_slice() {
            let tls: Vec<String> = tls.iter().map(|a| format!("https://{a}")).collect();
            println!(
                "listening {} keytalk {} (RCDP, public API), http://{plain} (CA, downloads)",
                running.name(),
                tls.join(" ")
            );
        }
        if let Some((addr, _)) = running.etsi014() {
            println!(
                "listening {} etsi014 https://{addr} (SAE client certificates)",
                running.name()
            );
        }
        nodes.push(running);
    }
    if let Some(first) = nodes.first() {
        // Source: the first node's own KMS side; destination: the second
        // node's, when there is one (as in the README walk-through).
        let base = format!("http://{}", first.local_addr());
        let other = nodes
            .get(1)
            .map_or(base.clone(), |n| format!("http://{}", n.local_addr()));
        println!(
            "try:\n  curl -s -X POST {base}/api/v1/kms/etsi004/open-connect \\\n    -d '{{\"source\":\"{base}\",\"destination\":\"{other}\",\"key_stream_id\":null,\"qos\":{{\"key_chunk_size\":32}}}}'"
        );
    }
    let grace = config
        .nodes
        .iter()
        .map(|n| n.http.shutdown_grace_ms)
        .max()
        .unwrap_or(5000);
    for signal in signals.forever() {
        if signal == SIGHUP {
            reload_tls(&nodes);
            continue;
        }
        tracing::info!(signal, "shutting down");
        break;
    }
    // Pushes first (node A's KMS side may be this very process), then the
    // listeners, which finish their in-flight requests.
    for node in &nodes {
        node.stop_pushing();
    }
    let deadline = Instant::now() + Duration::from_millis(grace);
    while nodes.iter().any(|n| n.pushes_pending() > 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let lost: usize = nodes.iter().map(RunningNode::pushes_pending).sum();
    if lost > 0 {
        tracing::warn!(
            chunks = lost,
            "pushes not acknowledged before the grace ran out; their key is erased, and the key \
             ledger keeps it from ever being handed out again"
        );
    }
    for node in nodes {
        node.shut_down();
    }
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP: every TLS listener reads its certificate, key and client CA
/// again; new connections use them, open ones keep theirs. A listener
/// whose files do not load keeps what it had, and the log says why.
fn reload_tls(nodes: &[RunningNode]) {
    for node in nodes {
        if let Some((_, tls)) = node.etsi014()
            && let Err(e) = tls.reload()
        {
            tracing::error!(
                node = node.name(),
                "ETSI 014 TLS reload failed, keeping the old: {e}"
            );
        }
        if let Some(tls) = node.keytalk_tls()
            && let Err(e) = tls.reload()
        {
            tracing::error!(
                node = node.name(),
                "KeyTalk TLS reload failed, keeping the old: {e}"
            );
        }
        if let Some(tls) = node.tls() {
            match tls.reload() {
                Ok(()) => tracing::info!(node = node.name(), "TLS certificate and key reloaded"),
                Err(e) => tracing::error!(
                    node = node.name(),
                    "TLS reload failed, keeping the old: {e}"
                ),
            }
        }
    }
}
