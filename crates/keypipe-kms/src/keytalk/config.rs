//! KeyTalk services and policy, from the `[keytalk]` section of the
//! configuration: each `[[keytalk.service]]` names its credentials, its
//! HWSIG formula, its service URIs and their checks, an optional
//! challenge step, its messages and the profile of the certificates it
//! issues. Templates in the profile take `$(USER)` and `$(SERVICE)`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::params::parse_utc;
use crate::ca::{ExtKeyUsage, KeyType, San, Subject};

/// A credential a service asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum CredentialType {
    /// The user's name.
    #[serde(rename = "USERID")]
    UserId,
    /// The device's hardware signature.
    #[serde(rename = "HWSIG")]
    Hwsig,
    /// The user's password.
    #[serde(rename = "PASSWD")]
    Passwd,
}

impl CredentialType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialType::UserId => "USERID",
            CredentialType::Hwsig => "HWSIG",
            CredentialType::Passwd => "PASSWD",
        }
    }
}

/// A challenge step after the password (multi-phase password
/// authentication, as RADIUS SecurID does): the client shows `prompt`
/// under `name` and sends the answer as `PASSWD` (or in `responses`);
/// it must match `response_hash` (an Argon2id PHC string, made with
/// `keypipe keytalk hash`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeConfig {
    /// The challenge's name (the Apple apps act only on
    /// "Password challenge").
    #[serde(default = "default_challenge_name")]
    pub name: String,
    /// What the user is asked.
    pub prompt: String,
    /// The expected answer's hash.
    pub response_hash: String,
}

/// A message for `last-messages`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageConfig {
    /// The text.
    pub text: String,
    /// When it was written (ISO 8601, UTC).
    pub utc: String,
}

/// An LDAP address book clients may apply (S/MIME recipients).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressBook {
    /// The LDAP server's URL (`ldap://…`, `ldaps://…`).
    pub ldap_svr_url: String,
    /// The search base DN.
    pub search_base: String,
    /// PEM of the CA(s) that verify an `ldaps` server, if needed.
    #[serde(default)]
    pub verification_ca: Option<String>,
}

/// The subject of a service's certificates (templates).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectTemplate {
    /// `CN` (default `$(USER)`).
    #[serde(default = "default_cn")]
    pub cn: String,
    /// `C`.
    #[serde(default)]
    pub c: Option<String>,
    /// `ST`.
    #[serde(default)]
    pub st: Option<String>,
    /// `L`.
    #[serde(default)]
    pub l: Option<String>,
    /// `O`.
    #[serde(default)]
    pub o: Option<String>,
    /// `OU`.
    #[serde(default)]
    pub ou: Option<String>,
    /// `emailAddress`.
    #[serde(default)]
    pub e: Option<String>,
}

impl Default for SubjectTemplate {
    fn default() -> Self {
        SubjectTemplate {
            cn: default_cn(),
            c: None,
            st: None,
            l: None,
            o: None,
            ou: None,
            e: None,
        }
    }
}

/// The certificates a service issues.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertProfile {
    /// Key made by the server: `rsa2048` (default: KeyTalk's norm, which
    /// every client's key store takes), `rsa3072`, `rsa4096`, `p256`,
    /// `p384`.
    #[serde(default = "default_key_type")]
    pub key_type: String,
    /// Days of validity.
    #[serde(default = "default_days")]
    pub days: u32,
    /// The subject.
    #[serde(default)]
    pub subject: SubjectTemplate,
    /// Extended key usages (`clientAuth`, `serverAuth`,
    /// `emailProtection`, `codeSigning`).
    #[serde(default = "default_ekus")]
    pub extended_key_usages: Vec<String>,
    /// Subject alternative names (`DNS:…`, `IP:…`, `email:…`; templates).
    #[serde(default)]
    pub sans: Vec<String>,
    /// A CSR's RSA key size, exactly (`csr-requirements` `key-size`).
    #[serde(default = "default_csr_key_size")]
    pub csr_key_size: u32,
    /// A CSR's signature digest, `sha256` or `sha1`.
    #[serde(default = "default_csr_algo")]
    pub csr_signing_algo: String,
}

