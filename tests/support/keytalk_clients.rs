//! Test clients that behave like the real KeyTalk RCDP v2 client families:
//! the Go SDK, the 2019 C++ desktop client, the Python reference client,
//! the Android (Java) client and the 2019 Swift apps (iOS flavour).
//!
//! Written from the contracts only (`shared/specs/keytalk-clients.md`
//! section 1 and the vendor API documents), independently of the server.
//! Each family sends what its source sends (method, parameter encoding,
//! booleans, times, version, cookie echo, one connection per request or
//! keep-alive) and reads answers the way its source does, returning `Err`
//! wherever the real client would throw, panic or crash (`as! String` on
//! a number, a missing `address-books`, a cookie with attributes, ...).
//!
//! [`Family::enrol`] runs a whole enrolment; [`Session`] drives single
//! steps for the bad paths. [`fetch_plain`] and [`public_api`] reach the
//! plain-HTTP listener and the Public API.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

// ═══════════════════════════ Public data ═══════════════════════════

/// Where the enrolment server under test listens.
#[derive(Clone, Debug)]
pub struct Target {
    /// The TLS listener: `/rcdp/...` and `/public/...`.
    pub rcdp: SocketAddr,
    /// The TLS server name ("localhost") and the RCCD `Server` value.
    pub host: String,
    /// PEM bundle of the CA certificates the server's certificate chains to.
    pub ca_pem: PathBuf,
    /// The plain-HTTP listener: `/ca/1.0.0/...` and the out-of-band `/cert/?token`.
    pub plain: SocketAddr,
}

/// The credentials of one account of one service.
#[derive(Clone, Debug)]
pub struct Creds {
    /// The KeyTalk service name.
    pub service: String,
    /// `USERID`.
    pub user: String,
    /// `PASSWD` (also sent as `PIN` when a PIN is asked for).
    pub password: String,
    /// `HWSIG`; `None` means the client computes one with [`default_hwsig`].
    pub hwsig: Option<String>,
}

/// The certificate format asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// PEM: certificate(s), then the encrypted private key.
    Pem,
    /// PKCS#12.
    P12,
}

/// What certificate to ask for.
#[derive(Clone, Debug)]
pub struct CertOptions {
    /// `format` (ignored when a CSR is sent: the answer is a PEM chain).
    pub format: Format,
    /// `include-chain` (the Go SDK always sends false, Java only with PEM).
    pub include_chain: bool,
    /// `out-of-band`: ask for `cert-url-templ` and download over plain HTTP.
    pub out_of_band: bool,
    /// Send a CSR of our own (after `csr-requirements`) instead of server keygen.
    pub csr: Option<CsrSpec>,
}

impl Default for CertOptions {
    /// P12, no chain, in band, server keygen.
    fn default() -> Self {
        CertOptions {
            format: Format::P12,
            include_chain: false,
            out_of_band: false,
            csr: None,
        }
    }
}

/// The key of a client-generated CSR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CsrKey {
    /// RSA of this many bits (2048, 3072 or 4096).
    Rsa(u32),
    /// ECDSA P-256 (signed with SHA-256).
    EcP256,
    /// ECDSA P-384 (signed with SHA-384).
    EcP384,
}

/// The digest a CSR is signed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CsrDigest {
    /// `sha256`.
    Sha256,
    /// `sha384`.
    Sha384,
    /// `sha512`.
    Sha512,
}

impl CsrDigest {
    /// The digest named by `signing-algo` (SHA-1 cannot be produced here).
    pub fn parse(name: &str) -> Result<CsrDigest, String> {
        match name.to_ascii_lowercase().as_str() {
            "sha256" => Ok(CsrDigest::Sha256),
            "sha384" => Ok(CsrDigest::Sha384),
            "sha512" => Ok(CsrDigest::Sha512),
            other => Err(format!(
                "signing-algo {other:?}: this test client cannot sign it"
            )),
        }
    }
}

/// What CSR to send. Every `None` / absent field follows `csr-requirements`.
#[derive(Clone, Debug, Default)]
pub struct CsrSpec {
    /// The key; `None`: RSA of the required `key-size`.
    pub key: Option<CsrKey>,
    /// The digest; `None`: the required `signing-algo`.
    pub digest: Option<CsrDigest>,
    /// Subject overrides `(field, value)`, fields `cn c st l o ou e`;
    /// an empty value leaves the field out.
    pub subject: Vec<(String, String)>,
}

/// The outcome of one successful enrolment.
#[derive(Clone, Debug)]
pub struct Enrolment {
    /// The RCDP version the client used after hello.
    pub version: String,
    /// The passphrase, derived from the cookie exactly as this family does.
    pub passphrase: String,
    /// P12 DER (base64-decoded in band, raw DER out of band) or PEM text.
    pub payload: Vec<u8>,
    /// The payload's format (PEM whenever a CSR was sent).
    pub format: Format,
    /// When a CSR was sent: the client's own private key (PKCS#8 PEM).
    pub csr_key_pem: Option<String>,
    /// The last messages `(text, utc)`.
    pub messages: Vec<(String, String)>,
    /// Every JSON answer, in order.
    pub raw: Vec<Value>,
}

/// One real KeyTalk client family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `KeyTalk/keytalk-go`: RCDP 2.0.0, POST with the query and no body, cookie jar.
    GoSdk,
    /// The 2019 desktop client (libcurl + boost ptree): 2.4.1, proposal accepted,
    /// a new connection per request, POST forms for authentication and CSR.
    Cpp2019,
    /// The Python reference client: 2.4.1 exactly, one keep-alive connection,
    /// TLS 1.2 with P-384, raw hello cookie echoed.
    PythonRef,
    /// The Android client: 2.0.0, GET, raw credentials in the query,
    /// first exact-case `Set-Cookie` of hello.
    JavaAndroid,
    /// The 2019 iOS/macOS apps: 2.4.1, GET, whole query percent-encoded
    /// with `urlQueryAllowed`, every value read `as! String`.
    Swift,
}

impl Family {
    /// Every family.
    pub fn all() -> [Family; 5] {
        [
            Family::GoSdk,
            Family::Cpp2019,
            Family::PythonRef,
            Family::JavaAndroid,
            Family::Swift,
        ]
    }

    /// The RCDP version this family sends at hello.
    pub fn rcdp_version(self) -> &'static str {
        self.rules().version()
    }

    /// Whether the real client can do `opts` at all: the 2.0.0 clients
    /// (Go, Java) have neither out-of-band (2.1) nor CSRs (2.2), and the
    /// 2019 Swift apps send no CSRs. (Cpp2019 also needs the negotiated
    /// version to allow it; [`Family::enrol`] checks that.)
    pub fn can(self, opts: &CertOptions) -> bool {
        match self {
            Family::GoSdk | Family::JavaAndroid => !opts.out_of_band && opts.csr.is_none(),
            Family::Swift => opts.csr.is_none(),
            Family::Cpp2019 | Family::PythonRef => true,
        }
    }

    /// `t` in this family's `caller-utc` / `from-utc` format.
    pub fn format_time(self, t: OffsetDateTime) -> String {
        self.rules().time(t)
    }

    /// A whole enrolment as this family performs it: hello → handshake →
    /// auth-requirements → authentication → last-messages →
    /// [csr-requirements →] cert [→ out-of-band download].
    pub fn enrol(self, t: &Target, creds: &Creds, opts: &CertOptions) -> Result<Enrolment, String> {
        if !self.can(opts) {
            return Err(format!(
                "{self:?} cannot do {opts:?} (not in its RCDP version)"
            ));
        }
        let mut s = Session::new(self, t);
        expect(&s.hello()?, "hello")?;
        expect(&s.handshake()?, "handshake")?;
        expect(&s.auth_requirements(&creds.service)?, "auth-requirements")?;
        let auth = s.authenticate(creds)?;
        expect(&auth, "auth-result")?;
        if auth["auth-status"] != "OK" {
            return Err(format!("authentication not OK: {auth}"));
        }
        expect(&s.last_messages()?, "last-messages")?;
        if opts.out_of_band && !at_least(&s.version, 2, 1) {
            return Err(format!(
                "out-of-band needs RCDP 2.1, negotiated {}",
                s.version
            ));
        }
        if opts.csr.is_some() {
            if !at_least(&s.version, 2, 2) {
                return Err(format!("CSRs need RCDP 2.2, negotiated {}", s.version));
            }
            expect(&s.csr_requirements()?, "csr-requirements")?;
        }
        let answer = s.cert(opts)?;
        expect(&answer, "cert")?;
        let payload = s.payload(&answer, opts)?;
        let passphrase = s.passphrase()?;
        Ok(Enrolment {
            version: s.version.clone(),
            passphrase,
            payload,
            format: if opts.csr.is_some() {
                Format::Pem
            } else {
                opts.format
            },
            csr_key_pem: s.csr_key_pem.clone(),
            messages: s.messages.clone(),
            raw: s.raw.clone(),
        })
    }

    fn rules(self) -> &'static dyn Rules {
        match self {
            Family::GoSdk => &Go,
            Family::Cpp2019 => &Cpp,
            Family::PythonRef => &Python,
            Family::JavaAndroid => &Java,
            Family::Swift => &Swift,
        }
    }
}

/// `Err` unless `v` has `"status": status`.
fn expect(v: &Value, status: &str) -> Result<(), String> {
    if v["status"] == status {
        Ok(())
    } else {
        Err(format!("expected status {status:?}, got {v}"))
    }
}

/// Whether version "X.Y.Z" is at least `major.minor`.
fn at_least(version: &str, major: u32, minor: u32) -> bool {
    let mut it = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0)) >= (major, minor)
}

/// The HWSIG a client computes from `formula`: `CS-` + uppercase hex
/// SHA-256 of the selected components (fixed test values here); formula
/// "0" gives `ZERO_CS` = SHA-256("000000000000"), and no known component
/// falls back to the "Predefined" signature.
pub fn default_hwsig(formula: &str) -> String {
    let input = if formula.trim() == "0" {
        "000000000000".to_owned()
    } else {
        let parts: String = formula
            .split(',')
            .filter_map(|c| c.trim().parse::<u32>().ok())
            .filter(|id| matches!(id, 1..=16 | 501..=506 | 599 | 601..=608))
            .map(|id| format!("keypipe-component-{id}"))
            .collect();
        if parts.is_empty() {
            "Predefined".to_owned()
        } else {
            parts
        }
    };
    format!("CS-{}", hex(&Sha256::digest(input.as_bytes()), true))
}

// ═══════════════════════ What differs per family ═══════════════════════

/// How a connection is made and used.
#[derive(Clone, Copy)]
struct Transport {
    /// A new TCP+TLS connection for every request (curl).
    per_request: bool,
    /// Resend once on a fresh connection when a reused one turns out closed.
    retry_stale: bool,
    tls12_only: bool,
    /// Only the secp384r1 key exchange (Python's `set_ecdh_curve`).
    p384_only: bool,
    alpn: &'static [&'static [u8]],
}

/// Cookie state: each family uses the part it needs.
#[derive(Clone, Debug, Default)]
struct Jar {
    /// Go: an RFC 6265 cookie jar.
    cookies: Vec<JarCookie>,
    /// C++: the `keytalkcookie` value from libcurl's cookie engine.
    sid: Option<String>,
    /// Python, Java, Swift: a raw `Set-Cookie` value echoed as `Cookie:`.
    raw: Option<String>,
    seq: u64,
}

#[derive(Clone, Debug)]
struct JarCookie {
    name: String,
    value: String,
    path: String,
    seq: u64,
}

