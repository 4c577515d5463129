//! `keypipe kms …`: administration of the NCP-KMS store, against the same
//! data directory as a running server (safe while it runs: every change is
//! one short SQLite transaction; the server sees it within 100 ms).
//!
//! New key material here comes from the OS generator (this process has no
//! QKD device; the server mixes QKD key into what it generates).

use std::sync::Arc;

use clap::Subcommand;
use keypipe_server::kms::entropy::Entropy;
use keypipe_server::kms::ncp::{Action, generate_material};
use keypipe_server::store::{Grant, KeyStore, KeyType, Store};
use serde_json::json;
use zeroize::Zeroizing;

/// The `kms` subcommands.
#[derive(Subcommand)]
pub enum KmsCommand {
    /// Create a master key; prints {"keyTag","type","version"}.
    CreateKey {
        /// Display name.
        #[arg(long)]
        name: String,
        /// AES256, RSA2048 or ECDSA.
        #[arg(long = "type")]
        key_type: String,
        /// Convergent (deterministic per context) encryption; AES256 only.
        #[arg(long)]
        convergent: bool,
    },
    /// Add a version to a key (rotation); prints {"keyTag","version"}.
    Rotate {
        /// The keyTag.
        key_tag: String,
    },
    /// Disable a key, or one version of it.
    Disable {
        /// The keyTag.
        key_tag: String,
        /// Only this version.
        #[arg(long)]
        version: Option<u32>,
    },
    /// Enable a key, or one version of it.
    Enable {
        /// The keyTag.
        key_tag: String,
        /// Only this version.
        #[arg(long)]
        version: Option<u32>,
    },
    /// List keys, one JSON object per line.
    List,
    /// Create an access key; prints {"access_key","secret_key","api_key"}
    /// once. It may do only what its grants allow (none: nothing).
    CreateAccessKey {
        /// A grant, TAG:ACTIONS (keyTag or `*`; actions comma separated,
        /// or `*`), e.g. `--grant 0a1b…:encrypt,decrypt`. Repeatable.
        #[arg(long)]
        grant: Vec<String>,
    },
    /// Let an access key do ACTIONS with a key (replaces its grant for
    /// that key): `grant AK TAG encrypt,decrypt` (`*` for every key or action).
    Grant {
        /// The access key.
        access_key: String,
        /// The keyTag, or `*` for every key.
        key_tag: String,
        /// Actions, comma separated (encrypt, decrypt, createCustomKey,
        /// reencrypt, sign, verify), or `*`.
        actions: String,
    },
    /// Remove an access key's grant for a key.
    RevokeGrant {
        /// The access key.
        access_key: String,
        /// The keyTag (or `*`).
        key_tag: String,
    },
    /// List the access keys and their grants (no secret), one JSON object per line.
    ListAccessKeys,
    /// Revoke an access key.
    RevokeAccessKey {
        /// The access key.
        access_key: String,
    },
    /// Rotate the KEK: every wrapped secret of the store moves to the KEK
    /// of FILE (created 0600 when it does not exist), in one transaction.
    /// Stop the server first, then start it with the new KEK (`kek_file`,
    /// or the new file moved over the old one); prints
    /// {"old_kek","new_kek","rewrapped"} (KEK ids, never the KEKs).
    Rewrap {
        /// The new KEK file.
        #[arg(long)]
        new_kek_file: std::path::PathBuf,
    },
}

