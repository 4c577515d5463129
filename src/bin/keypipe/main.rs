//! The `keypipe` binary: the command line and its dispatch. `serve` runs
//! the server (`serve.rs`, `services.rs`); the admin commands (`kms`,
//! `donau`, `user`, `keytalk`, `ca`, `store`) work on the store, one file
//! each.

mod ca_cli;
mod donau_cli;
mod keytalk_cli;
mod kms_cli;
mod serve;
mod services;
mod store_cli;
mod user_cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keypipe_server::config::DEFAULT_CONFIG;
use keypipe_server::store::{Store, StoreOptions};

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
        command: store_cli::StoreCommand,
    },
}

/// Where an admin command finds the store.
#[derive(clap::Args)]
pub struct StoreArgs {
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
    pub fn options(&self) -> StoreOptions {
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
        } => match serve::serve(config, data_dir, &reset_ledger, demo) {
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
        Command::Store { store, command } => {
            report("keypipe store", store_cli::run(store, command))
        }
    }
}