/// The fixed facts of one family.
struct Profile {
    /// The RCDP version sent at hello.
    version: &'static str,
    /// hello's parameter naming the application, and its value.
    hello: (&'static str, &'static str),
    /// `caller-hw-description`.
    hw_description: &'static str,
    /// The method of a request whose params go in the URL.
    method: &'static str,
    /// How `false` and `true` are written.
    booleans: [&'static str; 2],
    transport: Transport,
    /// Extra request headers, in order, after `Host`.
    headers: &'static [(&'static str, &'static str)],
}

/// The usual pooled keep-alive connection offering h2 (Go, Android, Apple).
const KEEP_ALIVE: Transport = Transport {
    per_request: false,
    retry_stale: true,
    tls12_only: false,
    p384_only: false,
    alpn: &[b"h2", b"http/1.1"],
};

/// The behaviour of one family. Defaults are the common case.
trait Rules: Sync {
    fn profile(&self) -> &'static Profile;
    fn version(&self) -> &'static str {
        self.profile().version
    }
    fn boolean(&self, b: bool) -> &'static str {
        self.profile().booleans[usize::from(b)]
    }
    /// Params as a query string (without `?`) or form body.
    fn encode(&self, params: &[(String, String)]) -> Vec<u8>;
    /// Whether `action` goes as a POST form body.
    fn posts_form(&self, _action: &str, _with_csr: bool) -> bool {
        false
    }
    fn time(&self, t: OffsetDateTime) -> String;
    /// A complex parameter (`resolved`, `digests`, `responses`) as JSON text.
    fn json_param(&self, v: &Value) -> String {
        v.to_string()
    }
    fn body_json(&self, body: &[u8]) -> Result<Value, String> {
        serde_json::from_slice(body).map_err(|e| format!("unparsable JSON ({e})"))
    }
    /// Takes what this family takes from the answer headers of `action`.
    fn take_cookie(
        &self,
        jar: &mut Jar,
        action: &str,
        path: &str,
        headers: &[(String, String)],
    ) -> Result<(), String>;
    /// The `Cookie` header sent to `path`.
    fn cookie_header(&self, jar: &Jar, path: &str) -> Option<String> {
        let _ = path;
        jar.raw.clone()
    }
    /// The P12/PEM passphrase.
    fn passphrase(&self, jar: &Jar) -> Result<String, String>;
    /// The session ID as this family understands it.
    fn sid(&self, jar: &Jar) -> Option<String> {
        jar.raw.as_deref().and_then(sid_in)
    }
    /// Reads a string field: `Ok(None)` when absent, `Err` when the type breaks the client.
    fn text(&self, o: &Value, key: &str) -> Result<Option<String>, String>;
    /// Reads an integer field (delay, password-validity, key-size, code).
    fn int(&self, o: &Value, key: &str) -> Result<Option<i64>, String>;
    /// Reads a boolean flag.
    fn flag(&self, o: &Value, key: &str) -> Result<Option<bool>, String>;
    /// Whether the whole answer is decoded at once (typed structs).
    fn decodes_whole(&self) -> bool {
        false
    }
    /// Checks hello's `version`; the version used from now on.
    fn accept_version(&self, proposed: Option<String>) -> Result<String, String>;
    fn check_error(&self, _v: &Value) -> Result<(), String> {
        Ok(())
    }
    fn check_credential_types(&self, _types: &[String]) -> Result<(), String> {
        Ok(())
    }
    fn check_auth(&self, _v: &Value, _version: &str, _change_password: bool) -> Result<(), String> {
        Ok(())
    }
    /// Reads one message: (text, utc).
    fn message(&self, m: &Value) -> Result<(String, String), String> {
        let text = self.text(m, "text")?.unwrap_or_default();
        Ok((text, self.text(m, "utc")?.unwrap_or_default()))
    }
    fn check_cert(&self, _v: &Value) -> Result<(), String> {
        Ok(())
    }
    fn check_signing_algo(&self, _algo: &str) -> Result<(), String> {
        Ok(())
    }
    /// Swift sends USERID, PASSWD and HWSIG whether asked or not.
    fn sends_all_credentials(&self) -> bool {
        false
    }
    /// The params of a server-keygen `cert`.
    fn cert_params(&self, opts: &CertOptions, version: &str) -> Vec<(String, String)>;
    /// The params of a CSR `cert`.
    fn csr_cert_params(&self, opts: &CertOptions, csr: &str) -> Vec<(String, String)> {
        let mut v = vec![
            p("csr", csr),
            p("include-chain", self.boolean(opts.include_chain)),
        ];
        if opts.out_of_band {
            v.push(p("out-of-band", self.boolean(true)));
        }
        v
    }
}

fn p(k: &str, v: &str) -> (String, String) {
    (k.to_owned(), v.to_owned())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A string field; absent is `None`, anything but a string is `Err`.
fn strict_text(who: &str, o: &Value, key: &str) -> Result<Option<String>, String> {
    match o.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(x) => Err(format!(
            "{who}: {key:?} is a {} ({x}), not a string",
            kind(x)
        )),
    }
}

/// The text boost ptree / Android org.json make of a scalar.
fn coerced(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

/// The `keytalkcookie` value inside a raw cookie text (for reports only).
fn sid_in(raw: &str) -> Option<String> {
    let at = raw.find("keytalkcookie=")? + "keytalkcookie=".len();
    Some(
        raw[at..]
            .split([';', ','])
            .next()
            .unwrap_or("")
            .trim()
            .to_owned(),
    )
}

/// The values of the headers named `name` (exactly, or ignoring case).
fn header_values<'a>(headers: &'a [(String, String)], name: &str, exact: bool) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| {
            if exact {
                n == name
            } else {
                n.eq_ignore_ascii_case(name)
            }
        })
        .map(|(_, v)| v.as_str())
        .collect()
}

// ─────────────────────────────── Go SDK ───────────────────────────────
// keytalk-go/client: RCDP "2.0.0" hard-coded, `http.NewRequest("POST",
// url, nil)` (params in the URL, url.Values.Encode: sorted keys), a
// net/http cookiejar, answers decoded into typed structs whose `delay`
// and `password-validity` are strings, passphrase
// `Jar.Cookies("/rcdp/2.0.0/")[0].Value[:30]` (panics when shorter).

struct Go;

const GO: Profile = Profile {
    version: "2.0.0",
    hello: ("description", "keypipe test client (Go SDK)"),
    hw_description: "Go SDK on linux/amd64, keypipe test",
    method: "POST",
    booleans: ["false", "true"],
    transport: KEEP_ALIVE,
    headers: &[
        ("User-Agent", "Go-http-client/1.1"),
        ("Accept-Encoding", "gzip"),
    ],
};

impl Rules for Go {
    fn profile(&self) -> &'static Profile {
        &GO
    }
    fn encode(&self, params: &[(String, String)]) -> Vec<u8> {
        let mut sorted = params.to_vec();
        sorted.sort_by(|a, b| a.0.cmp(&b.0)); // stable: a key's values keep their order
        join(&sorted, go_query_escape, go_query_escape)
    }
    fn time(&self, t: OffsetDateTime) -> String {
        format!("{}Z", ymdhms(t)) // time.RFC3339 of a UTC time
    }
    fn take_cookie(
        &self,
        jar: &mut Jar,
        _action: &str,
        path: &str,
        headers: &[(String, String)],
    ) -> Result<(), String> {
        for line in header_values(headers, "Set-Cookie", false) {
            go_jar_store(jar, path, line);
        }
        Ok(())
    }
    fn cookie_header(&self, jar: &Jar, path: &str) -> Option<String> {
        let cookies = go_jar_cookies(jar, path);
        (!cookies.is_empty()).then(|| {
            cookies
                .iter()
                .map(|c| format!("{}={}", c.name, c.value))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
    fn passphrase(&self, jar: &Jar) -> Result<String, String> {
        let cookies = go_jar_cookies(jar, "/rcdp/2.0.0/");
        let first = cookies
            .first()
            .ok_or("Go SDK: no cookie in the jar for /rcdp/2.0.0/ (index out of range)")?;
        match first.value.get(..30) {
            Some(p) => Ok(p.to_owned()),
            None => Err(format!(
                "Go SDK: cookie {}={:?} shorter than 30: slice bounds out of range",
                first.name, first.value
            )),
        }
    }
    fn sid(&self, jar: &Jar) -> Option<String> {
        jar.cookies
            .iter()
            .find(|c| c.name == "keytalkcookie")
            .map(|c| c.value.clone())
    }
    fn text(&self, o: &Value, key: &str) -> Result<Option<String>, String> {
        match o.get(key) {
            None | Some(Value::Null) => Ok(None), // encoding/json leaves a null string field alone
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(x) => Err(format!(
                "Go SDK: json: cannot unmarshal {} into Go struct field {key} of type string",
                kind(x)
            )),
        }
    }
    fn int(&self, o: &Value, key: &str) -> Result<Option<i64>, String> {
        match self.text(o, key)? {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|_| format!("Go SDK: strconv.Atoi: {key}={s:?}")),
        }
    }
    fn flag(&self, o: &Value, key: &str) -> Result<Option<bool>, String> {
        Ok(self.text(o, key)?.map(|s| s == "true"))
    }
    fn decodes_whole(&self) -> bool {
        true
    }
    fn accept_version(&self, proposed: Option<String>) -> Result<String, String> {
        match proposed.as_deref() {
            Some("2.0.0") => Ok("2.0.0".to_owned()),
            other => Err(format!(
                "Go SDK: server proposed version {other:?}, supports only \"2.0.0\""
            )),
        }
    }
    fn message(&self, m: &Value) -> Result<(String, String), String> {
        let text = self.text(m, "text")?.unwrap_or_default();
        let utc = self.text(m, "utc")?.unwrap_or_default();
        if go_time_ok(&utc) {
            Ok((text, utc))
        } else {
            Err(format!(
                "Go SDK: parsing time {utc:?} as \"2006-01-02T15:04:05-0700\" failed"
            ))
        }
    }
    fn cert_params(&self, opts: &CertOptions, _version: &str) -> Vec<(String, String)> {
        let mut v = vec![
            p("format", fmt_name(opts.format)),
            p("include-chain", "false"),
        ];
        if opts.out_of_band {
            v.push(p("out-of-band", "true"));
        }
        v
    }
}

/// Stores one `Set-Cookie` line the way net/http + cookiejar do.
fn go_jar_store(jar: &mut Jar, request_path: &str, line: &str) {
    let mut parts = line.split(';');
    let Some((name, value)) = parts.next().and_then(|nv| nv.trim().split_once('=')) else {
        return;
    };
    let name = name.trim();
    let mut value = value.trim();
    if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
        value = &value[1..value.len() - 1];
    }
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    let valid = |b: u8| (0x20..0x7f).contains(&b) && b != b'"' && b != b';' && b != b'\\';
    if name.is_empty() || !name.bytes().all(token) || !value.bytes().all(valid) {
        return; // dropped by readSetCookies
    }
    let mut path = None;
    let mut delete = false;
    for attr in parts {
        let (k, v) = attr.split_once('=').unwrap_or((attr, ""));
        match k.trim().to_ascii_lowercase().as_str() {
            "path" if v.trim().starts_with('/') => path = Some(v.trim().to_owned()),
            "max-age" => delete = v.trim().parse::<i64>().map(|s| s <= 0).unwrap_or(false),
            "domain" => {
                let d = v.trim().trim_start_matches('.').to_ascii_lowercase();
                if !d.is_empty() && d != "localhost" && d != "127.0.0.1" {
                    return; // not a domain-match of the request host: rejected by the jar
                }
            }
            _ => {}
        }
    }
    let path = path.unwrap_or_else(|| match request_path.rfind('/') {
        Some(0) | None => "/".to_owned(),
        Some(i) => request_path[..i].to_owned(),
    });
    jar.cookies.retain(|c| !(c.name == name && c.path == path));
    if !delete {
        jar.seq += 1;
        jar.cookies.push(JarCookie {
            name: name.to_owned(),
            value: value.to_owned(),
            path,
            seq: jar.seq,
        });
    }
}

