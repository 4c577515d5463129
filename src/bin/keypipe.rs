//! The `keypipe` server binary: `keypipe serve [--config FILE]`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use keypipe::config::{Config, DEFAULT_CONFIG};
use keypipe::http::Pool;
use keypipe::node::RunningNode;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

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
    },
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
        Command::Serve { config, .. } => match serve(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("keypipe: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn serve(path: Option<PathBuf>) -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEYPIPE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let text = match &path {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
        None => DEFAULT_CONFIG.to_owned(),
    };
    let config = Config::from_toml(&text).map_err(|e| match &path {
        Some(p) => format!("{}: {e}", p.display()),
        None => e,
    })?;
    if path.is_none() {
        tracing::warn!("embedded default configuration: its link secrets are public demo values");
    }
    // Signals are blocked for the threads started below (they inherit the
    // handler registration; the iterator thread receives them).
    let mut signals = Signals::new([SIGTERM, SIGINT]).map_err(|e| e.to_string())?;
    let pool = Pool::new(config.pool_threads).map_err(|e| e.to_string())?;
    let mut nodes = Vec::new();
    for node in &config.nodes {
        let running = RunningNode::start(node, &pool).map_err(|e| e.to_string())?;
        println!(
            "listening {} http://{}",
            running.name(),
            running.local_addr()
        );
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
    if let Some(signal) = signals.forever().next() {
        tracing::info!(signal, "shutting down");
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
            "pushes not acknowledged before the grace ran out; their key is erased, never reused"
        );
    }
    for node in nodes {
        node.shut_down();
    }
    tracing::info!("stopped");
    Ok(())
}