/// Runs one `kms` command on `store`; the text to print.
pub fn run(store: Store, command: KmsCommand) -> Result<String, String> {
    if let KmsCommand::Rewrap { new_kek_file } = &command {
        let done = store.rewrap(new_kek_file).map_err(|e| e.to_string())?;
        return Ok(
            json!({"old_kek": done.old_kek.to_string(), "new_kek": done.new_kek.to_string(),
                         "rewrapped": done.blobs})
            .to_string(),
        );
    }
    let store: Arc<dyn KeyStore> = Arc::new(store);
    let err = |e: keypipe_server::store::StoreError| e.to_string();
    let material = |key_type: KeyType| -> Result<Zeroizing<Vec<u8>>, String> {
        let mut seed = Zeroizing::new([0u8; 32]);
        Entropy::os_only()
            .fill(&mut seed[..])
            .map_err(|e| e.to_string())?;
        Ok(generate_material(key_type, &seed))
    };
    Ok(match command {
        KmsCommand::CreateKey {
            name,
            key_type,
            convergent,
        } => {
            let key_type: KeyType = key_type.parse().map_err(|e| format!("{e}"))?;
            if convergent && key_type != KeyType::Aes256 {
                return Err("--convergent is for AES256 keys only".into());
            }
            let tag = store
                .create_key(&name, key_type, convergent, &material(key_type)?)
                .map_err(err)?;
            json!({"keyTag": tag, "type": key_type.as_str(), "version": 1}).to_string()
        }
        KmsCommand::Rotate { key_tag } => {
            let key = store
                .key(&key_tag)
                .map_err(err)?
                .ok_or_else(|| format!("no key {key_tag}"))?;
            let version = store
                .add_version(&key_tag, &material(key.key_type)?)
                .map_err(err)?;
            json!({"keyTag": key_tag, "version": version}).to_string()
        }
        KmsCommand::Disable { key_tag, version } => switch(&*store, &key_tag, version, false)?,
        KmsCommand::Enable { key_tag, version } => switch(&*store, &key_tag, version, true)?,
        KmsCommand::List => store
            .list_keys()
            .map_err(err)?
            .iter()
            .map(|k| {
                let versions: Vec<_> = k
                    .versions
                    .iter()
                    .map(|(v, on)| json!({"version": v, "enabled": on}))
                    .collect();
                json!({"keyTag": k.tag, "name": k.name, "type": k.key_type.as_str(),
                       "convergent": k.convergent, "enabled": k.enabled, "versions": versions})
                .to_string()
            })
            .collect::<Vec<_>>()
            .join("\n"),
        KmsCommand::CreateAccessKey { grant } => {
            // Every grant is checked before the key exists.
            let grants = grant
                .iter()
                .map(|g| {
                    let (tag, actions) = g
                        .split_once(':')
                        .ok_or_else(|| format!("--grant {g:?}: write TAG:ACTIONS"))?;
                    parse_grant(tag, actions)
                })
                .collect::<Result<Vec<_>, String>>()?;
            let k = store.create_access_key().map_err(err)?;
            for g in &grants {
                store.set_grant(&k.access_key, g).map_err(err)?;
            }
            json!({"access_key": k.access_key, "secret_key": k.secret_key.as_str(),
                   "api_key": k.api_key, "grants": grants_json(&grants)})
            .to_string()
        }
        KmsCommand::Grant {
            access_key,
            key_tag,
            actions,
        } => {
            let grant = parse_grant(&key_tag, &actions)?;
            store.set_grant(&access_key, &grant).map_err(err)?;
            json!({"access_key": access_key, "grants": grants_json(std::slice::from_ref(&grant))})
                .to_string()
        }
        KmsCommand::RevokeGrant {
            access_key,
            key_tag,
        } => {
            if !store.remove_grant(&access_key, &key_tag).map_err(err)? {
                return Err(format!(
                    "access key {access_key} has no grant for {key_tag}"
                ));
            }
            json!({"access_key": access_key, "key_tag": key_tag, "revoked": true}).to_string()
        }
        KmsCommand::ListAccessKeys => store
            .list_access_keys()
            .map_err(err)?
            .iter()
            .map(|(ak, enabled, grants)| {
                json!({"access_key": ak, "enabled": enabled, "grants": grants_json(grants)})
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join("\n"),
        KmsCommand::RevokeAccessKey { access_key } => {
            if !store.revoke_access_key(&access_key).map_err(err)? {
                return Err(format!("no access key {access_key}"));
            }
            json!({"access_key": access_key, "revoked": true}).to_string()
        }
        KmsCommand::Rewrap { .. } => unreachable!("handled above"),
    })
}

fn switch(
    store: &dyn KeyStore,
    tag: &str,
    version: Option<u32>,
    enabled: bool,
) -> Result<String, String> {
    match version {
        Some(v) => store.set_version_enabled(tag, v, enabled),
        None => store.set_key_enabled(tag, enabled),
    }
    .map_err(|e| e.to_string())?;
    Ok(json!({"keyTag": tag, "version": version, "enabled": enabled}).to_string())
}

/// A grant from its keyTag (or `*`) and actions text (comma separated
/// action names, or `*`); unknown actions are refused by name.
fn parse_grant(tag: &str, actions: &str) -> Result<Grant, String> {
    let tag_ok = tag == "*"
        || (!tag.is_empty() && tag.len() <= 64 && tag.chars().all(|c| c.is_ascii_alphanumeric()));
    if !tag_ok {
        return Err(format!("keyTag {tag:?}: a keyTag, or * for every key"));
    }
    let actions = if actions == "*" {
        vec!["*".to_owned()]
    } else {
        actions
            .split(',')
            .map(|a| {
                Action::parse(a.trim())
                    .map(|a| a.as_str().to_owned())
                    .ok_or_else(|| {
                        format!(
                            "action {a:?}: one of encrypt, decrypt, createCustomKey, reencrypt, sign, verify, or *"
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    Ok(Grant {
        key_tag: tag.to_owned(),
        actions,
    })
}

fn grants_json(grants: &[Grant]) -> serde_json::Value {
    grants
        .iter()
        .map(|g| json!({"key_tag": g.key_tag, "actions": g.actions}))
        .collect()
}
