//! The key-encryption key (KEK): where it comes from and how it wraps.
//!
//! Wrapping is AES-256-GCM from the `aes-gcm` crate: a fresh random 96-bit
//! nonce per wrap, the row's identity as associated data. A blob names the
//! KEK it was wrapped under: `kek1` ‖ KEK id (8) ‖ nonce (12) ‖ ciphertext
//! ‖ tag (16). The KEK id is the first 8 bytes of
//! `BLAKE3-derive_key("keypipe KEK id v1", KEK)`: it tells KEKs apart
//! (after `keypipe kms rewrap`) and says nothing about the KEK. Blobs of
//! keypipe ≤ 0.2 (nonce ‖ ciphertext ‖ tag, no id) still unwrap, and
//! `rewrap` gives them the id. Nothing here is hand-rolled cryptography.
//!
//! The KEK itself lives in locked, dump-excluded memory (the process's
//! secret heap); a KEK file readable by group or others is refused.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use keypipe_core::key::locked::LockedBytes;
use zeroize::{Zeroize, Zeroizing};

use super::StoreError;

/// KEK length.
pub(crate) const KEK_LEN: usize = 32;
/// AES-GCM nonce length.
pub(crate) const NONCE_LEN: usize = 12;
/// AES-GCM tag length.
pub(crate) const TAG_LEN: usize = 16;
/// First bytes of a blob that names its KEK.
const MAGIC: &[u8; 4] = b"kek1";
/// KEK id length.
const ID_LEN: usize = 8;

/// Where a KEK came from (names only, for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KekSource {
    /// The environment variable of that name.
    Env(String),
    /// That file.
    File(PathBuf),
}

impl fmt::Display for KekSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KekSource::Env(name) => write!(f, "environment variable {name}"),
            KekSource::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// A KEK's public name (see the module docs), shown as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KekId(pub [u8; ID_LEN]);

impl fmt::Display for KekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for KekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KekId({self})")
    }
}

/// A unwrap that failed. Carries no secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UnwrapFailed {
    /// The blob is damaged, belongs to another row, or was wrapped under
    /// another KEK before blobs named theirs.
    #[error("does not unwrap under the KEK (damaged, or copied from another row)")]
    Damaged,
    /// The blob names another KEK.
    #[error(
        "was wrapped under KEK {blob}, but this process holds KEK {held}: wrong KEK (after \
         `keypipe kms rewrap`, restart with the new KEK)"
    )]
    OtherKek {
        /// The blob's KEK.
        blob: KekId,
        /// This process's KEK.
        held: KekId,
    },
}

/// The KEK, in locked memory, wiped on drop.
pub(crate) struct Kek {
    key: LockedBytes,
    id: KekId,
    source: KekSource,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .field("source", &self.source)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Kek {
    /// Where this KEK came from.
    pub(crate) fn source(&self) -> &KekSource {
        &self.source
    }

    /// Its public name.
    pub(crate) fn id(&self) -> KekId {
        self.id
    }

    /// A KEK of `bytes` (copied into locked memory).
    fn new(bytes: &[u8; KEK_LEN], source: KekSource) -> Result<Kek, StoreError> {
        let key = LockedBytes::secret(bytes).map_err(|e| StoreError::Kek(e.to_string()))?;
        let mut derived = Zeroizing::new(blake3::derive_key("keypipe KEK id v1", bytes));
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&derived[..ID_LEN]);
        derived.zeroize();
        Ok(Kek {
            key,
            id: KekId(id),
            source,
        })
    }

