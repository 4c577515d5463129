//! `keypipe donau …`: the Donau keys in the store (safe while the server
//! runs; it picks changes up within a second).

use clap::Subcommand;
use keypipe_server::kms::donau::Amount;
use keypipe_server::store::{DonauKind, DonauStore, Store};
use serde_json::json;

/// The `donau` subcommands.
#[derive(Subcommand)]
pub enum DonauCommand {
    /// List the Donau keys, one JSON object per line (public facts only).
    List,
    /// Erase a key's private part: the unit is then listed with
    /// `"lost": true` (a signing key is no longer listed). Cannot be undone.
    MarkLost {
        /// RSA or CS (a donation unit), or SIGN (a signing key).
        #[arg(long)]
        kind: String,
        /// The unit's value, e.g. KUDOS:10 (not for SIGN).
        #[arg(long)]
        value: Option<String>,
        /// The key's year.
        #[arg(long)]
        year: u16,
    },
}

/// Runs one `donau` command; the text to print.
pub fn run(store: Store, command: DonauCommand) -> Result<String, String> {
    Ok(match command {
        DonauCommand::List => store
            .donau_public_keys()
            .map_err(|e| e.to_string())?
            .iter()
            .map(|k| {
                json!({"kind": k.kind.as_str(), "value": k.value, "year": k.year,
                       "lost": k.lost})
                .to_string()
            })
            .collect::<Vec<_>>()
            .join("\n"),
        DonauCommand::MarkLost { kind, value, year } => {
            let (kind, value) = match (kind.as_str(), value) {
                ("RSA", Some(v)) => (DonauKind::Rsa, v),
                ("CS", Some(v)) => (DonauKind::Cs, v),
                ("SIGN", None) => (DonauKind::Sign, String::new()),
                ("RSA" | "CS", None) => return Err("--value is required for RSA and CS".into()),
                ("SIGN", Some(_)) => return Err("--value is not for SIGN".into()),
                (other, _) => return Err(format!("--kind {other:?}: expected RSA, CS or SIGN")),
            };
            let value = match kind {
                DonauKind::Sign => value,
                _ => value
                    .parse::<Amount>()
                    .map_err(|e| e.to_string())?
                    .to_string(),
            };
            if !store
                .mark_donau_lost(kind, &value, year)
                .map_err(|e| e.to_string())?
            {
                return Err(format!("no {} key {value:?} for {year}", kind.as_str()));
            }
            json!({"kind": kind.as_str(), "value": value, "year": year, "lost": true}).to_string()
        }
    })
}
