//! `keypipe kms …`: administration of the NCP-KMS store, against the same
//! data directory as a running server (safe while it runs: every change is
//! one short SQLite transaction; the server sees it within 100 ms).
//!
//! New key material here comes from the OS generator (this process has no
//! QKD device; the server mixes QKD key into what it generates).

use std::sync::Arc;

use clap::Subcommand;
use keypipe_server::kms::entropy::Entropy;
use keypipe_server::kms::ncp::generate_material;
use keypipe_server::store::{KeyStore, KeyType, Store};
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
    /// Create an access key; prints {"access_key","secret_key","api_key"} once.
    CreateAccessKey,
    /// Revoke an access key.
    RevokeAccessKey {
        /// The access key.
        access_key: String,
    },
}

/// Runs one `kms` command on `store`; the text to print.
pub fn run(store: Store, command: KmsCommand) -> Result<String, String> {
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
        KmsCommand::CreateAccessKey => {
            let k = store.create_access_key().map_err(err)?;
            json!({"access_key": k.access_key, "secret_key": k.secret_key.as_str(), "api_key": k.api_key})
                .to_string()
        }
        KmsCommand::RevokeAccessKey { access_key } => {
            if !store.revoke_access_key(&access_key).map_err(err)? {
                return Err(format!("no access key {access_key}"));
            }
            json!({"access_key": access_key, "revoked": true}).to_string()
        }
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