impl Default for CertProfile {
    fn default() -> Self {
        CertProfile {
            key_type: default_key_type(),
            days: default_days(),
            subject: SubjectTemplate::default(),
            extended_key_usages: default_ekus(),
            sans: Vec::new(),
            csr_key_size: default_csr_key_size(),
            csr_signing_algo: default_csr_algo(),
        }
    }
}

/// One KeyTalk service (`[[keytalk.service]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The service's name (what clients send as `service`).
    pub name: String,
    /// Credentials asked for: `USERID` and `PASSWD` (always), `HWSIG`.
    #[serde(default = "default_credentials")]
    pub credential_types: Vec<CredentialType>,
    /// The HWSIG formula sent to clients (with `HWSIG`).
    #[serde(default)]
    pub hwsig_formula: Option<String>,
    /// The password prompt.
    #[serde(default = "default_prompt")]
    pub password_prompt: String,
    /// The service's URIs.
    #[serde(default)]
    pub service_uris: Vec<String>,
    /// Ask clients to resolve the URIs (`resolved`, checked: error 1001).
    #[serde(default)]
    pub resolve_service_uris: bool,
    /// Ask clients for the SHA-256 of the URIs' files (`digests`).
    #[serde(default)]
    pub calc_service_uris_digest: bool,
    /// The expected digests (hex) by URI, with `calc_service_uris_digest`.
    #[serde(default)]
    pub uri_digests: BTreeMap<String, String>,
    /// A challenge step after the password.
    #[serde(default)]
    pub challenge: Option<ChallengeConfig>,
    /// Messages for `last-messages`.
    #[serde(default)]
    pub messages: Vec<MessageConfig>,
    /// A changed password expires after this many days (none: never).
    #[serde(default)]
    pub password_max_age_days: Option<u32>,
    /// Tell clients (2.4.0+) to store certificates in the machine store.
    #[serde(default)]
    pub store_to_system: bool,
    /// Public API: self-service is available to this service's users.
    #[serde(default)]
    pub self_service: bool,
    /// Public API: S/MIME enrolment for external parties is available.
    #[serde(default)]
    pub smime_enrollment: bool,
    /// Public API: that enrolment requires a mobile number.
    #[serde(default)]
    pub mobile_required: bool,
    /// LDAP address books for the service's users (public API; `cert`
    /// answers from 2.4.1).
    #[serde(default)]
    pub address_books: Vec<AddressBook>,
    /// Tell clients to apply the address books.
    #[serde(default)]
    pub apply_address_books: bool,
    /// The certificates it issues.
    #[serde(default)]
    pub cert: CertProfile,
}

fn default_challenge_name() -> String {
    "Password challenge".into()
}
fn default_cn() -> String {
    "$(USER)".into()
}
fn default_key_type() -> String {
    "rsa2048".into()
}
fn default_days() -> u32 {
    365
}
fn default_ekus() -> Vec<String> {
    vec!["clientAuth".into()]
}
fn default_csr_key_size() -> u32 {
    2048
}
fn default_csr_algo() -> String {
    "sha256".into()
}
fn default_credentials() -> Vec<CredentialType> {
    vec![CredentialType::UserId, CredentialType::Passwd]
}
fn default_prompt() -> String {
    "Password".into()
}

/// A service, checked and ready to serve.
#[derive(Debug, Clone)]
pub struct Service {
    /// As configured.
    pub config: ServiceConfig,
    /// The server-side key type.
    pub key_type: KeyType,
    /// The extended key usages.
    pub ekus: Vec<ExtKeyUsage>,
    /// The messages, (unix seconds, text), oldest first.
    pub messages: Vec<(i64, String)>,
}