    /// The KEK from the variable `name` as looked up by `lookup`: `None`
    /// when the variable is absent, an error when it is not 64 hex digits.
    pub(crate) fn from_env(
        name: &str,
        lookup: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Option<Kek>, StoreError> {
        let Some(value) = lookup(name) else {
            return Ok(None);
        };
        let malformed = || {
            StoreError::Kek(format!(
                "environment variable {name} must hold exactly 64 hex digits (32 bytes)"
            ))
        };
        let value = match value.into_string() {
            Ok(s) => Zeroizing::new(s),
            Err(_) => return Err(malformed()),
        };
        let key = decode_hex(value.trim()).ok_or_else(malformed)?;
        Kek::new(&key, KekSource::Env(name.to_owned())).map(Some)
    }

    /// The KEK of the file `path`; `None` when it does not exist.
    pub(crate) fn load_file(path: &Path) -> Result<Option<Kek>, StoreError> {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(path, e)),
        };
        let meta = file.metadata().map_err(|e| StoreError::io(path, e))?;
        if !meta.is_file() {
            return Err(StoreError::Kek(format!(
                "KEK file {} is not a regular file",
                path.display()
            )));
        }
        if meta.len() != KEK_LEN as u64 {
            return Err(wrong_length(path, meta.len()));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(StoreError::Kek(format!(
                "KEK file {} is mode {mode:o}, open to group or others: refused (whoever reads \
                 it reads every secret in the store); `chmod 600` it",
                path.display()
            )));
        }
        let mut key = Zeroizing::new([0u8; KEK_LEN]);
        let mut extra = [0u8; 1];
        let n = read_full(&mut file, &mut key[..]).map_err(|e| StoreError::io(path, e))?;
        if n != KEK_LEN {
            return Err(wrong_length(path, n as u64));
        }
        // The file may have grown since the length check.
        if file.read(&mut extra).map_err(|e| StoreError::io(path, e))? != 0 {
            extra.zeroize();
            return Err(StoreError::Kek(format!(
                "KEK file {} holds more than {KEK_LEN} bytes",
                path.display()
            )));
        }
        Kek::new(&key, KekSource::File(path.to_owned())).map(Some)
    }

    /// Creates the file `path` holding a new random KEK (mode `0600`, never
    /// overwriting an existing file); when another process created it
    /// first, loads that one.
    ///
    /// The KEK is written to a new temporary file in the same directory,
    /// synced, then published with a hard link (atomic, fails when `path`
    /// exists), so a reader never sees a partial file. On a filesystem
    /// without hard links it is written to `path` directly with
    /// `create_new`. The directory is synced afterwards.
    pub(crate) fn create_file(path: &Path) -> Result<Kek, StoreError> {
        let mut key = Zeroizing::new([0u8; KEK_LEN]);
        getrandom::fill(&mut key[..]).map_err(|_| StoreError::Random)?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let file_name = path.file_name().ok_or_else(|| {
            StoreError::Kek(format!("KEK path {} has no file name", path.display()))
        })?;
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix).map_err(|_| StoreError::Random)?;
        let mut tmp_name = OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(format!(
            ".tmp-{}-{:016x}",
            std::process::id(),
            u64::from_le_bytes(suffix)
        ));
        let tmp = dir.join(tmp_name);

        write_new(&tmp, &key)?;
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Self::load_existing(path),
            Err(_) => match write_new(path, &key) {
                Ok(()) => {}
                Err(StoreError::Io { source, .. }) if source.kind() == ErrorKind::AlreadyExists => {
                    return Self::load_existing(path);
                }
                Err(e) => return Err(e),
            },
        }
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::io(&dir, e))?;
        tracing::info!(path = %path.display(), "created a new KEK file");
        Kek::new(&key, KekSource::File(path.to_owned()))
    }

    /// Loads a file that must exist (lost a creation race).
    fn load_existing(path: &Path) -> Result<Kek, StoreError> {
        Self::load_file(path)?.ok_or_else(|| {
            StoreError::Kek(format!(
                "KEK file {} vanished while opening",
                path.display()
            ))
        })
    }

    /// A KEK from raw bytes (tests).
    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: [u8; KEK_LEN], source: KekSource) -> Kek {
        Kek::new(&bytes, source).expect("room for a test KEK")
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(&self.key).expect("a KEK is 32 bytes")
    }

    /// Wraps `secret` with `aad` (the row's identity) as associated data:
    /// `kek1` ‖ KEK id ‖ nonce ‖ ciphertext ‖ tag.
    pub(crate) fn wrap(&self, aad: &str, secret: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| StoreError::Random)?;
        let sealed = self
            .cipher()
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: secret,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| StoreError::Kek("wrapping failed".into()))?;
        let mut blob = Vec::with_capacity(MAGIC.len() + ID_LEN + NONCE_LEN + sealed.len());
        blob.extend_from_slice(MAGIC);
        blob.extend_from_slice(&self.id.0);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        Ok(blob)
    }

    /// Unwraps a blob made by [`Kek::wrap`] with the same `aad` (or an
    /// older blob without a KEK id).
    pub(crate) fn unwrap(
        &self,
        aad: &str,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, UnwrapFailed> {
        let named = blob
            .strip_prefix(MAGIC)
            .filter(|rest| rest.len() >= ID_LEN + NONCE_LEN + TAG_LEN)
            .map(|rest| rest.split_at(ID_LEN));
        match named {
            Some((id, sealed)) if id == self.id.0 => self.open(aad, sealed),
            // An old blob whose random nonce starts with the magic (2^-32).
            Some((id, _)) => self.open(aad, blob).map_err(|_| UnwrapFailed::OtherKek {
                blob: KekId(id.try_into().expect("ID_LEN bytes")),
                held: self.id,
            }),
            None => self.open(aad, blob),
        }
    }

    /// Opens nonce ‖ ciphertext ‖ tag.
    fn open(&self, aad: &str, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, UnwrapFailed> {
        if blob.len() < NONCE_LEN + TAG_LEN {
            return Err(UnwrapFailed::Damaged);
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let nonce = Nonce::try_from(nonce).map_err(|_| UnwrapFailed::Damaged)?;
        self.cipher()
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: aad.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| UnwrapFailed::Damaged)
    }
}

fn wrong_length(path: &Path, len: u64) -> StoreError {
    StoreError::Kek(format!(
        "KEK file {} holds {len} bytes; it must hold exactly {KEK_LEN}",
        path.display()
    ))
}

/// Writes `key` to the new file `path` (mode `0600`, `create_new`) and
/// syncs it.
fn write_new(path: &Path, key: &[u8; KEK_LEN]) -> Result<(), StoreError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| StoreError::io(path, e))?;
    let written = file.write_all(key).and_then(|()| file.sync_all());
    if let Err(e) = written {
        drop(file);
        let _ = fs::remove_file(path);
        return Err(StoreError::io(path, e));
    }
    Ok(())
}

