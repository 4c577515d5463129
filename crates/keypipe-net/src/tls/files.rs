//! Certificate and key files: PEM read into memory that is wiped, a key
//! file refused when group or others may read it.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use super::TlsError;

/// The certificates of a PEM file, in order (a chain: the holder's first).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::file(path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::file(path, "holds no certificate".into()));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, SEC1 or PKCS#1). The file must
/// not be readable by group or others (mode 0600 or 0400): a key anyone
/// on the host can read is no secret.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let meta = fs::metadata(path).map_err(|e| TlsError::file(path, e.to_string()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TlsError::file(
            path,
            format!("is readable by group or others (mode {mode:o}): chmod 600 it"),
        ));
    }
    let text = read(path)?;
    PrivateKeyDer::from_pem_slice(&text)
        .map_err(|e| TlsError::file(path, format!("holds no usable private key: {e}")))
}

/// A file's bytes, in a buffer wiped when dropped.
fn read(path: &Path) -> Result<Zeroizing<Vec<u8>>, TlsError> {
    let mut file = fs::File::open(path).map_err(|e| TlsError::file(path, e.to_string()))?;
    let len = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
    if len > 1 << 20 {
        return Err(TlsError::file(path, "is larger than 1 MiB".into()));
    }
    // Sized up front: no reallocation leaves a copy behind.
    let mut out = Zeroizing::new(Vec::with_capacity(len + 1));
    file.read_to_end(&mut out)
        .map_err(|e| TlsError::file(path, e.to_string()))?;
    Ok(out)
}