impl Service {
    /// Checks `config`: every error names the service and the field.
    pub fn new(config: ServiceConfig) -> Result<Service, String> {
        let name = config.name.clone();
        let bad = |m: String| format!("keytalk service {name:?}: {m}");
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
        if !name_ok {
            return Err(bad("name: 1 to 64 of A-Z a-z 0-9 _ - .".into()));
        }
        let creds = &config.credential_types;
        if !creds.contains(&CredentialType::UserId) || !creds.contains(&CredentialType::Passwd) {
            return Err(bad("credential_types must include USERID and PASSWD".into()));
        }
        let hwsig = creds.contains(&CredentialType::Hwsig);
        if hwsig != config.hwsig_formula.is_some() {
            return Err(bad(
                "hwsig_formula is set exactly when credential_types has HWSIG".into(),
            ));
        }
        if let Some(f) = &config.hwsig_formula {
            let ok = !f.is_empty()
                && f.split(',')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            if !ok {
                return Err(bad(format!("hwsig_formula {f:?}: comma-separated numbers")));
            }
        }
        if config.calc_service_uris_digest {
            for uri in &config.service_uris {
                let ok = config
                    .uri_digests
                    .get(uri)
                    .is_some_and(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()));
                if !ok {
                    return Err(bad(format!(
                        "uri_digests needs a SHA-256 (64 hex) for {uri:?}"
                    )));
                }
            }
        }
        for b in &config.address_books {
            let host = b
                .ldap_svr_url
                .strip_prefix("ldaps://")
                .or_else(|| b.ldap_svr_url.strip_prefix("ldap://"))
                .unwrap_or("");
            if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(bad(format!(
                    "address_books: ldap_svr_url {:?}: ldap://host or ldaps://host",
                    b.ldap_svr_url
                )));
            }
            if b.search_base.trim().is_empty() {
                return Err(bad("address_books: search_base is empty".into()));
            }
            if b.verification_ca
                .as_ref()
                .is_some_and(|ca| !ca.contains("-----BEGIN CERTIFICATE-----"))
            {
                return Err(bad("address_books: verification_ca is not PEM".into()));
            }
        }
        if let Some(c) = &config.challenge
            && !c.response_hash.starts_with("$argon2")
        {
            return Err(bad(
                "challenge.response_hash: an Argon2 PHC string (keypipe keytalk hash)".into(),
            ));
        }
        let mut messages = config
            .messages
            .iter()
            .map(|m| {
                parse_utc(&m.utc)
                    .map(|t| (t, m.text.clone()))
                    .ok_or_else(|| bad(format!("message utc {:?}: ISO 8601", m.utc)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        messages.sort_by_key(|(t, _)| *t);
        let key_type: KeyType = config
            .cert
            .key_type
            .parse()
            .map_err(|e| bad(format!("cert.key_type: {e}")))?;
        let ekus = config
            .cert
            .extended_key_usages
            .iter()
            .map(|e| {
                e.parse::<ExtKeyUsage>()
                    .map_err(|e| bad(format!("cert: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if ekus.is_empty() {
            return Err(bad("cert.extended_key_usages: at least one".into()));
        }
        if !(1..=3650).contains(&config.cert.days) {
            return Err(bad("cert.days: 1 to 3650".into()));
        }
        if !matches!(config.cert.csr_key_size, 2048 | 3072 | 4096) {
            return Err(bad("cert.csr_key_size: 2048, 3072 or 4096".into()));
        }
        if !matches!(config.cert.csr_signing_algo.as_str(), "sha256" | "sha1") {
            return Err(bad("cert.csr_signing_algo: sha256 or sha1".into()));
        }
        let service = Service {
            config,
            key_type,
            ekus,
            messages,
        };
        // The templates must give a valid subject and SANs for a
        // plausible user.
        service
            .subject("user")
            .map_err(|e| bad(format!("cert.subject: {e}")))?;
        service
            .sans("user")
            .map_err(|e| bad(format!("cert.sans: {e}")))?;
        Ok(service)
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The address books as JSON objects: the public API's keys
    /// (`ldap_svr_url`, `search_base`), and with `rcdp` also the 5.5 C++
    /// client's (`dap-svr-url`, sic, and `search-base`).
    pub fn address_books(&self, rcdp: bool) -> serde_json::Value {
        let books = self.config.address_books.iter().map(|b| {
            let mut o = serde_json::json!({
                "ldap_svr_url": b.ldap_svr_url,
                "search_base": b.search_base,
            });
            if rcdp {
                o["dap-svr-url"] = b.ldap_svr_url.clone().into();
                o["search-base"] = b.search_base.clone().into();
            }
            if let Some(ca) = &b.verification_ca {
                o["verification_ca"] = ca.clone().into();
                if rcdp {
                    o["verification-ca"] = ca.clone().into();
                }
            }
            o
        });
        serde_json::Value::Array(books.collect())
    }

    /// True when the service asks for `credential`.
    pub fn asks(&self, credential: CredentialType) -> bool {
        self.config.credential_types.contains(&credential)
    }

    fn expand(&self, template: &str, user: &str) -> String {
        template
            .replace("$(USER)", user)
            .replace("$(SERVICE)", &self.config.name)
    }

    /// The subject of `user`'s certificate.
    pub fn subject(&self, user: &str) -> Result<Subject, String> {
        let t = &self.config.cert.subject;
        let field = |f: &Option<String>| {
            f.as_ref()
                .map(|v| self.expand(v, user))
                .filter(|v| !v.is_empty())
        };
        let cn = self.expand(&t.cn, user);
        if cn.is_empty() || cn.len() > 64 {
            return Err("cn: 1 to 64 characters".into());
        }
        let ou = field(&t.ou);
        // keypipe's listeners know a client's role by its certificate's OU:
        // an enrolment certificate never carries one of theirs.
        if let Some(ou) = &ou
            && RESERVED_OUS
                .iter()
                .any(|r| r.eq_ignore_ascii_case(ou.trim()))
        {
            return Err(format!(
                "ou: {ou:?} is a role keypipe's own listeners trust ({}): an enrolment \
                 certificate may not carry it",
                RESERVED_OUS.join(", ")
            ));
        }
        Ok(Subject {
            cn,
            c: field(&t.c),
            st: field(&t.st),
            l: field(&t.l),
            o: field(&t.o),
            ou,
            e: field(&t.e),
        })
    }

    /// The SANs of `user`'s certificate.
    pub fn sans(&self, user: &str) -> Result<Vec<San>, String> {
        self.config
            .cert
            .sans
            .iter()
            .map(|s| {
                self.expand(s, user)
                    .parse::<San>()
                    .map_err(|e| e.to_string())
            })
            .collect()
    }
}

/// OU values that name the roles of keypipe's own certificates (`kms`,
/// `node`, `sae`, `server`): never in an enrolment certificate.
pub const RESERVED_OUS: [&str; 4] = ["kms", "node", "sae", "server"];

/// The policy of the KeyTalk service as a whole.
#[derive(Debug, Clone)]
pub struct KeyTalkConfig {
    /// The user store's domain of KeyTalk users (`keypipe user add
    /// --domain …`).
    pub domain: String,
    /// The services.
    pub services: Vec<Service>,
    /// Largest clock difference accepted at `handshake`.
    pub max_clock_skew: Duration,
    /// A session without a call this long ends.
    pub session_idle: Duration,
    /// A session ends this long after its `hello` in any case.
    pub session_max_age: Duration,
    /// Sessions open at most (the oldest go).
    pub max_sessions: usize,
    /// The first failed authentication's `DELAY`; it doubles with each
    /// failure.
    pub failure_delay: Duration,
    /// Failures in a row before `LOCKED`.
    pub max_failures: u32,
    /// How long `LOCKED` lasts.
    pub lock_time: Duration,
    /// An out-of-band download waits this long.
    pub download_ttl: Duration,
    /// The download URL's start, up to the token
    /// (`http://$(KEYTALK_SVR_HOST):8000/cert/?`).
    pub download_url: String,
    /// Shortest new password.
    pub min_password_length: usize,
}

impl Default for KeyTalkConfig {
    fn default() -> Self {
        KeyTalkConfig {
            domain: "keytalk".into(),
            services: Vec::new(),
            max_clock_skew: Duration::from_secs(300),
            session_idle: Duration::from_secs(600),
            session_max_age: Duration::from_secs(3600),
            max_sessions: 100_000,
            failure_delay: Duration::from_secs(1),
            max_failures: 5,
            lock_time: Duration::from_secs(300),
            download_ttl: Duration::from_secs(300),
            download_url: "http://$(KEYTALK_SVR_HOST):8000/cert/?".into(),
            min_password_length: 8,
        }
    }
}

impl KeyTalkConfig {
    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name() == name)
    }
}