/// Reads until `buf` is full or end of file; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// 64 hex digits (either case) to 32 bytes.
fn decode_hex(text: &str) -> Option<Zeroizing<[u8; KEK_LEN]>> {
    let digits = text.as_bytes();
    if digits.len() != 2 * KEK_LEN {
        return None;
    }
    let mut out = Zeroizing::new([0u8; KEK_LEN]);
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let hi = hex_value(pair[0])?;
        let lo = hex_value(pair[1])?;
        *byte = (hi << 4) | lo;
    }
    Some(out)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: usize = MAGIC.len() + ID_LEN;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> + use<> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn wrap_round_trips_and_binds_the_row() {
        let kek = Kek::from_bytes([7; KEK_LEN], KekSource::Env("T".into()));
        let a = kek.wrap("row:a", b"secret").unwrap();
        let b = kek.wrap("row:a", b"secret").unwrap();
        assert_eq!(a.len(), HEADER + NONCE_LEN + 6 + TAG_LEN);
        assert_ne!(
            a[HEADER..][..NONCE_LEN],
            b[HEADER..][..NONCE_LEN],
            "fresh nonce per wrap"
        );
        assert_eq!(&**kek.unwrap("row:a", &a).unwrap(), b"secret");
        assert_eq!(kek.unwrap("row:b", &a), Err(UnwrapFailed::Damaged));
        let mut bad = a.clone();
        bad[HEADER + NONCE_LEN] ^= 1;
        assert_eq!(kek.unwrap("row:a", &bad), Err(UnwrapFailed::Damaged));
        assert_eq!(
            kek.unwrap("row:a", &a[..HEADER + NONCE_LEN + TAG_LEN - 1]),
            Err(UnwrapFailed::Damaged)
        );
        let other = Kek::from_bytes([8; KEK_LEN], KekSource::Env("T".into()));
        assert!(matches!(
            other.unwrap("row:a", &a),
            Err(UnwrapFailed::OtherKek { .. })
        ));
        // An old blob (no KEK id) under another KEK is just damaged.
        assert_eq!(
            other.unwrap("row:a", &a[HEADER..]),
            Err(UnwrapFailed::Damaged)
        );
        assert_eq!(&**kek.unwrap("row:a", &a[HEADER..]).unwrap(), b"secret");
    }

    #[test]
    fn wrap_is_standard_aes_256_gcm() {
        let kek = Kek::from_bytes([9; KEK_LEN], KekSource::Env("T".into()));
        let blob = kek.wrap("aad", b"hello").unwrap();
        let plain = Aes256Gcm::new_from_slice(&[9; KEK_LEN]).unwrap();
        let nonce = Nonce::try_from(&blob[HEADER..][..NONCE_LEN]).unwrap();
        let out = plain
            .decrypt(
                &nonce,
                Payload {
                    msg: &blob[HEADER + NONCE_LEN..],
                    aad: b"aad",
                },
            )
            .unwrap();
        assert_eq!(out, b"hello");
    }

    #[test]
    fn env_kek_parses_64_hex_digits() {
        let hex = "00112233445566778899aabbccddeeffFFEEDDCCBBAA99887766554433221100";
        let env = env_of(&[
            ("K", hex),
            ("SPACED", &format!(" {hex}\n")),
            ("BAD", "00zz"),
        ]);
        let kek = Kek::from_env("K", &env).unwrap().unwrap();
        assert_eq!(kek.key[0], 0x00);
        assert_eq!(kek.key[1], 0x11);
        assert_eq!(kek.key[16], 0xff);
        assert_eq!(kek.key[31], 0x00);
        assert_eq!(kek.source(), &KekSource::Env("K".into()));
        assert!(Kek::from_env("SPACED", &env).unwrap().is_some());
        assert!(Kek::from_env("ABSENT", &env).unwrap().is_none());
        let err = Kek::from_env("BAD", &env).unwrap_err().to_string();
        assert!(err.contains("BAD") && err.contains("64 hex"), "{err}");
        assert!(!err.contains("00zz"), "{err}");
        let short = env_of(&[("S", &hex[..62])]);
        assert!(Kek::from_env("S", &short).is_err());
    }

    #[test]
    fn kek_file_is_created_0600_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.key");
        assert!(Kek::load_file(&path).unwrap().is_none());
        let created = Kek::create_file(&path).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), KEK_LEN as u64);
        assert_eq!(fs::read(&path).unwrap(), created.key.to_vec());
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // A second creation (lost race) loads the existing one.
        let again = Kek::create_file(&path).unwrap();
        assert_eq!(*again.key, *created.key);
        let loaded = Kek::load_file(&path).unwrap().unwrap();
        assert_eq!(*loaded.key, *created.key);
        assert_eq!(loaded.source(), &KekSource::File(path.clone()));
    }

    #[test]
    fn kek_file_of_wrong_length_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 31, 33, 64] {
            let path = dir.path().join(format!("kek{len}"));
            fs::write(&path, vec![1u8; len]).unwrap();
            let err = Kek::load_file(&path).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, StoreError::Kek(_)), "{text}");
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(text.contains(&format!("{len} bytes")), "{text}");
        }
    }

    #[test]
    fn kek_file_open_to_group_or_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.key");
        fs::write(&path, [5u8; KEK_LEN]).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = Kek::load_file(&path).unwrap_err().to_string();
            assert!(
                err.contains(&format!("mode {mode:o}")) && err.contains("chmod 600"),
                "{err}"
            );
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Kek::load_file(&path).unwrap().is_some());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(
            Kek::load_file(&path).unwrap().is_some(),
            "read-only for the owner is fine"
        );
    }

    #[test]
    fn kek_id_names_the_kek_and_blobs_name_their_kek() {
        let a = Kek::from_bytes([1; KEK_LEN], KekSource::Env("A".into()));
        let b = Kek::from_bytes([2; KEK_LEN], KekSource::Env("B".into()));
        assert_ne!(a.id(), b.id());
        assert_eq!(
            a.id(),
            Kek::from_bytes([1; KEK_LEN], KekSource::Env("C".into())).id()
        );
        let blob = a.wrap("row", b"secret").unwrap();
        assert_eq!(&blob[..4], MAGIC);
        assert_eq!(&blob[4..12], &a.id().0);
        assert_eq!(
            b.unwrap("row", &blob),
            Err(UnwrapFailed::OtherKek {
                blob: a.id(),
                held: b.id()
            })
        );
        assert_eq!(a.id().to_string().len(), 16);
    }

    #[test]
    fn debug_redacts_the_kek() {
        let kek = Kek::from_bytes([0xAB; KEK_LEN], KekSource::Env("T".into()));
        let text = format!("{kek:?}");
        assert!(text.contains("redacted"));
        assert!(!text.contains("171"), "{text}");
    }
}