/// The jar's cookies for `path`: longest path first, then oldest.
fn go_jar_cookies(jar: &Jar, path: &str) -> Vec<JarCookie> {
    let matches = |cp: &str| {
        path == cp
            || (path.starts_with(cp) && (cp.ends_with('/') || path[cp.len()..].starts_with('/')))
    };
    let mut v: Vec<JarCookie> = jar
        .cookies
        .iter()
        .filter(|c| matches(&c.path))
        .cloned()
        .collect();
    v.sort_by(|a, b| b.path.len().cmp(&a.path.len()).then(a.seq.cmp(&b.seq)));
    v
}

/// Whether Go's `time.Parse("2006-01-02T15:04:05-0700", s)` succeeds.
fn go_time_ok(s: &str) -> bool {
    let Some(rest) = iso_seconds(s) else {
        return false;
    };
    let rest = match rest.strip_prefix('.') {
        Some(r) => {
            let n = r.bytes().take_while(u8::is_ascii_digit).count();
            if n == 0 {
                return false;
            }
            &r[n..]
        }
        None => rest,
    };
    let b = rest.as_bytes();
    b.len() == 5 && (b[0] == b'+' || b[0] == b'-') && b[1..].iter().all(u8::is_ascii_digit)
}

// ──────────────────────────── C++ 2019 (5.5.x) ────────────────────────────
// windows-linux-client librclientcore: sends the highest version 2.4.1 and
// goes on with any proposal whose major.minor it knows; a fresh curl handle
// (new TCP+TLS) per request with `CURLOPT_COOKIE "keytalkcookie=<sid>"`;
// POST forms (`Expect:` removed) for authentication, change-password and the
// CSR cert; boost ptree reads every value as text and throws on a missing
// path; `parseAddressBookConfig()` always runs on the cert answer.

struct Cpp;

const CPP: Profile = Profile {
    version: "2.4.1",
    hello: (
        "caller-app-description",
        "KeyTalk client 5.5.x (keypipe test)",
    ),
    hw_description: "Linux, BIOS s/n 1234567890 (keypipe test)",
    method: "GET",
    booleans: ["false", "true"],
    transport: Transport {
        per_request: true,
        retry_stale: false,
        alpn: &[b"http/1.1"],
        ..KEEP_ALIVE
    },
    headers: &[("Accept", "*/*")],
};

const CPP_CREDENTIAL_TYPES: [&str; 5] = ["USERID", "HWSIG", "PASSWD", "PIN", "RESPONSE"];

impl Rules for Cpp {
    fn profile(&self) -> &'static Profile {
        &CPP
    }
    fn encode(&self, params: &[(String, String)]) -> Vec<u8> {
        join(params, cpp_url_encode, cpp_url_encode)
    }
    fn posts_form(&self, action: &str, with_csr: bool) -> bool {
        matches!(action, "authentication" | "change-password") || (action == "cert" && with_csr)
    }
    fn time(&self, t: OffsetDateTime) -> String {
        format!("{}+0000", ymdhms(t))
    }
    fn json_param(&self, v: &Value) -> String {
        v.to_string().replace('/', "\\/") // boost write_json escapes '/'
    }
    fn take_cookie(
        &self,
        jar: &mut Jar,
        action: &str,
        _path: &str,
        headers: &[(String, String)],
    ) -> Result<(), String> {
        for line in header_values(headers, "Set-Cookie", false) {
            if let Some((name, value)) = line.split(';').next().and_then(|nv| nv.split_once('='))
                && name.trim() == "keytalkcookie"
            {
                jar.sid = Some(value.trim().to_owned());
            }
        }
        if action == "hello" && jar.sid.is_none() {
            return Err(
                "C++: no keytalkcookie in the hello answer (parseSidFromHttpResponse)".into(),
            );
        }
        Ok(())
    }
    fn cookie_header(&self, jar: &Jar, _path: &str) -> Option<String> {
        jar.sid.as_ref().map(|s| format!("keytalkcookie={s}"))
    }
    fn passphrase(&self, jar: &Jar) -> Result<String, String> {
        let sid = jar.sid.as_ref().ok_or("C++: no session ID")?;
        Ok(sid.chars().take(30).collect()) // substr(0, 30): shorter stays shorter
    }
    fn sid(&self, jar: &Jar) -> Option<String> {
        jar.sid.clone()
    }
    fn text(&self, o: &Value, key: &str) -> Result<Option<String>, String> {
        Ok(o.get(key).map(coerced))
    }
    fn int(&self, o: &Value, key: &str) -> Result<Option<i64>, String> {
        match self.text(o, key)? {
            None => Ok(None),
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|_| format!("C++: bad lexical cast: {key}={s:?} is not an integer")),
        }
    }
    fn flag(&self, o: &Value, key: &str) -> Result<Option<bool>, String> {
        match self.text(o, key)?.as_deref() {
            None => Ok(None),
            Some("true" | "1") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(s) => Err(format!("C++: conversion of {key}={s:?} to bool failed")),
        }
    }
    fn accept_version(&self, proposed: Option<String>) -> Result<String, String> {
        let v = proposed.ok_or("C++: no version in hello (ptree_bad_path)")?;
        let mut it = v.split('.');
        let mm = (
            it.next().and_then(|x| x.parse::<u32>().ok()),
            it.next().and_then(|x| x.parse::<u32>().ok()),
        );
        match mm {
            (Some(2), Some(0..=4)) => Ok(v),
            _ => Err(format!(
                "C++: RCDP version {v:?} proposed by the server is not supported"
            )),
        }
    }
    fn check_error(&self, v: &Value) -> Result<(), String> {
        let code = self.int(v, "code")?.ok_or("C++: error without code")?;
        if code == 1003 {
            self.int(v, "description")?
                .ok_or("C++: error 1003 without description")?;
        }
        Ok(())
    }
    fn check_credential_types(&self, types: &[String]) -> Result<(), String> {
        match types
            .iter()
            .find(|t| !CPP_CREDENTIAL_TYPES.contains(&t.as_str()))
        {
            Some(t) => Err(format!(
                "C++: parseCredentialType: unknown credential type {t:?}"
            )),
            None => Ok(()),
        }
    }
    fn check_auth(&self, v: &Value, version: &str, change_password: bool) -> Result<(), String> {
        let status = self.text(v, "auth-status")?.unwrap_or_default();
        match status.as_str() {
            "OK" => {
                if let Some(pv) = self.int(v, "password-validity")?
                    && pv <= 0
                    && pv != -1
                {
                    return Err(format!("C++: ParseError: password-validity {pv}"));
                }
            }
            "DELAY" => {
                self.int(v, "delay")?.ok_or("C++: DELAY without delay")?;
            }
            "LOCKED" => {
                self.int(v, "delay")?;
            }
            "EXPIRED" if !change_password => {}
            "CHALLENGE" if !change_password => {
                if !v["challenges"].is_array() {
                    return Err("C++: CHALLENGE without a challenges array".into());
                }
            }
            "KERBEROS-AUTH-NOK" if !change_password && at_least(version, 2, 3) => {}
            other => return Err(format!("C++: unexpected auth-status {other:?}")),
        }
        Ok(())
    }
    fn message(&self, m: &Value) -> Result<(String, String), String> {
        let text = self.text(m, "text")?.ok_or("C++: message without text")?;
        let utc = self.text(m, "utc")?.ok_or("C++: message without utc")?;
        if cpp_utc_ok(&utc) {
            Ok((text, utc))
        } else {
            Err(format!("C++: parseUtcIso8601 failed on {utc:?}"))
        }
    }
    fn check_cert(&self, v: &Value) -> Result<(), String> {
        match v.get("address-books") {
            None => return Err("C++: cert answer without address-books (get_child throws)".into()),
            Some(Value::Array(books)) => {
                for b in books {
                    for key in ["dap-svr-url", "search-base"] {
                        self.text(b, key)?
                            .ok_or(format!("C++: address book without {key:?}: {b}"))?;
                    }
                }
            }
            Some(Value::Object(o)) if !o.is_empty() => {
                return Err("C++: address-books is an object".into());
            }
            Some(_) => {} // a ptree leaf: no children, no books
        }
        self.flag(v, "apply-address-books")?
            .ok_or("C++: cert answer without apply-address-books")?;
        self.flag(v, "execute-sync")?;
        Ok(())
    }
    fn check_signing_algo(&self, algo: &str) -> Result<(), String> {
        match algo {
            "sha1" | "sha256" => Ok(()),
            other => Err(format!("C++: unsupported signing-algo {other:?}")),
        }
    }
    fn cert_params(&self, opts: &CertOptions, version: &str) -> Vec<(String, String)> {
        let mut v = vec![
            p("format", fmt_name(opts.format)),
            p("include-chain", self.boolean(opts.include_chain)),
        ];
        if at_least(version, 2, 1) {
            v.push(p("out-of-band", self.boolean(opts.out_of_band)));
        }
        v
    }
}

/// C++ `urlEncode`: keeps `A-Za-z0-9_.-/`, space → `+`, %XX the rest.
fn cpp_url_encode(s: &[u8]) -> String {
    percent(
        s,
        |b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b),
        true,
    )
}

/// The C++ `parseUtcIso8601` regex: seconds, 0-6 fraction digits,
/// then `Z`, `+0000`, `+00:00` or `+00`.
fn cpp_utc_ok(s: &str) -> bool {
    let Some(mut rest) = iso_seconds(s) else {
        return false;
    };
    if let Some(r) = rest.strip_prefix('.') {
        let n = r.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 || n > 6 {
            return false;
        }
        rest = &r[n..];
    }
    matches!(rest, "Z" | "+0000" | "+00:00" | "+00")
}

// ─────────────────────────── Python reference ───────────────────────────
// keytalk-client.py: RCDP 2.4.1 and an exact check of hello's version; one
// http.client keep-alive connection (TLS 1.2, secp384r1); the raw
// Set-Cookie of hello sent back verbatim; passphrase via
// `cookie.split('=')` == ['keytalkcookie', sid]; `is_true(x) =
// x.lower() == 'true'`; `int(description)` for error 1003.

struct Python;

const PYTHON: Profile = Profile {
    version: "2.4.1",
    hello: ("caller-app-description", "keytalk-client.py (keypipe test)"),
    hw_description: "Python reference client, s/n 42 (keypipe test)",
    method: "GET",
    booleans: ["False", "True"],
    transport: Transport {
        retry_stale: false,
        tls12_only: true,
        p384_only: true,
        alpn: &[],
        ..KEEP_ALIVE
    },
    headers: &[("Accept-Encoding", "identity")],
};

