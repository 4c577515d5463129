//! The actions of the URL path (`encrypt`, `decrypt`, `createCustomKey`,
//! `reencrypt`, `sign`, `verify`): their names, and which key types can do
//! each.

use std::fmt;

use crate::store::KeyType;

/// An action of the URL path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// `encrypt`
    Encrypt,
    /// `decrypt`
    Decrypt,
    /// `createCustomKey`
    CreateCustomKey,
    /// `reencrypt` or `re-encrypt`
    Reencrypt,
    /// `sign`
    Sign,
    /// `verify`
    Verify,
}

impl Action {
    /// The action named `name` in the URL path (exact, case-sensitive).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "encrypt" => Action::Encrypt,
            "decrypt" => Action::Decrypt,
            "createCustomKey" => Action::CreateCustomKey,
            "reencrypt" | "re-encrypt" => Action::Reencrypt,
            "sign" => Action::Sign,
            "verify" => Action::Verify,
            _ => return None,
        })
    }

    /// The canonical name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Encrypt => "encrypt",
            Action::Decrypt => "decrypt",
            Action::CreateCustomKey => "createCustomKey",
            Action::Reencrypt => "reencrypt",
            Action::Sign => "sign",
            Action::Verify => "verify",
        }
    }

    /// Whether a key of `key_type` can do this action.
    pub fn supported_by(self, key_type: &KeyType) -> bool {
        match self {
            Action::Encrypt | Action::Decrypt | Action::Reencrypt => {
                !matches!(key_type, KeyType::Ecdsa)
            }
            Action::CreateCustomKey => matches!(key_type, KeyType::Aes256),
            Action::Sign | Action::Verify => !matches!(key_type, KeyType::Aes256),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
