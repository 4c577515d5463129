//! The `keypipe` binary: `keypipe serve [--config FILE]` and the admin
//! commands (`kms`, `donau`, `user`, `keytalk`, `ca`).

mod ca_cli;
mod donau_cli;
mod keytalk_cli;
mod kms_cli;
mod user_cli;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use keypipe_server::api::{AgreementApi, KeyTalkApi};
use keypipe_server::config::{
    Config, DEFAULT_CONFIG, GENERATED_DEVICE_SECRET, GENERATED_LINK_SECRET, Protocol,
};
use keypipe_server::http::Pool;
use keypipe_server::kms::agreement::AgreementService;
use keypipe_server::kms::donau::Donau;
use keypipe_server::kms::keys::StoreKeys;
use keypipe_server::kms::keytalk::KeyTalk;
use keypipe_server::kms::login::LoginService;
use keypipe_server::kms::replay::ReplayCache;
use keypipe_server::node::{RunningNode, Services};
use keypipe_server::store::{EphemeralStore, SecretStore, Store, StoreOptions};
use keypipe_server::tls::Revoked;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use zeroize::Zeroizing;

/// keypipe: QKD key delivery (ETSI GS QKD 004 push mode) and KMS services.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (with no --config: the embedded default, a whole
    /// simulated QKD link on 127.0.0.1:7004 and :7005).
    Serve {
        /// Configuration file (TOML); see --print-default-config.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the embedded default configuration, documented, and exit.
        #[arg(long)]
        print_default_config: bool,
        /// The store's directory (overrides `data_dir` of the configuration).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Start node NODE's key ledger afresh (its device was replaced or
        /// realigned, or its data directory is new on purpose): it adopts
        /// its peer's position instead of refusing to pair. Repeatable.
        #[arg(long, value_name = "NODE")]
        reset_ledger: Vec<String>,
        /// Allow the public demo secrets of keypipe's first default
        /// configuration (only when every listener is on loopback).
        #[arg(long)]
        demo: bool,
    },
    /// Administer the NCP KMS keys and access keys (safe while the server runs).
    Kms {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        command: kms_cli::KmsCommand,
    },
    /// Administer the Taler Donau keys (safe while the server runs).
    Donau {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        command: donau_cli::DonauCommand,
    },
    /// Administer the login users of key-agreement (safe while the server runs).
    User {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        command: user_cli::UserCommand,
    },
    /// KeyTalk: registered devices, the RCCD for clients, hashing a
    /// challenge answer (safe while the server runs).
    Keytalk {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        command: keytalk_cli::KeyTalkCommand,
    },
    /// keypipe's CA: create it, issue server and client certificates, list
    /// and revoke them (safe while the server runs; revocations reach
    /// every listener within a second).
    Ca {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        command: ca_cli::CaCommand,
    },
    /// The store itself: move an SQLite store to PostgreSQL.
    Store {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        command: StoreCommand,
    },
}

/// `keypipe store …`.
#[derive(Subcommand)]
enum StoreCommand {
    /// Copy this SQLite store (DATA_DIR) into the empty PostgreSQL database
    /// URL, wrapped blobs as they are, then check row counts and a sample
    /// of decryptions; refuses a target that holds anything. The copy holds
    /// the SQLite store's write lock: stop the server first (its writes
    /// would wait, then fail).
    MigrateTo {
        /// The PostgreSQL database (`postgres://user@host/db` or
        /// `host=… user=… dbname=…`); `-` reads it from standard input
        /// (keeps a password out of the process list).
        url: String,
    },
}

/// Where an admin command finds the store.
#[derive(clap::Args)]
struct StoreArgs {
    /// The store's directory.
    #[arg(long, default_value = "./keypipe-data", global = true)]
    data_dir: PathBuf,
    /// The KEK file (default: DATA_DIR/kek.key); `$KEYPIPE_KEK` wins when set.
    #[arg(long, global = true)]
    kek_file: Option<PathBuf>,
    /// The store's PostgreSQL database (the `[store] url` of the servers'
    /// configuration) instead of the SQLite file in DATA_DIR;
    /// `$KEYPIPE_STORE_URL` when not given.
    #[arg(long, global = true, env = "KEYPIPE_STORE_URL", hide_env_values = true)]
    store_url: Option<String>,
}

