//! A protocol listener's certificate when the configuration names none
//! (KeyTalk's, ETSI 014's): issued by keypipe's Server CA for `localhost`,
//! 127.0.0.1, the listen addresses that are not wildcards and the
//! configured `names`, each IP address in both an `IP:` and a `DNS:` SAN
//! (Windows 7 wants both), kept in `data_dir/{purpose}/` (key mode 0600).
//! It is issued again at start when older than 300 days (it is valid 365)
//! or when its names changed. KeyTalk's is ECDSA P-384 (so Windows 7
//! schannel clients can connect).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::kms::ca::{Ca, KeyType, LeafRequest, Role, San};
use crate::store::Store;
use crate::tls::ServerTlsFiles;

const RENEW_AFTER: Duration = Duration::from_secs(300 * 86_400);

/// The certificate and key files of `node`'s `purpose` listener
/// (`keytalk`, `etsi014`) on `listen`, with a `key` key, issued now unless
/// fresh ones exist.
pub fn server_files(
    store: &Store,
    data_dir: &Path,
    purpose: &str,
    node: &str,
    listen: &[SocketAddr],
    names: &[String],
    key: KeyType,
) -> Result<ServerTlsFiles, String> {
    let dir = data_dir.join(purpose);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let cert = dir.join(format!("{node}.crt"));
    let key_file = dir.join(format!("{node}.key"));
    let names_file = dir.join(format!("{node}.names"));
    let mut wanted = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    for a in listen {
        if !a.ip().is_unspecified() {
            wanted.push(a.ip().to_string());
        }
    }
    wanted.extend(names.iter().cloned());
    wanted.dedup();
    let mut sans = Vec::new();
    for name in &wanted {
        match name.parse::<std::net::IpAddr>() {
            Ok(ip) => {
                sans.push(San::Ip(ip));
                if ip.is_ipv4() {
                    sans.push(San::Dns(ip.to_string()));
                }
            }
            Err(_) => sans.push(
                format!("DNS:{name}")
                    .parse::<San>()
                    .map_err(|e| format!("[node.{purpose}] names: {e}"))?,
            ),
        }
    }
    if listen.iter().any(|a| a.ip().is_unspecified()) && names.is_empty() {
        tracing::warn!(
            node,
            purpose,
            "a listener on a wildcard address without names: its certificate holds only \
             localhost and the listen addresses, so remote clients will not verify it"
        );
    }
    let names_text = wanted.join("\n");
    let fresh = std::fs::metadata(&cert)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age < RENEW_AFTER)
        && key_file.exists()
        && std::fs::read_to_string(&names_file).is_ok_and(|n| n == names_text);
    if !fresh {
        let issued = Ca::new(store)
            .issue(&LeafRequest {
                name: format!("{node}-{purpose}"),
                role: Role::Server,
                sans,
                days: 365,
                key: Ok(key),
            })
            .map_err(|e| format!("{purpose} server certificate: {e}"))?;
        let key_pem = issued.key_pem.ok_or("no key was made")?;
        write(&key_file, key_pem.as_bytes(), 0o600)?;
        write(&cert, issued.chain_pem.as_bytes(), 0o644)?;
        write(&names_file, names_text.as_bytes(), 0o644)?;
        tracing::info!(purpose, cert = %cert.display(), "server certificate issued by the Server CA");
    }
    Ok(ServerTlsFiles {
        cert,
        key: key_file,
        client_ca: None,
        client_auth: crate::tls::ClientAuth::None,
    })
}

/// Writes keypipe's CA bundle to `data_dir/{purpose}/ca.crt` (the client
/// certificates a listener accepts chain to it) and returns its path.
pub fn ca_bundle_file(store: &Store, data_dir: &Path, purpose: &str) -> Result<PathBuf, String> {
    let bundle = Ca::new(store)
        .bundle_pem()
        .map_err(|e| format!("{purpose}: CA: {e}"))?;
    let path = data_dir.join(purpose).join("ca.crt");
    write(&path, bundle.as_bytes(), 0o644)?;
    Ok(path)
}

/// Writes `bytes` to `path` (mode `mode`) through a temporary file.
fn write(path: &PathBuf, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}