impl Rules for Python {
    fn profile(&self) -> &'static Profile {
        &PYTHON
    }
    fn encode(&self, params: &[(String, String)]) -> Vec<u8> {
        join(params, py_quote_plus, py_quote_plus)
    }
    fn posts_form(&self, action: &str, with_csr: bool) -> bool {
        action == "cert" && with_csr
    }
    fn time(&self, t: OffsetDateTime) -> String {
        match t.microsecond() {
            0 => format!("{}Z", ymdhms(t)),
            us => format!("{}.{us:06}Z", ymdhms(t)),
        }
    }
    fn json_param(&self, v: &Value) -> String {
        py_dumps(v)
    }
    fn take_cookie(
        &self,
        jar: &mut Jar,
        action: &str,
        _path: &str,
        headers: &[(String, String)],
    ) -> Result<(), String> {
        if action == "hello" {
            let all = header_values(headers, "Set-Cookie", false);
            if all.is_empty() {
                return Err("Python: no Set-Cookie in the hello answer".into());
            }
            jar.raw = Some(all.join(", ")); // HTTPResponse.getheader joins repeats
        }
        Ok(())
    }
    fn passphrase(&self, jar: &Jar) -> Result<String, String> {
        let raw = jar.raw.as_deref().ok_or("Python: no cookie")?;
        match raw.split('=').collect::<Vec<_>>().as_slice() {
            ["keytalkcookie", sid] => Ok(sid.chars().take(30).collect()),
            parts => Err(format!(
                "Python: cookie {raw:?} splits into {parts:?}, not ['keytalkcookie', sid]"
            )),
        }
    }
    fn text(&self, o: &Value, key: &str) -> Result<Option<String>, String> {
        strict_text("Python", o, key)
    }
    fn int(&self, o: &Value, key: &str) -> Result<Option<i64>, String> {
        match o.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_i64().or(n.as_f64().map(|f| f.trunc() as i64))),
            Some(Value::Bool(b)) => Ok(Some(i64::from(*b))),
            Some(Value::String(s)) => s
                .trim()
                .replace('_', "")
                .parse()
                .map(Some)
                .map_err(|_| format!("Python: ValueError: int({s:?}) for {key}")),
            Some(x) => Err(format!("Python: TypeError: int() of a {} ({key})", kind(x))),
        }
    }
    fn flag(&self, o: &Value, key: &str) -> Result<Option<bool>, String> {
        match o.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.to_lowercase() == "true")),
            Some(x) => Err(format!(
                "Python: AttributeError: {} {key} has no attribute 'lower'",
                kind(x)
            )),
        }
    }
    fn accept_version(&self, proposed: Option<String>) -> Result<String, String> {
        match proposed.as_deref() {
            Some("2.4.1") => Ok("2.4.1".to_owned()),
            other => Err(format!("Python: server version {other:?} != '2.4.1'")),
        }
    }
    fn check_error(&self, v: &Value) -> Result<(), String> {
        if v.get("description").is_none() {
            return Err(format!("Python: KeyError 'description' in {v}"));
        }
        if self.int(v, "code")? == Some(1003) {
            self.int(v, "description")?;
        }
        Ok(())
    }
    fn message(&self, m: &Value) -> Result<(String, String), String> {
        let get = |key: &str| match m.get(key) {
            Some(x) => Ok(coerced(x)), // only shown to the user
            None => Err(format!("Python: KeyError {key:?} in message {m}")),
        };
        Ok((get("text")?, get("utc")?))
    }
    fn check_cert(&self, v: &Value) -> Result<(), String> {
        self.flag(v, "apply-address-books").map(drop)
    }
    fn cert_params(&self, opts: &CertOptions, _version: &str) -> Vec<(String, String)> {
        let mut v = vec![
            p("format", fmt_name(opts.format)),
            p("include-chain", self.boolean(opts.include_chain)),
        ];
        if opts.out_of_band {
            v.push(p("out-of-band", "True"));
        }
        v
    }
}

/// Python `urllib.parse.quote_plus`: keeps `A-Za-z0-9_.-~`, space → `+`.
fn py_quote_plus(s: &[u8]) -> String {
    percent(
        s,
        |b| b.is_ascii_alphanumeric() || b"_.-~".contains(&b),
        true,
    )
}

/// `json.dumps(v)`: `", "` and `": "` separators, ASCII-only strings.
fn py_dumps(v: &Value) -> String {
    let s = |x: &str| {
        let mut out = String::new();
        for c in Value::from(x).to_string().chars() {
            if c.is_ascii() {
                out.push(c);
            } else {
                for u in c.encode_utf16(&mut [0; 2]) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
        out
    };
    match v {
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(py_dumps).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(o) => {
            let items: Vec<String> = o
                .iter()
                .map(|(k, x)| format!("{}: {}", s(k), py_dumps(x)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::String(x) => s(x),
        x => x.to_string(),
    }
}

// ──────────────────────────── Android (Java) ────────────────────────────
// KeyTalk/Java: `/rcdp/2.0.0` GET over HttpsURLConnection (TLSv1.2);
// PayloadBuilder leaves USERID, PASSWD and service unencoded; the first
// value of the exact-case "Set-Cookie" key of hello is echoed raw; password
// `hexKey.substring("keytalkcookie=".length(), 44)`; bodies read with
// readLine() and concatenated; org.json getString/getInt/getBoolean coerce.

struct Java;

const JAVA: Profile = Profile {
    version: "2.0.0",
    hello: ("caller-app-description", "KeyTalk Android (keypipe test)"),
    hw_description: "Android Pixel 3 / keypipe test",
    method: "GET",
    booleans: ["false", "true"],
    transport: Transport {
        tls12_only: true,
        ..KEEP_ALIVE
    },
    headers: &[
        (
            "User-Agent",
            "Dalvik/2.1.0 (Linux; U; Android 9; Pixel 3 Build/PQ3A.190801.002)",
        ),
        ("Connection", "Keep-Alive"),
        ("Accept-Encoding", "gzip"),
    ],
};

impl Rules for Java {
    fn profile(&self) -> &'static Profile {
        &JAVA
    }
    fn encode(&self, params: &[(String, String)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (k, v)) in params.iter().enumerate() {
            if i > 0 {
                out.push(b'&');
            }
            out.extend(java_url_encode(k.as_bytes()).bytes());
            out.push(b'=');
            if matches!(k.as_str(), "USERID" | "PASSWD" | "service") {
                out.extend(java_stack_escape(v.as_bytes())); // not encoded: the client's bug
            } else {
                out.extend(java_url_encode(v.as_bytes()).bytes());
            }
        }
        // java.net.URL: a raw '#' starts the fragment, which is never sent.
        if let Some(hash) = out.iter().position(|&b| b == b'#') {
            out.truncate(hash);
        }
        out
    }
    fn time(&self, t: OffsetDateTime) -> String {
        format!("{}Z", ymdhms(t))
    }
    fn body_json(&self, body: &[u8]) -> Result<Value, String> {
        let joined: Vec<u8> = body
            .iter()
            .copied()
            .filter(|&b| b != b'\n' && b != b'\r')
            .collect();
        serde_json::from_slice(&joined).map_err(|e| format!("Java: JSONException ({e})"))
    }
    fn take_cookie(
        &self,
        jar: &mut Jar,
        action: &str,
        _path: &str,
        headers: &[(String, String)],
    ) -> Result<(), String> {
        if action == "hello" {
            let first = header_values(headers, "Set-Cookie", true)
                .first()
                .map(|s| s.to_string());
            jar.raw = Some(
                first.ok_or("Java: no header keyed exactly \"Set-Cookie\" in the hello answer")?,
            );
        }
        Ok(())
    }
    fn passphrase(&self, jar: &Jar) -> Result<String, String> {
        let raw = jar.raw.as_deref().ok_or("Java: no cookie")?;
        let chars: Vec<char> = raw.chars().collect();
        if !raw.starts_with("keytalkcookie=") || chars.len() < 44 {
            return Err(format!(
                "Java: {raw:?}.substring(14, 44) fails or is not the SID"
            ));
        }
        Ok(chars[14..44].iter().collect())
    }
    fn text(&self, o: &Value, key: &str) -> Result<Option<String>, String> {
        Ok(o.get(key).map(coerced))
    }
    fn int(&self, o: &Value, key: &str) -> Result<Option<i64>, String> {
        match o.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_i64().or(n.as_f64().map(|f| f as i64))),
            Some(Value::String(s)) if s.trim().parse::<f64>().is_ok() => {
                Ok(Some(s.trim().parse::<f64>().unwrap() as i64))
            }
            Some(x) => Err(format!("Java: JSONException: {key} ({x}) is not an int")),
        }
    }
    fn flag(&self, o: &Value, key: &str) -> Result<Option<bool>, String> {
        match o.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(x) => Err(format!("Java: JSONException: {key} ({x}) is not a boolean")),
        }
    }
    fn accept_version(&self, proposed: Option<String>) -> Result<String, String> {
        proposed.ok_or("Java: JSONException: no version in hello")?;
        Ok("2.0.0".to_owned()) // the path is hard-coded
    }
    fn check_auth(&self, v: &Value, _version: &str, _change_password: bool) -> Result<(), String> {
        if v.get("challenges").is_some() && v.get("response-names").is_some() {
            return Err("Java: UMTS/AKA challenge-response not supported".into());
        }
        Ok(())
    }
    fn cert_params(&self, opts: &CertOptions, _version: &str) -> Vec<(String, String)> {
        match opts.format {
            Format::P12 => vec![p("format", "P12")],
            Format::Pem => vec![
                p("format", "PEM"),
                p("include-chain", self.boolean(opts.include_chain)),
            ],
        }
    }
    fn csr_cert_params(&self, _opts: &CertOptions, csr: &str) -> Vec<(String, String)> {
        vec![p("csr", csr)]
    }
}

/// What Android's HTTP stack (OkHttp's URL canonicalisation) still
/// escapes in an unencoded query value: controls, space, `"`, `'`, `<`,
/// `>`. Everything else (`&`, `=`, `+`, `%`, UTF-8) goes out raw: the
/// raw UTF-8 is the obs-text the spec asks servers to accept.
fn java_stack_escape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in s {
        if b < 0x20 || b == 0x7f || b" \"'<>".contains(&b) {
            out.extend(format!("%{b:02X}").bytes());
        } else {
            out.push(b);
        }
    }
    out
}

/// Java `URLEncoder.encode(s, "UTF-8")`: keeps `A-Za-z0-9.-*_`, space → `+`.
fn java_url_encode(s: &[u8]) -> String {
    percent(
        s,
        |b| b.is_ascii_alphanumeric() || b".-*_".contains(&b),
        true,
    )
}

// ─────────────────────────────── Swift ───────────────────────────────
// iOS/macOS 5.5.8: RCDP 2.4.1 GET; the whole "?a=..&b=.." string goes
// through addingPercentEncoding(.urlQueryAllowed), so `&`, `=` and `+` in
// values stay raw; USERID, PASSWD and HWSIG always sent; every value read
// `as! String`; `allHeaderFields["Set-Cookie"] as! String` overwritten from
// every answer that has it; passphrase `components(separatedBy:"=")[1]`
// cut to 30.

struct Swift;

const SWIFT: Profile = Profile {
    version: "2.4.1",
    hello: ("caller-app-description", "KeyTalk iOS 5.5.8 (keypipe test)"),
    hw_description: "iPhone: Jan's iPhone 234567890abcdef",
    method: "GET",
    booleans: ["False", "True"],
    transport: KEEP_ALIVE,
    headers: &[
        ("Accept", "*/*"),
        ("Accept-Language", "en-us"),
        ("Accept-Encoding", "identity"),
        (
            "User-Agent",
            "KeyTalk/5.5.8 CFNetwork/1121.2.2 Darwin/19.2.0",
        ),
        ("Connection", "keep-alive"),
    ],
};

