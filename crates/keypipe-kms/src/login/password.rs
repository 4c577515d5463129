//! Password hashing: Argon2id (RustCrypto `argon2`, its default parameters:
//! 19 MiB, 2 passes, 1 lane, as OWASP recommends) to a PHC string with a
//! random salt.

use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

/// Hashes `password` with a fresh salt; `None` only if the OS random
/// source fails.
pub fn hash(password: &[u8]) -> Option<String> {
    Argon2::default()
        .hash_password(password)
        .ok()
        .map(|h| h.to_string())
}

/// True when `password` matches `phc`. An unreadable `phc` matches
/// nothing.
pub fn verify(phc: &str, password: &[u8]) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| Argon2::default().verify_password(password, &h).is_ok())
}

/// A hash of a random password, made once: verified against when the
/// user does not exist, so an unknown user costs the same time as a
/// known one.
pub fn decoy() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        let mut random = zeroize::Zeroizing::new([0u8; 32]);
        let _ = getrandom::fill(&mut random[..]);
        hash(&random[..]).unwrap_or_else(|| "$argon2id$v=19$m=19456,t=2,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ() {
        let a = hash(b"correct horse").unwrap();
        let b = hash(b"correct horse").unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b, "fresh salt each time");
        assert!(verify(&a, b"correct horse"));
        assert!(!verify(&a, b"correct horsE"));
        assert!(!verify("not a hash", b"correct horse"));
        assert!(!verify(decoy(), b""));
    }
}