impl StoreArgs {
    /// The store's options (KEK from `--kek-file`, else `$KEYPIPE_KEK`,
    /// else `DATA_DIR/kek.key`).
    fn options(&self) -> StoreOptions {
        let mut options = StoreOptions::new(&self.data_dir);
        options.kek_file = self.kek_file.clone();
        options.kek_env = Some("KEYPIPE_KEK".into());
        options.url = self.store_url.clone();
        options
    }

    /// Opens the store.
    fn open(self) -> Result<Store, String> {
        Store::open(&self.options()).map_err(|e| e.to_string())
    }
}

/// Runs one `store` command.
fn store_command(args: StoreArgs, command: StoreCommand) -> Result<String, String> {
    match command {
        StoreCommand::MigrateTo { url } => {
            let url = if url == "-" {
                let mut line = Zeroizing::new(String::new());
                std::io::stdin()
                    .read_line(&mut line)
                    .map_err(|e| format!("reading the URL from standard input: {e}"))?;
                line.trim().to_owned()
            } else {
                url
            };
            let options = args.options();
            let store = Store::open(&options).map_err(|e| e.to_string())?;
            let copied = store
                .migrate_to(&options, &url)
                .map_err(|e| e.to_string())?;
            let rows: u64 = copied.tables.iter().map(|(_, n)| n).sum();
            let mut out = format!(
                "copied {rows} rows of {} tables; {} secrets decrypt the same on both\n",
                copied.tables.len(),
                copied.checked
            );
            for (table, n) in &copied.tables {
                out.push_str(&format!("  {table}: {n}\n"));
            }
            out.push_str("set [store] url in the servers' configuration to use it\n");
            Ok(out)
        }
    }
}