impl Rules for Swift {
    fn profile(&self) -> &'static Profile {
        &SWIFT
    }
    fn encode(&self, params: &[(String, String)]) -> Vec<u8> {
        let raw: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        swift_query_allowed(raw.join("&").as_bytes()).into_bytes()
    }
    fn time(&self, t: OffsetDateTime) -> String {
        format!("{}.{:05}Z", ymdhms(t), t.nanosecond() / 10_000)
    }
    fn take_cookie(
        &self,
        jar: &mut Jar,
        action: &str,
        _path: &str,
        headers: &[(String, String)],
    ) -> Result<(), String> {
        let all = header_values(headers, "Set-Cookie", true);
        if !all.is_empty() {
            jar.raw = Some(all.join(", ")); // allHeaderFields folds repeats
        } else if action == "hello" {
            return Err("Swift: allHeaderFields[\"Set-Cookie\"] as! String on nil".into());
        }
        Ok(())
    }
    fn passphrase(&self, jar: &Jar) -> Result<String, String> {
        let raw = jar.raw.as_deref().ok_or("Swift: no cookie")?;
        let parts: Vec<&str> = raw.split('=').collect();
        let sid = parts.get(1).ok_or(format!(
            "Swift: index out of range on {raw:?}.components(separatedBy: \"=\")"
        ))?;
        Ok(sid.chars().take(30).collect())
    }
    fn text(&self, o: &Value, key: &str) -> Result<Option<String>, String> {
        strict_text("Swift (as! String)", o, key)
    }
    fn int(&self, o: &Value, key: &str) -> Result<Option<i64>, String> {
        match self.text(o, key)? {
            None => Ok(None),
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|_| format!("Swift: Int({s:?})! for {key}")),
        }
    }
    fn flag(&self, o: &Value, key: &str) -> Result<Option<bool>, String> {
        Ok(self.text(o, key)?.map(|s| s == "true"))
    }
    fn accept_version(&self, proposed: Option<String>) -> Result<String, String> {
        proposed.ok_or("Swift: dict[\"version\"] as! String on nil")?;
        Ok("2.4.1".to_owned()) // the path is hard-coded
    }
    fn check_auth(&self, v: &Value, _version: &str, _change_password: bool) -> Result<(), String> {
        if let Some(c) = v.get("challenges") {
            let ok = c.as_array().is_some_and(|a| a.iter().all(all_strings));
            if !ok {
                return Err(format!(
                    "Swift: challenges as! [[String: String]] fails on {c}"
                ));
            }
        }
        Ok(())
    }
    fn message(&self, m: &Value) -> Result<(String, String), String> {
        let fail = || format!("Swift: message as! Dictionary<String, String> fails on {m}");
        if !all_strings(m) {
            return Err(fail());
        }
        let text = self.text(m, "text")?.ok_or_else(fail)?;
        Ok((text, self.text(m, "utc")?.ok_or_else(fail)?))
    }
    fn sends_all_credentials(&self) -> bool {
        true
    }
    fn cert_params(&self, opts: &CertOptions, _version: &str) -> Vec<(String, String)> {
        vec![
            p("format", fmt_name(opts.format)),
            p("include-chain", self.boolean(opts.include_chain)),
            p("out-of-band", self.boolean(opts.out_of_band)),
        ]
    }
}

/// An object whose values are all strings.
fn all_strings(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|o| o.values().all(Value::is_string))
}

/// `addingPercentEncoding(withAllowedCharacters: .urlQueryAllowed)`.
fn swift_query_allowed(s: &[u8]) -> String {
    percent(
        s,
        |b| b.is_ascii_alphanumeric() || b"!$&'()*+,-./:;=?@_~".contains(&b),
        false,
    )
}

// ═══════════════════════════════ Session ═══════════════════════════════

/// One client of one family talking to the server: every step sends what
/// that family sends and checks the answer the way it does. Steps return
/// the answer when it has the expected status, `error` or `eoc` (after the
/// family's checks of an error); `Err` when the real client would fail.
pub struct Session {
    family: Family,
    target: Target,
    http: Http,
    version: String,
    jar: Jar,
    raw: Vec<Value>,
    last_headers: Vec<(String, String)>,
    cred_types: Option<Vec<String>>,
    formula: Option<String>,
    resolve_uris: bool,
    digest_uris: bool,
    service_uris: Vec<String>,
    csr_reqs: Option<Value>,
    csr_key_pem: Option<String>,
    messages: Vec<(String, String)>,
}

impl Session {
    /// A new client of `family` for `target` (nothing sent yet).
    pub fn new(family: Family, target: &Target) -> Session {
        let transport = family.rules().profile().transport;
        let config = tls_config(&target.ca_pem, None, &transport).unwrap_or_else(|e| panic!("{e}"));
        Session {
            family,
            target: target.clone(),
            http: Http {
                addr: target.rcdp,
                server_name: target.host.clone(),
                config,
                transport,
                conn: None,
            },
            version: family.rules().version().to_owned(),
            jar: Jar::default(),
            raw: Vec::new(),
            last_headers: Vec::new(),
            cred_types: None,
            formula: None,
            resolve_uris: false,
            digest_uris: false,
            service_uris: Vec::new(),
            csr_reqs: None,
            csr_key_pem: None,
            messages: Vec::new(),
        }
    }

    fn r(&self) -> &'static dyn Rules {
        self.family.rules()
    }

    /// Sends the next calls to `target` (another process of the same
    /// site, behind the same name and CA, as a load balancer would), with
    /// the cookie and everything learnt so far; a kept-alive connection
    /// to the previous target is closed first.
    pub fn retarget(&mut self, target: &Target) {
        if let Some(c) = self.http.conn.take() {
            close(c);
        }
        self.http.addr = target.rcdp;
        self.http.server_name = target.host.clone();
        self.target = target.clone();
    }

    /// The family.
    pub fn family(&self) -> Family {
        self.family
    }

    /// The version in the request paths (the negotiated one after hello).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The `Cookie` header this client sends next, if any.
    pub fn cookie(&self) -> Option<String> {
        self.r()
            .cookie_header(&self.jar, &format!("/rcdp/{}/", self.version))
    }

    /// The session ID as this client holds it.
    pub fn sid(&self) -> Option<String> {
        self.r().sid(&self.jar)
    }

    /// The passphrase this family derives from its cookie.
    pub fn passphrase(&self) -> Result<String, String> {
        self.r().passphrase(&self.jar)
    }

    /// Every JSON answer so far, in order.
    pub fn raw(&self) -> &[Value] {
        &self.raw
    }

    /// The headers of the last answer (names as sent).
    pub fn last_headers(&self) -> &[(String, String)] {
        &self.last_headers
    }

    /// The last messages read by [`Session::last_messages`].
    pub fn messages(&self) -> &[(String, String)] {
        &self.messages
    }

    /// The private key (PKCS#8 PEM) of the last CSR sent.
    pub fn csr_key_pem(&self) -> Option<&str> {
        self.csr_key_pem.as_deref()
    }

    /// Sends `action` with `params` under `/rcdp/<version>/` the family's
    /// way: in the URL with its usual method, or (`post_form`) as a POST
    /// `application/x-www-form-urlencoded` body, with its cookie. The
    /// parsed JSON of a 200; `Err` naming status and body otherwise.
    pub fn call(
        &mut self,
        action: &str,
        params: &[(&str, &str)],
        post_form: bool,
    ) -> Result<Value, String> {
        let owned: Vec<(String, String)> = params.iter().map(|(k, v)| p(k, v)).collect();
        self.send(action, &owned, post_form)
    }

    fn send(
        &mut self,
        action: &str,
        params: &[(String, String)],
        form: bool,
    ) -> Result<Value, String> {
        let r = self.r();
        let path = format!("/rcdp/{}/{action}", self.version);
        let encoded = r.encode(params);
        let (method, target, body) = if form {
            ("POST", path.clone().into_bytes(), Some(encoded))
        } else {
            let mut t = path.clone().into_bytes();
            if !encoded.is_empty() {
                t.push(b'?');
                t.extend(encoded);
            }
            (r.profile().method, t, None)
        };
        let mut headers: Vec<(String, String)> =
            r.profile().headers.iter().map(|(n, v)| p(n, v)).collect();
        if let Some(c) = r.cookie_header(&self.jar, &path) {
            headers.push(p("Cookie", &c));
        }
        let host = format!("{}:{}", self.target.host, self.target.rcdp.port());
        let resp =
            self.http
                .exchange(&request(method, &target, &host, &headers, body.as_deref()))?;
        self.last_headers = resp.headers.clone();
        // Cookies are taken from any answer; an HTTP error is the better report.
        let cookie = r.take_cookie(&mut self.jar, action, &path, &resp.headers);
        let v = resp.json(action, |b| r.body_json(b))?;
        cookie?;
        self.raw.push(v.clone());
        Ok(v)
    }

    /// Sends a step and applies the checks common to every answer.
    fn step(
        &mut self,
        action: &str,
        params: Vec<(String, String)>,
        form: bool,
    ) -> Result<Value, String> {
        let v = self.send(action, &params, form)?;
        let status = self
            .r()
            .text(&v, "status")?
            .ok_or_else(|| format!("{action}: answer without status: {v}"))?;
        if status == "error" {
            self.r().check_error(&v)?;
        }
        Ok(v)
    }

    /// `hello` with this family's version and description; takes the
    /// cookie and the version to use from the answer.
    pub fn hello(&mut self) -> Result<Value, String> {
        let (name, value) = self.r().profile().hello;
        let v = self.step("hello", vec![p(name, value)], false)?;
        if v["status"] == "hello" {
            let proposed = self.r().text(&v, "version")?;
            self.version = self.r().accept_version(proposed)?;
        }
        Ok(v)
    }

    /// `handshake` with the current time in this family's format.
    pub fn handshake(&mut self) -> Result<Value, String> {
        let now = self.r().time(OffsetDateTime::now_utc());
        self.handshake_at(&now)
    }

    /// `handshake` sending `caller_utc` as is (see [`Family::format_time`]).
    pub fn handshake_at(&mut self, caller_utc: &str) -> Result<Value, String> {
        let v = self.step("handshake", vec![p("caller-utc", caller_utc)], false)?;
        if v["status"] == "handshake" && self.r().decodes_whole() {
            self.r().text(&v, "server-utc")?;
        }
        Ok(v)
    }

    /// `auth-requirements` of `service`; remembers what to send.
    pub fn auth_requirements(&mut self, service: &str) -> Result<Value, String> {
        let r = self.r();
        let v = self.step("auth-requirements", vec![p("service", service)], false)?;
        if v["status"] != "auth-requirements" {
            return Ok(v);
        }
        let types = match v.get("credential-types") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|t| elem_text(r, t))
                .collect::<Result<Vec<_>, _>>()?,
            None | Some(Value::Null) if r.decodes_whole() => Vec::new(),
            other => {
                return Err(format!(
                    "{:?}: credential-types is not an array: {other:?}",
                    self.family
                ));
            }
        };
        r.check_credential_types(&types)?;
        self.cred_types = Some(types);
        self.formula = r.text(&v, "hwsig_formula")?;
        r.text(&v, "password-prompt")?;
        self.resolve_uris = r.flag(&v, "resolve-service-uris")?.unwrap_or(false);
        self.digest_uris = r.flag(&v, "calc-service-uris-digest")?.unwrap_or(false);
        self.service_uris = match v.get("service-uris") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|u| elem_text(r, u))
                .collect::<Result<_, _>>()?,
            _ => Vec::new(),
        };
        Ok(v)
    }

    /// `authentication` with the credentials asked for (all three for
    /// Swift), `resolved` / `digests` when asked for.
    pub fn authenticate(&mut self, creds: &Creds) -> Result<Value, String> {
        let r = self.r();
        let asked = |t: &str| {
            self.cred_types
                .as_ref()
                .is_none_or(|ts| ts.iter().any(|x| x == t))
        };
        let all = r.sends_all_credentials();
        let hwsig = creds
            .hwsig
            .clone()
            .unwrap_or_else(|| default_hwsig(self.formula.as_deref().unwrap_or("")));
        let mut params = vec![
            p("service", &creds.service),
            p("caller-hw-description", r.profile().hw_description),
        ];
        if all || asked("USERID") {
            params.push(p("USERID", &creds.user));
        }
        if all || asked("PASSWD") {
            params.push(p("PASSWD", &creds.password));
        }
        if all || (asked("HWSIG") && (self.cred_types.is_some() || creds.hwsig.is_some())) {
            params.push(p("HWSIG", &hwsig));
        }
        if self
            .cred_types
            .as_ref()
            .is_some_and(|ts| ts.iter().any(|x| x == "PIN"))
        {
            params.push(p("PIN", &creds.password));
        }
        if self.resolve_uris {
            params.push(p("resolved", &r.json_param(&resolve(&self.service_uris))));
        }
        if self.digest_uris {
            params.push(p("digests", &r.json_param(&digests(&self.service_uris))));
        }
        let v = self.step(
            "authentication",
            params,
            r.posts_form("authentication", false),
        )?;
        self.check_auth_result(v, false)
    }

    /// `authentication` answering a CHALLENGE with `responses`
    /// (`[{"name":..,"value":..}]`, JSON in this family's style).
    pub fn respond(&mut self, responses: &[(&str, &str)]) -> Result<Value, String> {
        let list: Vec<Value> = responses
            .iter()
            .map(|(n, v)| json!({"name": n, "value": v}))
            .collect();
        let params = vec![p("responses", &self.r().json_param(&Value::Array(list)))];
        let v = self.step(
            "authentication",
            params,
            self.r().posts_form("authentication", false),
        )?;
        self.check_auth_result(v, false)
    }

    /// `change-password`.
    pub fn change_password(&mut self, old: &str, new: &str) -> Result<Value, String> {
        let params = vec![p("old-password", old), p("new-password", new)];
        let v = self.step(
            "change-password",
            params,
            self.r().posts_form("change-password", false),
        )?;
        self.check_auth_result(v, true)
    }

    fn check_auth_result(&self, v: Value, change_password: bool) -> Result<Value, String> {
        if v["status"] != "auth-result" {
            return Ok(v);
        }
        let r = self.r();
        let status = r
            .text(&v, "auth-status")?
            .ok_or_else(|| format!("auth-result without auth-status: {v}"))?;
        if r.decodes_whole() || matches!(status.as_str(), "DELAY" | "LOCKED") {
            r.int(&v, "delay")?;
        }
        if r.decodes_whole() || status == "OK" {
            r.int(&v, "password-validity")?;
        }
        r.check_auth(&v, &self.version, change_password)?;
        Ok(v)
    }

    /// `last-messages` (all of them).
    pub fn last_messages(&mut self) -> Result<Value, String> {
        self.last_messages_since(None)
    }

    /// `last-messages` with `from-utc` sent as is when given.
    pub fn last_messages_since(&mut self, from_utc: Option<&str>) -> Result<Value, String> {
        let params = from_utc.map(|f| vec![p("from-utc", f)]).unwrap_or_default();
        let v = self.step("last-messages", params, false)?;
        if v["status"] != "last-messages" {
            return Ok(v);
        }
        let r = self.r();
        let list = match v.get("messages") {
            Some(Value::Array(a)) => a.clone(),
            None | Some(Value::Null) if r.decodes_whole() => Vec::new(),
            other => {
                return Err(format!(
                    "{:?}: messages is not an array: {other:?}",
                    self.family
                ));
            }
        };
        let mut messages = Vec::new();
        for m in &list {
            messages.push(r.message(m)?);
        }
        self.messages = messages;
        Ok(v)
    }

    /// `csr-requirements`; remembers them for [`Session::cert`].
    pub fn csr_requirements(&mut self) -> Result<Value, String> {
        let v = self.step("csr-requirements", Vec::new(), false)?;
        if v["status"] != "csr-requirements" {
            return Ok(v);
        }
        let r = self.r();
        r.int(&v, "key-size")?
            .ok_or_else(|| format!("csr-requirements without key-size: {v}"))?;
        let algo = r
            .text(&v, "signing-algo")?
            .ok_or_else(|| format!("csr-requirements without signing-algo: {v}"))?;
        r.check_signing_algo(&algo)?;
        let subject = v
            .get("subject")
            .filter(|s| s.is_object())
            .ok_or_else(|| format!("csr-requirements without a subject object: {v}"))?;
        for f in SUBJECT_FIELDS {
            r.text(subject, f)?;
        }
        self.csr_reqs = Some(v.clone());
        Ok(v)
    }

    /// `cert`: server keygen with this family's params, or (with
    /// `opts.csr`) a CSR built from the last `csr-requirements`.
    pub fn cert(&mut self, opts: &CertOptions) -> Result<Value, String> {
        let r = self.r();
        let (params, form) = match &opts.csr {
            Some(spec) => {
                let (csr, key) = build_csr(r, spec, self.csr_reqs.as_ref())?;
                self.csr_key_pem = Some(key);
                (r.csr_cert_params(opts, &csr), r.posts_form("cert", true))
            }
            None => (
                r.cert_params(opts, &self.version),
                r.posts_form("cert", false),
            ),
        };
        let v = self.step("cert", params, form)?;
        if v["status"] == "cert" {
            let key = if opts.out_of_band {
                "cert-url-templ"
            } else {
                "cert"
            };
            r.text(&v, key)?
                .ok_or_else(|| format!("cert answer without {key}: {v}"))?;
            if r.decodes_whole() {
                r.text(&v, "cert")?;
                r.text(&v, "cert-url-templ")?;
            }
            r.check_cert(&v)?;
        }
        Ok(v)
    }

    /// The certificate payload of a `cert` answer: the PEM text, the
    /// base64-decoded P12, or the out-of-band download (plain HTTP, with
    /// `$(KEYTALK_SVR_HOST)` replaced by the plain listener's IP).
    pub fn payload(&mut self, answer: &Value, opts: &CertOptions) -> Result<Vec<u8>, String> {
        let r = self.r();
        if opts.out_of_band {
            let templ = r
                .text(answer, "cert-url-templ")?
                .ok_or("no cert-url-templ")?;
            if templ.starts_with(char::is_whitespace) {
                return Err(format!(
                    "cert-url-templ {templ:?} has leading whitespace: URL(string:) is nil"
                ));
            }
            let url = templ.replace("$(KEYTALK_SVR_HOST)", &self.target.plain.ip().to_string());
            let (addr, host, path) = parse_http_url(&url)?;
            let resp = plain_get(addr, &host, &path)?;
            if resp.status != 200 {
                return Err(format!("out-of-band download {url}: HTTP {}", resp.status));
            }
            return Ok(resp.body);
        }
        let cert = r.text(answer, "cert")?.ok_or("no cert in the answer")?;
        if opts.csr.is_some() || opts.format == Format::Pem {
            return Ok(cert.into_bytes());
        }
        let b64: String = cert.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("{:?}: the P12 is not base64 ({e})", self.family))
    }

    /// `eoc` (allowed without a session).
    pub fn eoc(&mut self) -> Result<Value, String> {
        self.step("eoc", Vec::new(), false)
    }

    /// The client's own `error` report (the server answers `eoc`).
    pub fn error(&mut self, code: u32, description: &str) -> Result<Value, String> {
        self.step(
            "error",
            vec![p("code", &code.to_string()), p("description", description)],
            false,
        )
    }
}

