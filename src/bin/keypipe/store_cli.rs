//! `keypipe store …`: the store itself; `migrate-to` copies an SQLite
//! store into an empty PostgreSQL database and checks the copy.

use clap::Subcommand;
use keypipe_server::store::Store;
use zeroize::Zeroizing;

use crate::StoreArgs;

/// `keypipe store …`.
#[derive(Subcommand)]
pub enum StoreCommand {
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

/// Runs one `store` command.
pub fn run(args: StoreArgs, command: StoreCommand) -> Result<String, String> {
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
