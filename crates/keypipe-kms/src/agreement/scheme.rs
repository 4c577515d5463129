//! The four key-derivation schemes: a key-agreement group and the AES-GCM
//! key size of the keys derived from it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A key-derivation scheme (`SCHEME-…`). Each has its own group, so a
/// public key belongs to exactly one scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scheme {
    /// FFDHE-2048 (RFC 7919) + AES-128-GCM.
    #[serde(rename = "SCHEME-AES1")]
    Aes1,
    /// FFDHE-3072 (RFC 7919) + AES-256-GCM.
    #[serde(rename = "SCHEME-AES2")]
    Aes2,
    /// ECDH P-256 + AES-128-GCM.
    #[serde(rename = "SCHEME-EC-AES1")]
    EcAes1,
    /// ECDH P-384 + AES-256-GCM.
    #[serde(rename = "SCHEME-EC-AES2")]
    EcAes2,
}

impl Scheme {
    /// Every scheme, in the default order of preference.
    pub fn default_preference() -> [Scheme; 4] {
        [Scheme::EcAes2, Scheme::Aes2, Scheme::EcAes1, Scheme::Aes1]
    }

    /// The wire name, e.g. `SCHEME-EC-AES2`.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Aes1 => "SCHEME-AES1",
            Scheme::Aes2 => "SCHEME-AES2",
            Scheme::EcAes1 => "SCHEME-EC-AES1",
            Scheme::EcAes2 => "SCHEME-EC-AES2",
        }
    }

    /// Length of `k_enc`: 16 (AES-128-GCM) or 32 (AES-256-GCM) bytes.
    pub fn enc_key_len(self) -> usize {
        match self {
            Scheme::Aes1 | Scheme::EcAes1 => 16,
            Scheme::Aes2 | Scheme::EcAes2 => 32,
        }
    }

    /// The group, for messages: `FFDHE-2048`, `FFDHE-3072`, `P-256`, `P-384`.
    pub fn group_name(self) -> &'static str {
        match self {
            Scheme::Aes1 => "FFDHE-2048",
            Scheme::Aes2 => "FFDHE-3072",
            Scheme::EcAes1 => "P-256",
            Scheme::EcAes2 => "P-384",
        }
    }

    /// True for the finite-field (modular exponentiation) schemes.
    pub fn is_ffdhe(self) -> bool {
        matches!(self, Scheme::Aes1 | Scheme::Aes2)
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scheme {
    type Err = String;

    /// Parses the exact wire name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scheme::default_preference()
            .into_iter()
            .find(|scheme| scheme.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown scheme `{s}` (expected SCHEME-AES1, SCHEME-AES2, SCHEME-EC-AES1 \
                     or SCHEME-EC-AES2)"
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Scheme::default_preference() {
            assert_eq!(s.name().parse::<Scheme>(), Ok(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert!("SCHEME_AES1".parse::<Scheme>().is_err());
    }
}