/// A JSON array element read as text the family's way.
fn elem_text(r: &dyn Rules, e: &Value) -> Result<String, String> {
    Ok(r.text(&json!({ "element": e }), "element")?
        .unwrap_or_default())
}

/// `resolved`: each service URI with the IPs its host resolves to.
fn resolve(uris: &[String]) -> Value {
    let list = uris.iter().map(|u| {
        let host = u
            .split("://")
            .nth(1)
            .unwrap_or(u)
            .split(['/', '?'])
            .next()
            .unwrap_or("");
        let host = host
            .rsplit_once(':')
            .filter(|(_, port)| port.parse::<u16>().is_ok())
            .map_or(host, |(h, _)| h);
        let mut ips: Vec<String> = (host.trim_matches(['[', ']']), 443)
            .to_socket_addrs()
            .map(|a| a.map(|s| s.ip().to_string()).collect())
            .unwrap_or_default();
        ips.dedup();
        json!({"uri": u, "ips": ips})
    });
    Value::Array(list.collect())
}

/// `digests`: SHA-256 hex of each readable `file://` service URI.
fn digests(uris: &[String]) -> Value {
    let list = uris.iter().filter_map(|u| {
        let bytes = std::fs::read(u.strip_prefix("file://")?).ok()?;
        Some(json!({"uri": u, "digest": hex(&Sha256::digest(&bytes), false)}))
    });
    Value::Array(list.collect())
}

// ══════════════════════════════ CSRs ══════════════════════════════

const SUBJECT_FIELDS: [&str; 7] = ["c", "st", "l", "o", "ou", "cn", "e"];

/// A CSR (PEM) and its key (PKCS#8 PEM) for `spec` and the requirements.
fn build_csr(
    r: &dyn Rules,
    spec: &CsrSpec,
    reqs: Option<&Value>,
) -> Result<(String, String), String> {
    use rcgen::{DistinguishedName, DnType, DnValue, KeyPair};
    let none = json!({});
    let reqs = reqs.unwrap_or(&none);
    let bits = r.int(reqs, "key-size")?.unwrap_or(2048);
    let digest = match spec.digest {
        Some(d) => d,
        None => CsrDigest::parse(
            &r.text(reqs, "signing-algo")?
                .unwrap_or_else(|| "sha256".into()),
        )?,
    };
    let key_kind = spec
        .key
        .unwrap_or(CsrKey::Rsa(u32::try_from(bits).unwrap_or(0)));
    let alg = match (key_kind, digest) {
        (CsrKey::Rsa(_), CsrDigest::Sha256) => &rcgen::PKCS_RSA_SHA256,
        (CsrKey::Rsa(_), CsrDigest::Sha384) => &rcgen::PKCS_RSA_SHA384,
        (CsrKey::Rsa(_), CsrDigest::Sha512) => &rcgen::PKCS_RSA_SHA512,
        (CsrKey::EcP256, CsrDigest::Sha256) => &rcgen::PKCS_ECDSA_P256_SHA256,
        (CsrKey::EcP384, CsrDigest::Sha384) => &rcgen::PKCS_ECDSA_P384_SHA384,
        other => return Err(format!("cannot make a CSR with {other:?}")),
    };
    let key = match key_kind {
        CsrKey::Rsa(bits) => {
            let size = match bits {
                2048 => rcgen::RsaKeySize::_2048,
                3072 => rcgen::RsaKeySize::_3072,
                4096 => rcgen::RsaKeySize::_4096,
                other => return Err(format!("cannot generate RSA-{other}")),
            };
            KeyPair::generate_rsa_for(alg, size)
        }
        _ => KeyPair::generate_for(alg),
    }
    .map_err(|e| format!("key generation: {e}"))?;
    let subject = reqs.get("subject").cloned().unwrap_or(json!({}));
    let mut fields: Vec<(String, String)> = Vec::new();
    for f in SUBJECT_FIELDS {
        fields.push((f.to_owned(), r.text(&subject, f)?.unwrap_or_default()));
    }
    for (f, v) in &spec.subject {
        let slot = fields
            .iter_mut()
            .find(|(name, _)| name == f)
            .ok_or(format!("unknown subject field {f:?}"))?;
        slot.1 = v.clone();
    }
    let mut dn = DistinguishedName::new();
    for (f, v) in fields
        .into_iter()
        .filter(|(_, v)| !v.is_empty() && v != "null")
    {
        let (ty, value) = match f.as_str() {
            "c" => (
                DnType::CountryName,
                rcgen::string::PrintableString::try_from(v.clone())
                    .map_or(DnValue::Utf8String(v), DnValue::PrintableString),
            ),
            "st" => (DnType::StateOrProvinceName, DnValue::Utf8String(v)),
            "l" => (DnType::LocalityName, DnValue::Utf8String(v)),
            "o" => (DnType::OrganizationName, DnValue::Utf8String(v)),
            "ou" => (DnType::OrganizationalUnitName, DnValue::Utf8String(v)),
            "cn" => (DnType::CommonName, DnValue::Utf8String(v)),
            _ => (
                DnType::CustomDnType(vec![1, 2, 840, 113_549, 1, 9, 1]), // emailAddress
                rcgen::string::Ia5String::try_from(v.clone())
                    .map_or(DnValue::Utf8String(v), DnValue::Ia5String),
            ),
        };
        dn.push(ty, value);
    }
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| format!("CSR: {e}"))?;
    Ok((csr, key.serialize_pem()))
}

// ═════════════════════════ HTTP/1.1 over TLS ═════════════════════════

type TlsStream = BufReader<StreamOwned<ClientConnection, TcpStream>>;

/// The connection(s) of one client.
struct Http {
    addr: SocketAddr,
    server_name: String,
    config: Arc<ClientConfig>,
    transport: Transport,
    conn: Option<TlsStream>,
}

/// One answer.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The server ends the connection after this answer.
    close: bool,
}

