//! RCDP versions: which exist, which one to propose, and what each adds.
//! A feature a client's version does not know is never sent to it (the
//! old C++ client throws on an unknown credential type or status).

use std::fmt;

/// A supported RCDP version.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Version {
    /// 2.0.0: the base protocol.
    V2_0_0,
    /// 2.1.0: out-of-band certificate download.
    V2_1_0,
    /// 2.2.0: CSR signing, `use-tpm-vsc-authentication`.
    V2_2_0,
    /// 2.3.0: Kerberos flag, `LOCKED` with a delay, POST bodies.
    V2_3_0,
    /// 2.4.0: `store-to-system`.
    V2_4_0,
    /// 2.4.1: address books in the certificate answer.
    V2_4_1,
}

impl Version {
    /// Every supported version, oldest first.
    pub const ALL: [Version; 6] = [
        Version::V2_0_0,
        Version::V2_1_0,
        Version::V2_2_0,
        Version::V2_3_0,
        Version::V2_4_0,
        Version::V2_4_1,
    ];

    /// The newest supported version.
    pub const NEWEST: Version = Version::V2_4_1;

    /// `x.y.z`.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V2_0_0 => "2.0.0",
            Version::V2_1_0 => "2.1.0",
            Version::V2_2_0 => "2.2.0",
            Version::V2_3_0 => "2.3.0",
            Version::V2_4_0 => "2.4.0",
            Version::V2_4_1 => "2.4.1",
        }
    }

    /// The supported version spelled exactly `s`.
    pub fn parse(s: &str) -> Option<Version> {
        Version::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The version to answer a `hello` sent under `requested`: the same
    /// when supported (clients check the echo exactly), else the newest
    /// supported one below it; `None` below 2.0.0 or when unreadable.
    pub fn propose(requested: &str) -> Option<Version> {
        if let Some(v) = Version::parse(requested) {
            return Some(v);
        }
        let wanted = triple(requested)?;
        Version::ALL
            .into_iter()
            .rev()
            .find(|v| triple(v.as_str()).is_some_and(|t| t <= wanted))
    }

    /// Out-of-band download (`out-of-band`, `cert-url-templ`).
    pub fn has_out_of_band(self) -> bool {
        self >= Version::V2_1_0
    }

    /// `csr-requirements` and CSR signing; `use-tpm-vsc-authentication`.
    pub fn has_csr(self) -> bool {
        self >= Version::V2_2_0
    }

    /// `use-kerberos-authentication`, and a `delay` with `LOCKED`.
    pub fn has_locked_delay(self) -> bool {
        self >= Version::V2_3_0
    }

    /// `store-to-system` in the certificate answer.
    pub fn has_store_to_system(self) -> bool {
        self >= Version::V2_4_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn triple(s: &str) -> Option<(u32, u32, u32)> {
    let mut parts = s.split('.').map(|p| {
        (!p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u32>().ok())
            .flatten()
    });
    let t = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_supported_and_proposes_below() {
        for v in Version::ALL {
            assert_eq!(Version::propose(v.as_str()), Some(v));
        }
        assert_eq!(Version::propose("2.7.1"), Some(Version::V2_4_1));
        assert_eq!(Version::propose("2.4.7"), Some(Version::V2_4_1));
        assert_eq!(Version::propose("2.2.5"), Some(Version::V2_2_0));
        assert_eq!(Version::propose("3.0.0"), Some(Version::V2_4_1));
        assert_eq!(Version::propose("1.9.9"), None);
        assert_eq!(Version::propose("2.x.0"), None);
        assert_eq!(Version::propose("2.0"), None);
        assert!(!Version::V2_0_0.has_out_of_band() && Version::V2_1_0.has_out_of_band());
        assert!(!Version::V2_1_0.has_csr() && Version::V2_2_0.has_csr());
        assert!(!Version::V2_2_0.has_locked_delay() && Version::V2_3_0.has_locked_delay());
        assert!(!Version::V2_3_0.has_store_to_system() && Version::V2_4_0.has_store_to_system());
    }
}
