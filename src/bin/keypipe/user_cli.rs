//! `keypipe user …`: the login users of the key-agreement service (the
//! same store will serve KeyTalk). Passwords are read from standard input
//! (one line; a trailing newline is dropped) and stored only as an
//! Argon2id hash.

use std::io::Read;

use clap::Subcommand;
use keypipe_server::kms::login::{MAX_NAME, password};
use keypipe_server::store::{Store, UserStore};
use serde_json::json;
use zeroize::Zeroizing;

/// The `user` subcommands.
#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user; the password is read from standard input.
    Add {
        /// The user's domain.
        #[arg(long)]
        domain: String,
        /// The user's name.
        #[arg(long)]
        name: String,
    },
    /// List users, one JSON object per line (never the hash).
    List,
    /// Remove a user and end its sessions.
    Remove {
        /// The user's domain.
        #[arg(long)]
        domain: String,
        /// The user's name.
        #[arg(long)]
        name: String,
    },
}

fn check(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > MAX_NAME {
        return Err(format!("--{field} must be 1 to {MAX_NAME} bytes"));
    }
    Ok(())
}

/// Runs one `user` command; the text to print.
pub fn run(store: Store, command: UserCommand) -> Result<String, String> {
    Ok(match command {
        UserCommand::Add { domain, name } => {
            check("domain", &domain)?;
            check("name", &name)?;
            // Room up front: no reallocation leaves a copy behind.
            let mut input = Zeroizing::new(Vec::with_capacity(64 * 1024));
            std::io::stdin()
                .take(64 * 1024 - 1)
                .read_to_end(&mut input)
                .map_err(|e| format!("reading the password from standard input: {e}"))?;
            let mut end = input.len();
            while end > 0 && matches!(input[end - 1], b'\n' | b'\r') {
                end -= 1;
            }
            if end == 0 {
                return Err("no password on standard input".into());
            }
            let hash = password::hash(&input[..end]).ok_or("the OS random source failed")?;
            store
                .add_user(&domain, &name, &hash)
                .map_err(|e| e.to_string())?;
            json!({"domain": domain, "name": name, "added": true}).to_string()
        }
        UserCommand::List => store
            .list_users()
            .map_err(|e| e.to_string())?
            .iter()
            .map(|u| {
                json!({"domain": u.domain, "name": u.name, "created_ms": u.created_ms}).to_string()
            })
            .collect::<Vec<_>>()
            .join("\n"),
        UserCommand::Remove { domain, name } => {
            if !store
                .remove_user(&domain, &name)
                .map_err(|e| e.to_string())?
            {
                return Err(format!("no user {name:?} in domain {domain:?}"));
            }
            json!({"domain": domain, "name": name, "removed": true}).to_string()
        }
    })
}