impl Resp {
    /// The JSON of a 200 answer (no content coding), via `parse`.
    fn json(
        &self,
        what: &str,
        parse: impl Fn(&[u8]) -> Result<Value, String>,
    ) -> Result<Value, String> {
        let body = String::from_utf8_lossy(&self.body);
        if self.status != 200 {
            return Err(format!("{what}: HTTP {} (body {body:?})", self.status));
        }
        if let Some(coding) = header_values(&self.headers, "Content-Encoding", false).first()
            && !coding.eq_ignore_ascii_case("identity")
        {
            return Err(format!(
                "{what}: Content-Encoding {coding}: not decoded by this test client"
            ));
        }
        parse(&self.body).map_err(|e| format!("{what}: {e}: {body:?}"))
    }
}

/// Why an exchange failed: `Stale` when a connection gave nothing at all.
enum HttpErr {
    Stale(String),
    Other(String),
}

impl HttpErr {
    fn text(self) -> String {
        match self {
            HttpErr::Stale(e) => format!("connection closed before an answer ({e})"),
            HttpErr::Other(e) => e,
        }
    }
}

impl Http {
    fn open(&self) -> Result<TlsStream, String> {
        let tcp = TcpStream::connect_timeout(&self.addr, Duration::from_secs(10))
            .map_err(|e| format!("connect {}: {e}", self.addr))?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from(self.server_name.clone()).map_err(|e| e.to_string())?;
        let conn =
            ClientConnection::new(Arc::clone(&self.config), name).map_err(|e| e.to_string())?;
        let mut s = StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn
                .complete_io(&mut s.sock)
                .map_err(|e| format!("TLS handshake: {e}"))?;
        }
        if s.conn.alpn_protocol() == Some(b"h2") {
            return Err(
                "the server chose h2: exact-case header lookups would break (spec 1.9)".into(),
            );
        }
        Ok(BufReader::new(s))
    }

    /// Sends one request and reads its answer, over a new connection
    /// (curl) or the kept-alive one (reopened when the server closed it).
    fn exchange(&mut self, req: &[u8]) -> Result<Resp, String> {
        if self.transport.per_request {
            let mut c = self.open()?;
            let r = exchange_on(&mut c, req);
            close(c);
            return r.map_err(HttpErr::text);
        }
        let reused = self.conn.is_some();
        let mut c = match self.conn.take() {
            Some(c) => c,
            None => self.open()?,
        };
        let mut result = exchange_on(&mut c, req);
        if reused && self.transport.retry_stale && matches!(result, Err(HttpErr::Stale(_))) {
            c = self.open()?;
            result = exchange_on(&mut c, req);
        }
        match result {
            Ok(resp) if !resp.close => {
                self.conn = Some(c);
                Ok(resp)
            }
            Ok(resp) => {
                close(c);
                Ok(resp)
            }
            Err(e) => Err(e.text()),
        }
    }
}

fn exchange_on(c: &mut TlsStream, req: &[u8]) -> Result<Resp, HttpErr> {
    let w = c.get_mut();
    w.write_all(req)
        .and_then(|()| w.flush())
        .map_err(|e| HttpErr::Stale(e.to_string()))?;
    read_response(c)
}

fn close(mut c: TlsStream) {
    let s = c.get_mut();
    s.conn.send_close_notify();
    let _ = s.conn.complete_io(&mut s.sock);
}

/// The bytes of one request; a body goes as a form.
fn request(
    method: &str,
    target: &[u8],
    host: &str,
    headers: &[(String, String)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = format!("{method} ").into_bytes();
    out.extend(target);
    out.extend(format!(" HTTP/1.1\r\nHost: {host}\r\n").bytes());
    for (n, v) in headers {
        out.extend(format!("{n}: {v}\r\n").bytes());
    }
    match body {
        Some(b) => out.extend(
            format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
                b.len()
            )
            .bytes(),
        ),
        None if method == "POST" => out.extend(b"Content-Length: 0\r\n"),
        None => {}
    }
    out.extend(b"\r\n");
    out.extend(body.unwrap_or_default());
    out
}

/// Reads one answer (1xx skipped): Content-Length, chunked or to EOF.
fn read_response(r: &mut impl BufRead) -> Result<Resp, HttpErr> {
    let io = |e: std::io::Error| HttpErr::Other(e.to_string());
    let mut first = true;
    loop {
        let mut line = Vec::new();
        match r.read_until(b'\n', &mut line) {
            Ok(0) if first => return Err(HttpErr::Stale("EOF".into())),
            Err(e) if first && line.is_empty() => return Err(HttpErr::Stale(e.to_string())),
            Ok(0) => return Err(HttpErr::Other("EOF before the status line".into())),
            Err(e) => return Err(io(e)),
            Ok(_) => {}
        }
        first = false;
        let status_line = String::from_utf8_lossy(&line).trim_end().to_owned();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| HttpErr::Other(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let mut h = Vec::new();
            if r.read_until(b'\n', &mut h).map_err(io)? == 0 {
                return Err(HttpErr::Other("EOF in the headers".into()));
            }
            let h = String::from_utf8_lossy(&h)
                .trim_end_matches(['\r', '\n'])
                .to_owned();
            if h.is_empty() {
                break;
            }
            let (n, v) = h
                .split_once(':')
                .ok_or_else(|| HttpErr::Other(format!("bad header {h:?}")))?;
            headers.push((n.to_owned(), v.trim().to_owned()));
        }
        if (100..200).contains(&status) {
            continue;
        }
        let get = |n: &str| {
            header_values(&headers, n, false)
                .first()
                .map(|v| v.to_ascii_lowercase())
        };
        let mut close = get("connection").is_some_and(|c| c.contains("close"))
            || (status_line.starts_with("HTTP/1.0")
                && !get("connection").is_some_and(|c| c.contains("keep-alive")));
        let mut body = Vec::new();
        if status == 204 || status == 304 {
        } else if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            loop {
                let mut size = String::new();
                r.read_line(&mut size).map_err(io)?;
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| HttpErr::Other(format!("bad chunk size {size:?}")))?;
                if n == 0 {
                    let mut trailer = String::new();
                    while r.read_line(&mut trailer).map_err(io)? > 2 {
                        trailer.clear();
                    }
                    break;
                }
                let start = body.len();
                body.resize(start + n, 0);
                r.read_exact(&mut body[start..]).map_err(io)?;
                r.read_line(&mut size).map_err(io)?;
            }
        } else if let Some(len) = get("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| HttpErr::Other(format!("bad Content-Length {len:?}")))?;
            body.resize(len, 0);
            r.read_exact(&mut body).map_err(io)?;
        } else {
            let _ = r.read_to_end(&mut body); // an unclean TLS EOF still ends the body
            close = true;
        }
        return Ok(Resp {
            status,
            headers,
            body,
            close,
        });
    }
}

/// A client configuration trusting `ca` (optionally presenting a
/// certificate) restricted the way `t` says.
fn tls_config(
    ca: &Path,
    client: Option<(&Path, &Path)>,
    t: &Transport,
) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
    for cert in certs {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if t.p384_only {
        provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::SECP384R1];
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if t.tls12_only {
        &[&rustls::version::TLS12]
    } else {
        rustls::ALL_VERSIONS
    };
    let builder = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match client {
        Some((chain, key)) => {
            let chain = CertificateDer::pem_file_iter(chain)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("{}: {e}", chain.display()))?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = t.alpn.iter().map(|a| a.to_vec()).collect();
    Ok(Arc::new(config))
}

// ═════════════════ Plain HTTP listener and Public API ═════════════════

/// `http://host[:port]/path?query` → (address, Host header, path+query).
fn parse_http_url(url: &str) -> Result<(SocketAddr, String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or(format!("not an http:// URL: {url:?}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let with_port = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or(format!("cannot resolve {authority:?} of {url:?}"))?;
    Ok((addr, authority.to_owned(), path.to_owned()))
}

/// One plain-HTTP GET on a new connection.
fn plain_get(addr: SocketAddr, host: &str, path_and_query: &str) -> Result<Resp, String> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut w = tcp.try_clone().map_err(|e| e.to_string())?;
    let headers = [p("Accept", "*/*"), p("Connection", "close")];
    w.write_all(&request(
        "GET",
        path_and_query.as_bytes(),
        host,
        &headers,
        None,
    ))
    .map_err(|e| e.to_string())?;
    read_response(&mut BufReader::new(tcp)).map_err(HttpErr::text)
}

/// `GET path_and_query` on the plain listener: (status, headers, body);
/// status 0 with the error as body when no answer came.
pub fn fetch_plain(target: &Target, path_and_query: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    match plain_get(target.plain, &target.plain.to_string(), path_and_query) {
        Ok(r) => (r.status, r.headers, r.body),
        Err(e) => (0, Vec::new(), e.into_bytes()),
    }
}

/// A Public API call over TLS (`path` like `/public/1.0.0/address-book-list`),
/// presenting `client_cert` (certificate chain PEM, key PEM) when given:
/// `address-book-list` as GET with a query, the others as POST forms
/// (Python encoding). The status and the JSON body (a JSON string of the
/// body when it is not JSON); status 0 when no answer came.
pub fn public_api(
    target: &Target,
    path: &str,
    params: &[(&str, &str)],
    client_cert: Option<(&Path, &Path)>,
) -> (u16, Value) {
    let transport = Transport {
        per_request: true,
        retry_stale: false,
        alpn: &[b"http/1.1"],
        ..KEEP_ALIVE
    };
    let run = || -> Result<Resp, String> {
        let config = tls_config(&target.ca_pem, client_cert, &transport)?;
        let mut http = Http {
            addr: target.rcdp,
            server_name: target.host.clone(),
            config,
            transport,
            conn: None,
        };
        let owned: Vec<(String, String)> = params.iter().map(|(k, v)| p(k, v)).collect();
        let encoded = Python.encode(&owned);
        let host = format!("{}:{}", target.host, target.rcdp.port());
        let headers = [p("Accept", "*/*")];
        let req = if path.ends_with("address-book-list") {
            let mut t = path.as_bytes().to_vec();
            if !encoded.is_empty() {
                t.push(b'?');
                t.extend(encoded);
            }
            request("GET", &t, &host, &headers, None)
        } else {
            request("POST", path.as_bytes(), &host, &headers, Some(&encoded))
        };
        http.exchange(&req)
    };
    match run() {
        Ok(r) => {
            let v = serde_json::from_slice(&r.body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.body).into()));
            (r.status, v)
        }
        Err(e) => (0, Value::String(e)),
    }
}

// ═════════════════════════════ Small helpers ═════════════════════════════

fn fmt_name(f: Format) -> &'static str {
    match f {
        Format::P12 => "P12",
        Format::Pem => "PEM",
    }
}

/// `k=v&k=v` with the given key and value encoders.
fn join(
    params: &[(String, String)],
    key: fn(&[u8]) -> String,
    value: fn(&[u8]) -> String,
) -> Vec<u8> {
    let pairs: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", key(k.as_bytes()), value(v.as_bytes())))
        .collect();
    pairs.join("&").into_bytes()
}