/// Prints an admin command's result; the exit code.
fn report(prefix: &str, result: Result<String, String>) -> ExitCode {
    match result {
        Ok(text) => {
            if !text.is_empty() {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{prefix}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            print_default_config: true,
            ..
        } => {
            print!("{DEFAULT_CONFIG}");
            ExitCode::SUCCESS
        }
        Command::Serve {
            config,
            data_dir,
            reset_ledger,
            demo,
            ..
        } => match serve(config, data_dir, &reset_ledger, demo) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("keypipe: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Kms { store, command } => report(
            "keypipe kms",
            store.open().and_then(|s| kms_cli::run(s, command)),
        ),
        Command::Donau { store, command } => report(
            "keypipe donau",
            store.open().and_then(|s| donau_cli::run(s, command)),
        ),
        Command::User { store, command } => report(
            "keypipe user",
            store.open().and_then(|s| user_cli::run(s, command)),
        ),
        // Hashing needs no store.
        Command::Keytalk {
            command: keytalk_cli::KeyTalkCommand::Hash,
            ..
        } => report("keypipe keytalk", user_cli::hash_stdin()),
        Command::Keytalk { store, command } => report(
            "keypipe keytalk",
            store.open().and_then(|s| keytalk_cli::run(s, command)),
        ),
        Command::Ca { store, command } => report(
            "keypipe ca",
            store.open().and_then(|s| ca_cli::run(s, command)),
        ),
        Command::Store { store, command } => report("keypipe store", store_command(store, command)),
    }
}

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

fn serve(
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
    let services = if let Some(store) = store {
        let keys = StoreKeys::new(Arc::clone(&store) as _).map_err(|e| e.to_string())?;
        // Shared with the site's other processes (PostgreSQL): the
        // references, throttles and KeyTalk sessions live in the store.
        let shared = store
            .is_shared()
            .then(|| Arc::clone(&store) as Arc<dyn EphemeralStore>);
        let agreement = config.serves(Protocol::KeyAgreement).then(|| {
            let (service, login) = (
                config.key_agreement.service_config(),
                config.login.service_config(),
            );
            let (agreement, login) = match &shared {
                Some(shared) => {
                    let agreement =
                        Arc::new(AgreementService::with_store(service, Arc::clone(shared)));
                    let login = LoginService::with_store(
                        Arc::clone(&store) as _,
                        Arc::clone(&agreement),
                        login,
                        Arc::clone(shared),
                    );
                    (agreement, login)
                }
                None => {
                    let agreement = Arc::new(AgreementService::new(service));
                    let login =
                        LoginService::new(Arc::clone(&store) as _, Arc::clone(&agreement), login);
                    (agreement, login)
                }
            };
            AgreementApi::new(agreement, Arc::new(login), config.key_agreement.max_queued)
        });
        let donau = match (&config.donau, config.serves(Protocol::Donau)) {
            (Some(settings), true) => {
                let donau = Donau::open(Arc::clone(&store) as _, settings.service_config())
                    .map_err(|e| format!("donau: {e}"))?;
                let donau = Arc::new(donau);
                // Picks up CLI changes (mark-lost); ends with the Donau.
                keypipe_server::kms::donau::watch(&donau).map_err(|e| format!("donau: {e}"))?;
                Some((donau, settings.base_path.get_ref().clone()))
            }
            _ => None,
        };
        let keytalk = if config.serves(Protocol::KeyTalk) {
            Some(start_keytalk(&mut config, &store, shared.clone())?)
        } else {
            None
        };
        if config.serves(Protocol::Etsi014) {
            prepare_etsi014(&mut config, &store)?;
        }
        Services {
            keys: Some(Arc::new(keys)),
            agreement,
            donau,
            keytalk,
            etsi014: config.etsi014.clone(),
            revoked,
            ncp_replay: Arc::new(ReplayCache::new(config.ncp.replay_cache_entries)),
        }
    } else {
        Services {
            revoked,
            ..Services::default()
        }
    };
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

/// ETSI 014: the CA (created on first start), and each 014 listener's
/// certificate when the configuration names none, with keypipe's CA
/// bundle as the client CA (SAE certificates are issued by it).
fn prepare_etsi014(config: &mut Config, store: &Arc<Store>) -> Result<(), String> {
    use keypipe_server::kms::ca::{Ca, KeyType};
    use keypipe_server::listener_cert::{ca_bundle_file, server_files};
    if Ca::new(store.as_ref())
        .init("keypipe")
        .map_err(|e| format!("etsi014: CA: {e}"))?
    {
        tracing::info!("etsi014: keypipe's CA created (Primary, Signing and Server CA)");
    }
    let data_dir = config.data_dir.clone();
    for node in config.nodes.iter_mut() {
        let name = node.name.clone();
        if let Some(listener) = node.etsi014.as_mut()
            && listener.tls.is_none()
        {
            let mut files = server_files(
                store,
                &data_dir,
                "etsi014",
                &name,
                &[listener.listen],
                &listener.names,
                KeyType::P256,
            )?;
            files.client_ca = Some(ca_bundle_file(store, &data_dir, "etsi014")?);
            files.client_auth = keypipe_server::tls::ClientAuth::Required;
            listener.tls = Some(files);
        }
    }
    Ok(())
}

/// KeyTalk: the CA (created on first start), the listener's certificate
/// when the configuration names none, and the service.
fn start_keytalk(
    config: &mut Config,
    store: &Arc<Store>,
    shared: Option<Arc<dyn EphemeralStore>>,
) -> Result<KeyTalkApi, String> {
    use keypipe_server::kms::ca::Ca;
    let ca = Ca::new(store.as_ref());
    if ca
        .init("keypipe")
        .map_err(|e| format!("keytalk: CA: {e}"))?
    {
        tracing::info!("keytalk: keypipe's CA created (Primary, Signing and Server CA)");
    }
    let data_dir = config.data_dir.clone();
    let mut ports = Vec::new();
    for node in config.nodes.iter_mut() {
        let name = node.name.clone();
        if let Some(kt) = node.keytalk.as_mut() {
            if kt.tls.is_none() {
                kt.tls = Some(keypipe_server::listener_cert::server_files(
                    store,
                    &data_dir,
                    "keytalk",
                    &name,
                    &kt.listen.all(),
                    &kt.names,
                    keypipe_server::kms::ca::KeyType::P384,
                )?);
            }
            ports.push(kt.ca_listen.port());
        }
    }
    let [port] = ports[..] else {
        return Err("keytalk: serve it on one node only".into());
    };
    let settings = config
        .keytalk
        .service_config(format!("http://$(KEYTALK_SVR_HOST):{port}/cert/?"))?;
    let loaded = ca.load().map_err(|e| format!("keytalk: CA: {e}"))?;
    let service = KeyTalk::with_shared(settings, Arc::clone(store) as _, loaded, shared);
    Ok(KeyTalkApi::new(
        Arc::new(service),
        config.keytalk.max_queued,
    ))
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
