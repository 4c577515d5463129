//! `keypipe ca …`: keypipe's CA (safe while the server runs; a revocation
//! reaches every listener within a second).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use keypipe_server::kms::ca::{Ca, Issued, KeyType, LeafRequest, Role, San};
use keypipe_server::store::{CaStore, Store};
use serde_json::json;

/// The `ca` subcommands.
#[derive(Subcommand)]
pub enum CaCommand {
    /// Create the CA (Primary CA, Signing CA, Server CA) in the store,
    /// unless it has one; write its certificate to --out/ca.crt.
    Init {
        /// The organization (`O`) of every certificate.
        #[arg(long, default_value = "keypipe")]
        org: String,
        /// Where to write ca.crt.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Issue a server certificate: writes NAME.crt (with its issuing CA),
    /// NAME.key (mode 0600) and ca.crt into --out.
    IssueServer {
        /// The server's name (`CN`).
        name: String,
        /// Subject alternative names, comma separated: DNS:name, IP:address.
        #[arg(long, value_delimiter = ',', required = true)]
        san: Vec<String>,
        #[command(flatten)]
        leaf: LeafArgs,
    },
    /// Issue a client certificate for a KMS, a QKD node or an ETSI 014
    /// SAE: writes NAME.crt, NAME.key (mode 0600) and ca.crt into --out.
    IssueClient {
        /// The client's name (`CN`): its KMS name, node name or SAE id.
        name: String,
        /// kms, node, sae or user.
        #[arg(long)]
        role: String,
        #[command(flatten)]
        leaf: LeafArgs,
    },
    /// List the issued certificates, one JSON object per line.
    List,
    /// Revoke a certificate by serial (hex, as `list` shows it).
    Revoke {
        /// The serial number.
        serial: String,
    },
}

/// What every issued certificate takes.
#[derive(clap::Args)]
pub struct LeafArgs {
    /// Days of validity.
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// Key type: p256 or p384.
    #[arg(long, default_value = "p256")]
    key_type: String,
    /// The directory to write into.
    #[arg(long, default_value = ".")]
    out: PathBuf,
}

/// Runs one `ca` command on `store`; the text to print.
pub fn run(store: Store, command: CaCommand) -> Result<String, String> {
    let ca = Ca::new(&store);
    let err = |e: &dyn std::fmt::Display| e.to_string();
    Ok(match command {
        CaCommand::Init { org, out } => {
            let made = ca.init(&org).map_err(|e| err(&e))?;
            let root = ca.bundle_pem().map_err(|e| err(&e))?;
            write_file(&out, "ca.crt", root.as_bytes(), 0o644)?;
            json!({"created": made, "ca": out.join("ca.crt")}).to_string()
        }
        CaCommand::IssueServer { name, san, leaf } => {
            let sans = san
                .iter()
                .map(|s| s.parse::<San>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(&e))?;
            issue(&ca, name, Role::Server, sans, &leaf)?
        }
        CaCommand::IssueClient { name, role, leaf } => {
            let role = role.parse::<Role>().map_err(|e| err(&e))?;
            if !role.is_client() {
                return Err("--role server: use issue-server".into());
            }
            issue(&ca, name, role, Vec::new(), &leaf)?
        }
        CaCommand::List => store
            .issued()
            .map_err(|e| err(&e))?
            .iter()
            .map(|c| {
                let mut line = json!({"serial": c.serial, "subject": c.subject, "role": c.role,
                       "issuer": c.issuer, "not_after": rfc3339(c.not_after_ms),
                       "revoked": c.revoked_ms.is_some()});
                if let Some(e) = &c.enrolment {
                    line["service"] = json!(e.service);
                    line["user"] = json!(e.holder);
                    if let Some(device) = &e.device {
                        line["device"] = json!(device);
                    }
                }
                line.to_string()
            })
            .collect::<Vec<_>>()
            .join("\n"),
        CaCommand::Revoke { serial } => {
            let serial = serial.trim().to_ascii_lowercase().replace(':', "");
            let now = store.revoke(&serial).map_err(|e| err(&e))?;
            json!({"serial": serial, "revoked": true, "already": !now}).to_string()
        }
    })
}

/// Issues a certificate of `role` for `name` and writes its files into
/// `leaf.out`.
fn issue(
    ca: &Ca<'_, Store>,
    name: String,
    role: Role,
    sans: Vec<San>,
    leaf: &LeafArgs,
) -> Result<String, String> {
    let request = &LeafRequest {
        name,
        role,
        sans,
        days: leaf.days,
        key: Ok(leaf
            .key_type
            .parse::<KeyType>()
            .map_err(|e| e.to_string())?),
    };
    let out = leaf.out.as_path();
    // Refuse before issuing, so no certificate is recorded without files.
    for name in [
        format!("{}.crt", request.name),
        format!("{}.key", request.name),
    ] {
        if out.join(&name).exists() {
            return Err(format!(
                "{} exists: remove it or choose another --out",
                out.join(&name).display()
            ));
        }
    }
    let issued: Issued = ca.issue(request).map_err(|e| e.to_string())?;
    let key = issued.key_pem.as_ref().ok_or("no key was generated")?;
    write_file(out, &format!("{}.key", request.name), key.as_bytes(), 0o600)?;
    write_file(
        out,
        &format!("{}.crt", request.name),
        issued.chain_pem.as_bytes(),
        0o644,
    )?;
    write_file(out, "ca.crt", issued.ca_pem.as_bytes(), 0o644)?;
    Ok(json!({
        "serial": issued.serial,
        "subject": request.name,
        "role": request.role.as_str(),
        "not_after": rfc3339(issued.not_after_ms),
        "cert": out.join(format!("{}.crt", request.name)),
        "key": out.join(format!("{}.key", request.name)),
        "ca": out.join("ca.crt"),
    })
    .to_string())
}

/// Writes `bytes` to `dir/name` with `mode`, as a new file (never through
/// a link planted there). `ca.crt` is replaced (it is the same bundle
/// every time): written to a new temporary file, then renamed over it.
fn write_file(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(name);
    let fresh = if name == "ca.crt" {
        dir.join(format!(".ca.crt.{}", std::process::id()))
    } else {
        path.clone()
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&fresh)
        .map_err(|e| format!("{}: {e}", fresh.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", fresh.display()))?;
    if fresh != path {
        fs::rename(&fresh, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// `ms` since the epoch as an RFC 3339 UTC time.
fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