/// Percent-encodes every byte `keep` rejects (%XX upper case); space
/// becomes `+` when `space_plus`.
fn percent(s: &[u8], keep: impl Fn(u8) -> bool, space_plus: bool) -> String {
    let mut out = String::new();
    for &b in s {
        if keep(b) {
            out.push(b as char);
        } else if b == b' ' && space_plus {
            out.push('+');
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Go `url.QueryEscape`: keeps `A-Za-z0-9-_.~`, space → `+`.
fn go_query_escape(s: &[u8]) -> String {
    percent(
        s,
        |b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b),
        true,
    )
}

fn hex(bytes: &[u8], upper: bool) -> String {
    bytes
        .iter()
        .map(|b| {
            if upper {
                format!("{b:02X}")
            } else {
                format!("{b:02x}")
            }
        })
        .collect()
}

/// `YYYY-MM-DDTHH:MM:SS` of `t` (UTC).
fn ymdhms(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The rest of `s` after a `YYYY-MM-DDTHH:MM:SS` prefix.
fn iso_seconds(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    let shape = b"dddd-dd-ddTdd:dd:dd";
    if b.len() < shape.len() {
        return None;
    }
    let ok = shape.iter().zip(b).all(|(&want, &got)| {
        if want == b'd' {
            got.is_ascii_digit()
        } else {
            got == want
        }
    });
    ok.then(|| &s[shape.len()..])
}

// ═════════════════════════════════ Tests ═════════════════════════════════

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| p(k, v)).collect()
    }

    #[test]
    fn encoders_follow_each_client() {
        let params = kv(&[("USERID", "Demo User"), ("PASSWD", "a&b=c+d#é/~*")]);
        let enc = |f: Family| String::from_utf8_lossy(&f.rules().encode(&params)).into_owned();
        assert_eq!(
            enc(Family::Cpp2019),
            "USERID=Demo+User&PASSWD=a%26b%3Dc%2Bd%23%C3%A9/%7E%2A"
        );
        assert_eq!(
            enc(Family::PythonRef),
            "USERID=Demo+User&PASSWD=a%26b%3Dc%2Bd%23%C3%A9%2F~%2A"
        );
        // Go sorts the keys.
        assert_eq!(
            enc(Family::GoSdk),
            "PASSWD=a%26b%3Dc%2Bd%23%C3%A9%2F~%2A&USERID=Demo+User"
        );
        // Java leaves credentials unencoded (its HTTP stack escapes the
        // space); the raw '#' ends the query.
        let raw = kv(&[("PASSWD", "wörd"), ("caller-hw-description", "a b")]);
        assert_eq!(
            Java.encode(&raw),
            "PASSWD=wörd&caller-hw-description=a+b".as_bytes()
        );
        assert_eq!(
            enc(Family::JavaAndroid),
            "USERID=Demo%20User&PASSWD=a&b=c+d"
        );
        // Swift: & = + stay raw, # and space do not.
        assert_eq!(
            enc(Family::Swift),
            "USERID=Demo%20User&PASSWD=a&b=c+d%23%C3%A9/~*"
        );
        let other = kv(&[("caller-utc", "2024-01-02T03:04:05Z")]);
        assert_eq!(Java.encode(&other), b"caller-utc=2024-01-02T03%3A04%3A05Z");
    }

    #[test]
    fn times_per_family() {
        let t = time::Date::from_calendar_date(2024, time::Month::March, 5)
            .unwrap()
            .with_hms_micro(6, 7, 8, 123_456)
            .unwrap()
            .assume_utc();
        assert_eq!(Family::GoSdk.format_time(t), "2024-03-05T06:07:08Z");
        assert_eq!(Family::Cpp2019.format_time(t), "2024-03-05T06:07:08+0000");
        assert_eq!(
            Family::PythonRef.format_time(t),
            "2024-03-05T06:07:08.123456Z"
        );
        assert_eq!(Family::JavaAndroid.format_time(t), "2024-03-05T06:07:08Z");
        assert_eq!(Family::Swift.format_time(t), "2024-03-05T06:07:08.12345Z");
        let whole = t.replace_microsecond(0).unwrap();
        assert_eq!(Family::PythonRef.format_time(whole), "2024-03-05T06:07:08Z");
    }

    #[test]
    fn utc_parsers() {
        assert!(cpp_utc_ok("2017-04-06T04:15:15+0000"));
        assert!(cpp_utc_ok("2017-04-06T04:15:15.123456Z"));
        assert!(!cpp_utc_ok("2017-04-06T04:15:15.1234567Z"));
        assert!(!cpp_utc_ok("2017-04-06T04:15:15+0100"));
        assert!(go_time_ok("2017-04-06T04:15:15+0000"));
        assert!(go_time_ok("2017-04-06T04:15:15.5-0700"));
        assert!(!go_time_ok("2017-04-06T04:15:15Z"));
        assert!(!go_time_ok("2017-04-06T04:15:15+00:00"));
    }

    fn hello_headers(set_cookie: &[(&str, &str)]) -> Vec<(String, String)> {
        set_cookie.iter().map(|(n, v)| p(n, v)).collect()
    }

    fn jar_after_hello(f: Family, headers: &[(&str, &str)]) -> Result<Jar, String> {
        let mut jar = Jar::default();
        f.rules().take_cookie(
            &mut jar,
            "hello",
            &format!("/rcdp/{}/hello", f.rcdp_version()),
            &hello_headers(headers),
        )?;
        Ok(jar)
    }

    #[test]
    fn passphrases_from_a_clean_cookie() {
        let sid = "a622bb821bec1f5315668c8f9a8e780f";
        for f in Family::all() {
            let jar =
                jar_after_hello(f, &[("Set-Cookie", &format!("keytalkcookie={sid}"))]).unwrap();
            assert_eq!(f.rules().passphrase(&jar).unwrap(), &sid[..30], "{f:?}");
            assert_eq!(f.rules().sid(&jar).as_deref(), Some(sid), "{f:?}");
        }
    }

    #[test]
    fn cookies_that_break_clients() {
        let sid = "a622bb821bec1f5315668c8f9a8e780f";
        let with_path = format!("keytalkcookie={sid}; Path=/");
        // Python's split('=') sees three parts; Go, C++, Java and Swift cope.
        let jar = jar_after_hello(Family::PythonRef, &[("Set-Cookie", &with_path)]).unwrap();
        assert!(Python.passphrase(&jar).is_err());
        for f in [
            Family::GoSdk,
            Family::Cpp2019,
            Family::JavaAndroid,
            Family::Swift,
        ] {
            let jar = jar_after_hello(f, &[("Set-Cookie", &with_path)]).unwrap();
            assert_eq!(f.rules().passphrase(&jar).unwrap(), &sid[..30], "{f:?}");
        }
        // Lower-case header name: Java and Swift look it up exactly.
        assert!(jar_after_hello(Family::JavaAndroid, &[("set-cookie", &with_path)]).is_err());
        assert!(jar_after_hello(Family::Swift, &[("set-cookie", &with_path)]).is_err());
        assert!(jar_after_hello(Family::PythonRef, &[("set-cookie", &with_path)]).is_ok());
        // A short SID: Go panics, Java's substring fails.
        let short = [("Set-Cookie", "keytalkcookie=abc")];
        assert!(
            Go.passphrase(&jar_after_hello(Family::GoSdk, &short).unwrap())
                .is_err()
        );
        assert!(
            Java.passphrase(&jar_after_hello(Family::JavaAndroid, &short).unwrap())
                .is_err()
        );
        // Go's jar: the default path covers /rcdp/2.0.0/, a foreign Domain is refused.
        let mut jar = Jar::default();
        go_jar_store(
            &mut jar,
            "/rcdp/2.0.0/hello",
            &format!("keytalkcookie={sid}; Domain=example.com"),
        );
        assert!(jar.cookies.is_empty());
        go_jar_store(
            &mut jar,
            "/rcdp/2.0.0/hello",
            &format!("keytalkcookie={sid}"),
        );
        assert_eq!(
            Go.cookie_header(&jar, "/rcdp/2.0.0/cert").unwrap(),
            format!("keytalkcookie={sid}")
        );
        assert_eq!(Go.cookie_header(&jar, "/rcdp/2.4.1/cert"), None);
    }

    #[test]
    fn typing_per_family() {
        let v = json!({"delay": 10, "password-validity": "86400", "flag": true, "n": null});
        assert!(Go.int(&v, "delay").is_err());
        assert_eq!(Go.int(&v, "password-validity").unwrap(), Some(86400));
        assert_eq!(Go.text(&v, "n").unwrap(), None);
        assert!(Swift.int(&v, "delay").is_err());
        assert!(Swift.text(&v, "n").is_err());
        assert_eq!(Cpp.int(&v, "delay").unwrap(), Some(10));
        assert_eq!(Cpp.flag(&v, "flag").unwrap(), Some(true));
        assert!(Python.flag(&v, "flag").is_err());
        assert_eq!(Python.int(&v, "delay").unwrap(), Some(10));
        assert_eq!(Java.flag(&v, "flag").unwrap(), Some(true));
        assert_eq!(Java.text(&v, "n").unwrap().as_deref(), Some("null"));
    }

    #[test]
    fn version_acceptance() {
        let v = |s: &str| Some(s.to_owned());
        assert_eq!(Cpp.accept_version(v("2.2.0")).unwrap(), "2.2.0");
        assert!(Cpp.accept_version(v("2.7.1")).is_err());
        assert!(Python.accept_version(v("2.4.0")).is_err());
        assert!(Go.accept_version(v("2.4.1")).is_err());
        assert_eq!(Java.accept_version(v("2.4.1")).unwrap(), "2.0.0");
        assert!(Swift.accept_version(None).is_err());
    }

    #[test]
    fn cpp_cert_answer_needs_address_books() {
        let ok = json!({"status": "cert", "cert": "x", "address-books": [], "apply-address-books": "false"});
        assert!(Cpp.check_cert(&ok).is_ok());
        assert!(
            Cpp.check_cert(&json!({"status": "cert", "cert": "x", "apply-address-books": "false"}))
                .is_err()
        );
        assert!(
            Cpp.check_cert(&json!({"status": "cert", "address-books": []}))
                .is_err()
        );
        let book = json!({"status": "cert", "address-books": [{"ldap_svr_url": "ldap://x"}], "apply-address-books": "true"});
        assert!(Cpp.check_cert(&book).is_err());
    }

    #[test]
    fn python_dumps_and_hwsig() {
        let v = json!([{"uri": "https://a/b", "ips": ["1.2.3.4"]}]);
        assert_eq!(
            py_dumps(&v),
            r#"[{"ips": ["1.2.3.4"], "uri": "https://a/b"}]"#
        );
        assert_eq!(
            Cpp.json_param(&v),
            r#"[{"ips":["1.2.3.4"],"uri":"https:\/\/a\/b"}]"#
        );
        let zero = default_hwsig("0");
        assert!(
            zero.starts_with("CS-F7B11509") && zero.ends_with("1FF45"),
            "{zero}"
        );
    }

    #[test]
    fn request_bytes_and_chunked_answers() {
        let req = request(
            "POST",
            b"/rcdp/2.0.0/hello?description=x",
            "localhost:1",
            &[],
            None,
        );
        assert!(
            String::from_utf8(req)
                .unwrap()
                .ends_with("Content-Length: 0\r\n\r\n")
        );
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nSet-Cookie: a=b\r\n\r\n3\r\n{\"a\r\n3\r\n\":1\r\n1\r\n}\r\n0\r\n\r\n";
        let Ok(resp) = read_response(&mut &raw[..]) else {
            panic!("not read")
        };
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, b"{\"a\":1}");
        assert_eq!(resp.headers[1], p("Set-Cookie", "a=b"));
    }

    #[test]
    fn ec_csr_carries_the_subject() {
        let reqs = json!({"key-size": "2048", "signing-algo": "sha256",
            "subject": {"cn": "DemoUser", "c": "NL", "st": "", "l": "Eindhoven", "o": "", "ou": "", "e": "demo@example.com"}});
        let spec = CsrSpec {
            key: Some(CsrKey::EcP256),
            subject: vec![p("l", "")],
            ..CsrSpec::default()
        };
        let (csr, key) = build_csr(&Cpp, &spec, Some(&reqs)).unwrap();
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();
        let names: Vec<String> = parsed
            .params
            .distinguished_name
            .iter()
            .map(|(t, _)| format!("{t:?}"))
            .collect();
        assert_eq!(names.len(), 3, "{names:?}"); // c, cn, e; l removed by the override
        assert!(
            build_csr(
                &Cpp,
                &CsrSpec {
                    key: Some(CsrKey::EcP256),
                    digest: Some(CsrDigest::Sha512),
                    ..CsrSpec::default()
                },
                Some(&reqs)
            )
            .is_err()
        );
    }
}
