//! `keypipe user …`: the users of the key-agreement login and of KeyTalk
//! (KeyTalk's are those of its domain, `keytalk` by default, with the
//! services they may enrol for and their password expiry). Passwords are read from standard input
//! (one line; a trailing newline is dropped) and stored only as an
//! Argon2id hash.

use std::io::Read;

use clap::Subcommand;
use keypipe_server::kms::login::{MAX_NAME, password};
use keypipe_server::store::{KeyTalkStore, Store, UserStore};
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
        /// A KeyTalk service the user may enrol for (repeatable).
        #[arg(long)]
        service: Vec<String>,
        /// The password expires after this many days (0: already
        /// expired, so the first KeyTalk login must change it).
        #[arg(long)]
        password_expires_days: Option<u32>,
    },
    /// Let a user enrol for a KeyTalk service.
    AddService {
        /// The user's domain.
        #[arg(long)]
        domain: String,
        /// The user's name.
        #[arg(long)]
        name: String,
        /// The service.
        #[arg(long)]
        service: String,
    },
    /// Set when a user's password expires.
    Expire {
        /// The user's domain.
        #[arg(long)]
        domain: String,
        /// The user's name.
        #[arg(long)]
        name: String,
        /// Days from now (0: now); omitted: never.
        #[arg(long)]
        days: Option<u32>,
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

/// Reads a secret from standard input (one line; a trailing newline is
/// dropped) and hashes it (Argon2id PHC string).
pub fn hash_stdin() -> Result<String, String> {
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
    password::hash(&input[..end]).ok_or_else(|| "the OS random source failed".into())
}

/// `days` from now, ms since the epoch.
fn expiry(days: u32) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    now + i64::from(days) * 86_400_000
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
        UserCommand::Add {
            domain,
            name,
            service,
            password_expires_days,
        } => {
            check("domain", &domain)?;
            check("name", &name)?;
            let hash = hash_stdin()?;
            store
                .add_user(&domain, &name, &hash)
                .map_err(|e| e.to_string())?;
            for s in &service {
                store
                    .add_membership(&domain, &name, s)
                    .map_err(|e| e.to_string())?;
            }
            if let Some(days) = password_expires_days {
                store
                    .set_password_expiry(&domain, &name, Some(expiry(days)))
                    .map_err(|e| e.to_string())?;
            }
            json!({"domain": domain, "name": name, "added": true, "services": service}).to_string()
        }
        UserCommand::AddService {
            domain,
            name,
            service,
        } => {
            if !store
                .add_membership(&domain, &name, &service)
                .map_err(|e| e.to_string())?
            {
                return Err(format!("no user {name:?} in domain {domain:?}"));
            }
            json!({"domain": domain, "name": name, "service": service}).to_string()
        }
        UserCommand::Expire { domain, name, days } => {
            if !store
                .set_password_expiry(&domain, &name, days.map(expiry))
                .map_err(|e| e.to_string())?
            {
                return Err(format!("no user {name:?} in domain {domain:?}"));
            }
            json!({"domain": domain, "name": name, "expires_days": days}).to_string()
        }
        UserCommand::List => store
            .list_users()
            .map_err(|e| e.to_string())?
            .iter()
            .map(|u| {
                let services = store.memberships(&u.domain, &u.name).unwrap_or_default();
                let expires = store.password_expiry(&u.domain, &u.name).ok().flatten();
                json!({"domain": u.domain, "name": u.name, "created_ms": u.created_ms,
                       "services": services, "password_expires_ms": expires})
                .to_string()
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
