//! Fuzz entry points (feature `fuzzing`): each takes raw bytes, never
//! panics on any input unless an invariant of the code under test breaks,
//! and is called both by a cargo-fuzz target (`fuzz/fuzz_targets/`) and by
//! the root package's `tests/fuzz_regressions.rs`, which replays the
//! checked-in seeds and regressions.
//!
//! Structured inputs are read with a small byte cursor (the same idea as
//! `arbitrary::Unstructured`): a short input simply reads as zeros, so
//! every byte string is a valid input. Each function's documentation gives
//! its input layout; the seeds under `fuzz/seeds/<target>/` follow it.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use der::Decode;
use keypipe_core::fuzzing::Input;
use keypipe_core::key::locked::LockedBytes;
use serde_json::{Value, json};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::agreement::ecdh::Curve;
use crate::agreement::ffdhe::Group;
use crate::agreement::public_key::{self, KeyEncoding, PeerKey};
use crate::agreement::{
    AgreementConfig, AgreementService, ClientKeyDerivationSpec, ReferenceError, Scheme, SessionKey,
};
use crate::ca::Subject;
use crate::donau::{Amount, amount, crockford, none_match, rsa_encoding};
use crate::etsi014::key_id;
use crate::etsi014::request as etsi014_req;
use crate::etsi014::supply::Span;
use crate::gateway::{self, AuthError, Credentials, KeyInfo};
use crate::keytalk::csr::{self, CsrRequirements};
use crate::keytalk::params::{self, Params};
use crate::login::{LoginRequest, RefreshRequest};
use crate::ncp::ciphertext;
use crate::ncp::{KeySource, NcpError, NcpService, generate_material};
use crate::store::{KeyType, KeyVersion, MasterKey};
use crate::{form, keytalk};

// --- ETSI 014 -----------------------------------------------------------

/// ETSI GS QKD 014 request parsing (`etsi014::request`) and `key_ID`
/// decoding (`etsi014::key_id`): the same bytes are read as a GET query
/// (key request, key ids), as a POST body (key request, key ids), as a
/// path segment, and as key ids (the first 16 bytes, and the text).
///
/// Input: the bytes. Invariants: refusals are 400s with a JSON body; an
/// accepted request written out again (query or JSON) parses to the same;
/// every version-8 id decodes and encodes back to itself.
pub fn etsi014_request(data: &[u8]) {
    use etsi014_req as r;
    let text = String::from_utf8_lossy(data);
    let refused = |e: &crate::etsi014::Refusal| {
        assert_eq!(e.status, 400);
        serde_json::from_slice::<Value>(&e.body()).expect("a refusal's body is JSON");
    };
    match r::key_request_from_query(Some(&text)) {
        Ok(req) => {
            assert!(req.additional.is_none(), "a query has no additional ids");
            let mut q = Vec::new();
            if let Some(n) = req.number {
                q.push(format!("number={n}"));
            }
            if let Some(s) = req.size {
                q.push(format!("size={s}"));
            }
            let again = r::key_request_from_query(Some(&q.join("&")));
            assert_eq!(again.as_ref(), Ok(&req), "query round trip");
        }
        Err(e) => refused(&e),
    }
    match r::key_request_from_body(data) {
        Ok(req) => {
            let body = json!({
                "number": req.number,
                "size": req.size,
                "additional_slave_SAE_IDs": req.additional,
            });
            let again = r::key_request_from_body(body.to_string().as_bytes());
            assert_eq!(again.as_ref(), Ok(&req), "body round trip");
        }
        Err(e) => refused(&e),
    }
    match r::key_ids_from_query(Some(&text)) {
        Ok(ids) => {
            assert!(!ids.is_empty());
            let q: Vec<String> = ids.iter().map(|id| format!("key_ID={id}")).collect();
            assert_eq!(r::key_ids_from_query(Some(&q.join("&"))), Ok(ids));
        }
        Err(e) => refused(&e),
    }
    match r::key_ids_from_body(data) {
        Ok(ids) => {
            assert!(!ids.is_empty());
            let items: Vec<Value> = ids
                .iter()
                .map(|id| json!({ "key_ID": id.to_string() }))
                .collect();
            let body = json!({ "key_IDs": items }).to_string();
            assert_eq!(r::key_ids_from_body(body.as_bytes()), Ok(ids));
        }
        Err(e) => refused(&e),
    }
    let segment = r::percent_decode(&text);
    assert!(segment.len() <= 3 * text.len(), "decoding grew the text");
    let mut ids = Vec::new();
    if let Some(bytes) = data.get(..16) {
        ids.push(Uuid::from_slice(bytes).expect("16 bytes"));
    }
    if let Ok(id) = Uuid::try_parse(text.trim()) {
        ids.push(id);
    }
    for id in ids {
        let Some((tag, first, len, mac)) = key_id::decode(&id) else {
            assert!(
                id.get_version_num() != 8 || id.get_variant() != uuid::Variant::RFC4122,
                "a version-8 RFC id is ours"
            );
            continue;
        };
        assert!((1..=key_id::MAX_KEY_BYTES).contains(&len));
        assert!(first <= key_id::MAX_OFFSET);
        let span = Span {
            ksid: Uuid::from_u128(u128::from(tag) << 112),
            first,
            len,
        };
        assert_eq!(key_id::stream_tag(&span.ksid), tag);
        assert_eq!(key_id::encode(&span, mac), id, "key_ID decode/encode");
        assert!(key_id::mac_matches(mac, mac));
    }
}

// --- NCP KMS ------------------------------------------------------------

/// The in-memory keys of the fuzzed NCP service.
struct FuzzKeys {
    keys: HashMap<&'static str, Arc<MasterKey>>,
}

impl KeySource for FuzzKeys {
    fn key(&self, tag: &str) -> Result<Option<Arc<MasterKey>>, NcpError> {
        Ok(self.keys.get(tag).cloned())
    }

    /// Unlimited: the budget has its own tests.
    fn reserve_encryptions(
        &self,
        _tag: &str,
        _version: u32,
        n: u64,
        _limit: u64,
    ) -> Result<(u64, u64), NcpError> {
        Ok((n, n))
    }
}

fn master(tag: &'static str, key_type: KeyType, convergent: bool, enabled: &[bool]) -> MasterKey {
    let versions = enabled
        .iter()
        .enumerate()
        .map(|(i, &enabled)| KeyVersion {
            version: i as u32 + 1,
            enabled,
            material: LockedBytes::secret(&generate_material(
                key_type,
                &[i as u8 + tag.len() as u8; 32],
            ))
            .expect("room for the fuzzed keys"),
        })
        .collect();
    MasterKey {
        tag: tag.into(),
        name: tag.into(),
        key_type,
        convergent,
        enabled: true,
        created_ms: 1_700_000_000_000,
        versions,
    }
}

/// The service, made once (RSA keys take a while).
fn ncp_service() -> &'static NcpService {
    static SERVICE: OnceLock<NcpService> = OnceLock::new();
    SERVICE.get_or_init(|| {
        let keys = [
            ("aes", KeyType::Aes256, false, &[true, true][..]),
            ("conv", KeyType::Aes256, true, &[true, true]),
            ("rsa", KeyType::Rsa2048, false, &[true]),
            ("ec", KeyType::Ecdsa, false, &[true, true]),
            ("old-off", KeyType::Aes256, false, &[false, true]),
        ]
        .into_iter()
        .map(|(tag, key_type, convergent, enabled)| {
            (tag, Arc::new(master(tag, key_type, convergent, enabled)))
        })
        .collect();
        NcpService::new(Arc::new(FuzzKeys { keys }))
    })
}

/// Calls the service; checks the answer's shape; `data` of a success.
fn ncp_call(tag: &str, action: &str, body: &[u8]) -> (u16, Value) {
    let reply = ncp_service().handle(tag, action, body);
    let v: Value = serde_json::from_str(&reply.body).expect("every NCP answer is JSON");
    match reply.status {
        200 => {
            assert_eq!(v["code"], "SUCCESS");
            assert_eq!(v["msg"], "");
        }
        400 | 404 | 422 => {
            assert!(v["code"].is_string() && v["msg"].is_string(), "{v}");
            // Messages never echo values from the body: they stay short
            // whatever the body.
            let msg = v["msg"].as_str().unwrap_or_default();
            assert!(msg.len() <= 300, "a long message: {msg}");
        }
        other => panic!("NCP answered {other}: {v}"),
    }
    (reply.status, v)
}

/// The items of a one-or-array field, and whether it was an array.
fn items(v: &Value) -> Option<(Vec<String>, bool)> {
    match v {
        Value::String(s) => Some((vec![s.clone()], false)),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map(|v| (v, true)),
        _ => None,
    }
}

/// Decrypts `ciphertexts` with `context`: the Base64 plaintexts.
fn ncp_decrypt(tag: &str, ciphertexts: &Value, context: &Value) -> Vec<String> {
    let body = json!({ "ciphertext": ciphertexts, "context": context }).to_string();
    let (status, v) = ncp_call(tag, "decrypt", body.as_bytes());
    assert_eq!(status, 200, "decrypting our own ciphertext: {v}");
    items(&v["data"]["plaintext"]).expect("plaintexts").0
}

/// The NCP KMS actions (`NcpService::handle`, which parses the request
/// body with `ncp::request` first): AES (plain and convergent), RSA and
/// ECDSA keys, one with its old version disabled, and unknown ones.
///
/// Input: one byte choosing the key tag, one the action, then the JSON
/// body. Invariants: answers are 200, 400, 404 or 422 (never 500: the keys
/// are sound) with the documented JSON shape, and messages never echo the
/// body; on AES keys what `encrypt`, `reencrypt` and `createCustomKey`
/// return decrypts to the plaintext (same shape, same order); an ECDSA
/// signature from `sign` verifies.
pub fn ncp_request(data: &[u8]) {
    let mut input = Input::new(data);
    let tag = ["aes", "conv", "rsa", "ec", "old-off", "nope"][usize::from(input.byte() % 6)];
    let action = [
        "encrypt",
        "decrypt",
        "createCustomKey",
        "reencrypt",
        "re-encrypt",
        "sign",
        "verify",
        "Encrypt",
    ][usize::from(input.byte() % 8)];
    let body = input.rest();
    let (status, answer) = ncp_call(tag, action, body);
    if status != 200 || !matches!(tag, "aes" | "conv" | "ec") {
        return;
    }
    // Values may be unreadable as `Value` (e.g. a huge number in an
    // ignored field): then there is nothing to compare.
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let context = &request["context"];
    let data = &answer["data"];
    match action {
        "encrypt" => {
            let (plain, many) = items(&request["plaintext"]).expect("accepted plaintexts");
            let (ct, ct_many) = items(&data["ciphertext"]).expect("ciphertexts");
            assert_eq!((ct.len(), ct_many), (plain.len(), many), "same shape");
            let back = ncp_decrypt(tag, &data["ciphertext"], context);
            for (a, b) in back.iter().zip(&plain) {
                assert_eq!(BASE64.decode(a).ok(), BASE64.decode(b).ok(), "round trip");
            }
        }
        "reencrypt" | "re-encrypt" => {
            let before = ncp_decrypt(tag, &request["ciphertext"], context);
            let after = ncp_decrypt(tag, &data["ciphertext"], context);
            assert_eq!(before, after, "reencrypt keeps the plaintext");
        }
        "createCustomKey" => {
            let bits = request["bits"].as_u64().unwrap_or(256);
            assert_eq!(data["key_version"], 2, "the newest version");
            if let Some(plain) = data["plaintext"].as_str() {
                let key = BASE64.decode(plain).expect("Base64 data key");
                assert_eq!(key.len() as u64 * 8, bits);
                let back = ncp_decrypt(tag, &data["ciphertext"], context);
                assert_eq!(back, [plain.to_owned()], "the data key decrypts");
            }
        }
        "sign" => {
            let body = json!({ "data": request["data"], "signature": data["signature"] });
            let (status, v) = ncp_call(tag, "verify", body.to_string().as_bytes());
            assert_eq!((status, &v["data"]["valid"]), (200, &Value::Bool(true)));
        }
        _ => {}
    }
}

/// NCP ciphertext and signature texts (`ncp::ciphertext`).
///
/// Input: two bytes of payload limit, then the text (lossy UTF-8).
/// Invariants: an accepted text is canonical (formatting its version and
/// payload gives it back) and within the limit; `split` agrees with
/// `parse`; formatting any payload (the text's bytes) under any version
/// parses back.
pub fn ncp_ciphertext(data: &[u8]) {
    let mut input = Input::new(data);
    let limit = input.u16();
    let max = usize::from(limit);
    let raw = input.rest();
    let text = String::from_utf8_lossy(raw);
    match ciphertext::parse(&text, max) {
        Ok(c) => {
            assert!(c.payload.len() <= max && !c.payload.is_empty());
            assert_eq!(ciphertext::format(c.version, &c.payload), text, "canonical");
            assert!(text.len() <= ciphertext::formatted_len(c.payload.len()));
            assert_eq!(ciphertext::split(&text).map(|(v, _)| v), Ok(c.version));
        }
        Err(_) => {
            if let Ok((v, encoded)) = ciphertext::split(&text) {
                assert_eq!(format!("{}{v}:{encoded}", ciphertext::PREFIX), text);
            }
        }
    }
    let version = u32::from(limit).max(1);
    let formatted = ciphertext::format(version, raw);
    assert!(formatted.len() <= ciphertext::formatted_len(raw.len()));
    match ciphertext::parse(&formatted, raw.len()) {
        Ok(c) => assert_eq!((c.version, c.payload.as_slice()), (version, raw)),
        Err(e) => {
            assert!(raw.is_empty(), "format/parse round trip: {e}");
        }
    }
}

// --- key agreement and login --------------------------------------------

/// `true` when `a < b` as big-endian numbers.
fn be_less(a: &[u8], b: &[u8]) -> bool {
    let strip = |x: &[u8]| {
        let zeros = x.iter().take_while(|&&b| b == 0).count();
        x[zeros..].to_vec()
    };
    let (a, b) = (strip(a), strip(b));
    (a.len(), a) < (b.len(), b)
}

/// `p - 1` of a group, big-endian.
fn p_minus_1(group: Group) -> Vec<u8> {
    let mut p = group.prime_be().to_vec();
    let last = p.len() - 1;
    p[last] -= 1; // p is odd
    p
}

/// Checks a DH value the code accepted: `1 < y < p - 1`.
fn check_dh_range(group: Group, y: &[u8]) {
    assert!(y.len() <= group.byte_len());
    assert!(be_less(&[1], y), "accepted y <= 1");
    assert!(be_less(y, &p_minus_1(group)), "accepted y >= p - 1");
}

/// Client public keys (`agreement::public_key::parse`, raw and SPKI DER)
/// and the group checks under it (`Group::validate`,
/// `Curve::point_from_sec1`), on the same bytes.
///
/// Input: the key bytes. Invariants: an accepted key names its scheme's
/// group; DH values lie in `1 < y < p - 1`; EC points are uncompressed
/// encodings of themselves; the key encoded again in the same form parses
/// to the same key.
pub fn agreement_public_key(data: &[u8]) {
    match public_key::parse(data) {
        Ok((scheme, encoding, PeerKey::Dh(group, y))) => {
            let want = match group {
                Group::Ffdhe2048 => Scheme::Aes1,
                Group::Ffdhe3072 => Scheme::Aes2,
            };
            assert_eq!(scheme, want);
            if encoding == KeyEncoding::Raw {
                assert_eq!(y, data, "a raw value is its own encoding");
            }
            check_dh_range(group, &y);
            let again = public_key::encode_dh(group, &y, encoding);
            match public_key::parse(&again) {
                Ok((s, e, PeerKey::Dh(g, y2))) => {
                    assert_eq!((s, e, g), (scheme, encoding, group));
                    assert!(!be_less(&y, &y2) && !be_less(&y2, &y), "same value");
                }
                other => panic!("a DH key encoded again: {other:?}"),
            }
        }
        Ok((scheme, encoding, PeerKey::Ec(point))) => {
            let want = match point.curve() {
                Curve::P256 => Scheme::EcAes1,
                Curve::P384 => Scheme::EcAes2,
            };
            assert_eq!(scheme, want);
            let sec1 = point.to_sec1();
            assert_eq!(sec1.len(), point.curve().point_len());
            if encoding == KeyEncoding::Raw {
                assert_eq!(sec1, data, "a raw point is its own encoding");
            }
            let again = public_key::encode_ec(&point, encoding);
            match public_key::parse(&again) {
                Ok((s, e, PeerKey::Ec(p))) => {
                    assert_eq!((s, e, p.to_sec1()), (scheme, encoding, sec1));
                }
                other => panic!("an EC key encoded again: {other:?}"),
            }
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
        }
    }
    // The subgroup check costs a Jacobi symbol of the prime's size: one
    // group per input (raw lengths were checked by `parse` already).
    if ![256, 384].contains(&data.len()) {
        let group = if data.len().is_multiple_of(2) {
            Group::Ffdhe2048
        } else {
            Group::Ffdhe3072
        };
        if group.validate(data).is_ok() {
            check_dh_range(group, data);
        }
    }
    for curve in [Curve::P256, Curve::P384] {
        if let Ok(point) = curve.point_from_sec1(data) {
            assert_eq!(point.curve(), curve);
            assert_eq!(point.to_sec1(), data, "an uncompressed point");
        }
    }
}

/// Encrypts a login field as clients do: `Base64(iv ‖ AES-GCM(k_enc,
/// plaintext, aad = reference))`.
fn seal_field(k_enc: &[u8], iv: [u8; 12], plaintext: &[u8], reference: &str) -> String {
    let mut buf = plaintext.to_vec();
    let nonce = Nonce::from(iv);
    let tag = match k_enc.len() {
        16 => Aes128Gcm::new_from_slice(k_enc)
            .expect("a 16-byte key")
            .encrypt_inout_detached(&nonce, reference.as_bytes(), buf.as_mut_slice().into()),
        _ => Aes256Gcm::new_from_slice(k_enc)
            .expect("a 32-byte key")
            .encrypt_inout_detached(&nonce, reference.as_bytes(), buf.as_mut_slice().into()),
    }
    .expect("AES-GCM encrypts");
    let mut out = iv.to_vec();
    out.extend_from_slice(&buf);
    out.extend_from_slice(&tag);
    BASE64.encode(out)
}

/// The key-agreement request (`POST /rest/key-agreement`): the JSON body
/// (`ClientKeyDerivationSpec`) and `AgreementService::agree`, on a fresh
/// service.
///
/// Input: the JSON body. Invariants: an agreement answers with a scheme
/// the client offered, a server key of the same scheme in the client's
/// encoding, a 32-byte proof, and a reference that can be taken once,
/// whose key opens what a client seals under it.
pub fn agreement_request(data: &[u8]) {
    let Ok(spec) = serde_json::from_slice::<ClientKeyDerivationSpec>(data) else {
        return;
    };
    let service = AgreementService::new(AgreementConfig::default());
    let now = Instant::now();
    let info = match service.agree(&spec, now) {
        Ok(info) => info,
        Err(e) => {
            assert_eq!(service.pending(), 0, "a refused agreement leaves no state");
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    assert!(
        spec.supported_schemes
            .iter()
            .any(|s| s == info.scheme.name()),
        "a scheme the client did not offer"
    );
    let client_key = BASE64.decode(&spec.public_key).expect("accepted Base64");
    let (_, client_encoding, _) = public_key::parse(&client_key).expect("accepted key");
    let server_key = BASE64.decode(&info.public_key).expect("Base64 server key");
    let (scheme, encoding, _) = public_key::parse(&server_key).expect("the server key parses");
    assert_eq!((scheme, encoding), (info.scheme, client_encoding));
    assert_eq!(BASE64.decode(&info.proof).map(|p| p.len()), Ok(32));
    assert_eq!(
        BASE64.decode(&info.identifier).as_deref(),
        Ok(&b"Broker"[..])
    );
    let (reference, key) = service
        .take(&info.client_reference_id, now)
        .expect("a fresh reference");
    assert_eq!(reference, info.client_reference_id);
    assert_eq!(key.k_enc.len(), info.scheme.enc_key_len());
    assert_eq!(
        service.take(&reference, now).err(),
        Some(ReferenceError::Used)
    );
    let sealed = seal_field(&key.k_enc, [9; 12], b"secret", &reference);
    let opened = key.open("password", &sealed, &reference).expect("opens");
    assert_eq!(opened.as_slice(), b"secret");
}

/// The login request bodies (`LoginRequest`, `RefreshRequest`, as the
/// server reads them from JSON) and the password transport
/// (`SessionKey::open`) under AES-128 and AES-256 keys.
///
/// Input: the JSON body. Invariants: an opened password is the field's
/// ciphertext without IV and tag; what a client seals (any password: the
/// body's bytes) opens to itself, and a change of reference or of any bit
/// makes it fail.
pub fn login_request(data: &[u8]) {
    let reference = "5b6b3a54-2f64-4ad1-9f5c-f1c1e6a6f0a1";
    let keys = [
        SessionKey {
            scheme: Scheme::EcAes1,
            k_enc: Zeroizing::new(vec![3; 16]),
        },
        SessionKey {
            scheme: Scheme::Aes2,
            k_enc: Zeroizing::new(vec![5; 32]),
        },
    ];
    if let Ok(req) = serde_json::from_slice::<LoginRequest>(data) {
        let _ = format!("{req:?}");
        for key in &keys {
            if let Ok(password) = key.open("password", &req.password, reference) {
                let raw = BASE64
                    .decode(req.password.as_bytes())
                    .expect("opened Base64");
                assert_eq!(password.len() + 28, raw.len());
            }
        }
    }
    if let Ok(req) = serde_json::from_slice::<RefreshRequest>(data) {
        assert_eq!(format!("{req:?}"), "RefreshRequest(<redacted>)");
    }
    let iv: [u8; 12] = std::array::from_fn(|i| data.get(i).copied().unwrap_or(0));
    for key in &keys {
        let sealed = seal_field(&key.k_enc, iv, data, reference);
        let opened = key.open("password", &sealed, reference).expect("opens");
        assert_eq!(opened.as_slice(), data, "seal/open round trip");
        assert!(key.open("password", &sealed, "other").is_err());
        let mut raw = BASE64.decode(&sealed).expect("Base64");
        let at = data.len() % raw.len();
        raw[at] ^= 0x80;
        assert!(
            key.open("password", &BASE64.encode(&raw), reference)
                .is_err()
        );
    }
}

// --- KeyTalk ------------------------------------------------------------

/// Every byte as `%XX`, but unreserved characters as they are.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// KeyTalk request parameters (`keytalk::params`: query and form merged,
/// session cookie, ISO-8601 times, challenge responses) and the shared URL
/// decoding under them (`form`), with the small parsers of the RCDP path
/// (version, action, hardware signature).
///
/// Input: a length-prefixed query, then the form body. Invariants:
/// decoding never grows text more than three times (U+FFFD); encoded then
/// decoded text and pairs come back unchanged; `Params` sees the query's
/// values before the body's; a session id is 32 lower-case hex digits;
/// an accepted time formats and parses back to itself; versions and
/// actions round-trip their names.
pub fn keytalk_form(data: &[u8]) {
    let mut input = Input::new(data);
    let query = input.chunk();
    let body = input.rest();
    for raw in [query, body] {
        for plus in [false, true] {
            let decoded = form::percent_decode(raw, plus);
            assert!(decoded.len() <= 3 * raw.len(), "decoding grew the text");
        }
        let text = String::from_utf8_lossy(raw);
        assert_eq!(
            form::percent_decode(percent_encode(&text).as_bytes(), true),
            text,
            "percent round trip"
        );
        let pairs: Vec<(String, String)> = form::pairs(raw).collect();
        assert!(pairs.len() <= raw.iter().filter(|&&b| b == b'&').count() + 1);
        let encoded: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
            .collect();
        let again: Vec<(String, String)> = form::pairs(encoded.join("&").as_bytes()).collect();
        assert_eq!(again, pairs, "pairs round trip");
    }
    let params = Params::parse(query, body);
    let all: Vec<(String, String)> = form::pairs(query).chain(form::pairs(body)).collect();
    for (name, _) in &all {
        let first = all.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        assert_eq!(params.get(name), first, "the first value of {name:?}");
        if let Ok(flag) = params.flag(name, false) {
            let v = first.unwrap_or_default();
            let truthy = v.eq_ignore_ascii_case("true") || v == "1";
            assert_eq!(flag, truthy);
        }
    }
    let cookies: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    if let Some(sid) = params::session_id(cookies) {
        assert_eq!(sid.len(), params::SID_LEN);
        assert!(
            sid.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
    }
    for text in [
        String::from_utf8_lossy(query),
        String::from_utf8_lossy(body),
    ] {
        if let Some(t) = params::parse_utc(&text)
            && time::OffsetDateTime::from_unix_timestamp(t)
                .is_ok_and(|d| (0..=9999).contains(&d.year()))
        {
            assert_eq!(
                params::parse_utc(&params::format_utc(t)),
                Some(t),
                "{text:?}"
            );
        }
        let _ = params::responses(&text);
        if let Some(v) = keytalk::version::Version::propose(&text) {
            assert!(v <= keytalk::version::Version::NEWEST);
        }
        if let Some(v) = keytalk::version::Version::parse(&text) {
            assert_eq!(v.as_str(), text);
        }
        if let Some(a) = keytalk::phase::Action::parse(&text) {
            assert_eq!(a.as_str(), text);
        }
        let sig = keytalk::credentials::normalize_hwsig(&text);
        assert!(keytalk::credentials::same_hwsig(&sig, &sig));
    }
    // Any time in years 0 to 9999 formats and parses back.
    let mut t = Input::new(query);
    let secs = (t.u64() % 315_537_897_600) as i64 - 62_167_219_200;
    assert_eq!(params::parse_utc(&params::format_utc(secs)), Some(secs));
}

/// KeyTalk CSRs (`keytalk::csr::der_of`, `check`): PEM or Base64 DER, then
/// PKCS#10 parsing, key size, signature, digest and subject checks.
///
/// Input: the CSR text (lossy UTF-8). Invariants: an accepted CSR's
/// public key is DER; the same DER sent as Base64 (also with every `+`
/// turned into a space, as an unescaped form value arrives) or as PEM
/// reads the same.
pub fn keytalk_csr(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let want = CsrRequirements {
        key_size: 2048,
        signing_algo: "sha256".into(),
        subject: Subject {
            cn: "user".into(),
            ..Subject::default()
        },
    };
    if let Some(der) = csr::der_of(&text) {
        let b64 = BASE64.encode(&der);
        assert_eq!(csr::der_of(&b64).as_ref(), Some(&der));
        let spaced = b64.replace('+', " ");
        assert_eq!(
            csr::der_of(&spaced).as_ref(),
            Some(&der),
            "Base64 whose `+` a form turned into spaces: {spaced:?}"
        );
        let pem = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n"
        );
        assert_eq!(csr::der_of(&pem).as_ref(), Some(&der));
    }
    if let Ok(spki) = csr::check(&text, &want) {
        assert!(spki::SubjectPublicKeyInfoRef::from_der(&spki).is_ok());
    }
    let der_text = BASE64.encode(data);
    let _ = csr::check(&der_text, &want);
}

// --- Donau --------------------------------------------------------------

/// Taler amounts (`donau::Amount`, text and JSON) and the Donau's
/// `If-None-Match` check (`donau::none_match`).
///
/// Input: the text (lossy UTF-8); also read as an amount's parts.
/// Invariants: an accepted amount is within bounds and its text is
/// canonical (formatting and parsing again gives the same amount and
/// text); JSON reads the same; any amount within bounds formats and parses
/// back; `*` and the tag itself match, weakly.
pub fn donau_amount(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let parsed = text.parse::<Amount>();
    if let Ok(a) = &parsed {
        amount::check_currency(&a.currency).expect("an accepted currency");
        assert!(a.value <= amount::MAX_VALUE && a.fraction < amount::FRACTION_BASE);
        let canonical = a.to_string();
        assert_eq!(canonical.parse::<Amount>().as_ref(), Ok(a));
        assert_eq!(
            canonical.parse::<Amount>().map(|b| b.to_string()),
            Ok(canonical)
        );
    }
    let via_json = serde_json::from_value::<Amount>(Value::String(text.to_string()));
    assert_eq!(via_json.ok(), parsed.ok(), "JSON and text agree");
    let mut input = Input::new(data);
    let currency: String = (0..1 + input.byte() % 11)
        .map(|_| char::from(b'A' + input.byte() % 26))
        .collect();
    let built = Amount {
        currency,
        value: input.u64() % (amount::MAX_VALUE + 1),
        fraction: u32::from(input.u16()) * 1_000 % amount::FRACTION_BASE,
    };
    assert_eq!(built.to_string().parse::<Amount>().as_ref(), Ok(&built));
    let etag = "\"0123456789abcdef\"";
    let matches = none_match(&text, etag);
    assert_eq!(
        matches,
        none_match(&text, &format!("W/{etag}")),
        "weak compare"
    );
    if text.split(',').any(|t| t.trim() == "*") {
        assert!(matches);
    }
    assert!(none_match(&format!("{text},{etag}"), etag));
}

/// Decodes Crockford Base32 as the Donau writes it (the reference).
fn crockford_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    (acc == 0).then_some(out)
}

/// The Donau's Crockford Base32 (`donau::crockford::encode`) and RSA key
/// encoding (`donau::rsa_encoding::encode`).
///
/// Input: the bytes (and, split by the first byte, an RSA `n` and `e`).
/// Invariants: the encoding has the expected length and alphabet and a
/// reference decoder gives the bytes back; the RSA encoding is the two
/// lengths and the minimal parts.
pub fn donau_crockford(data: &[u8]) {
    let text = crockford::encode(data);
    assert_eq!(text.len(), (data.len() * 8).div_ceil(5));
    assert_eq!(crockford_decode(&text).as_deref(), Some(data), "round trip");
    let mut input = Input::new(data);
    let split = usize::from(input.byte());
    let rest = input.rest();
    let (n, e) = rest.split_at(split.min(rest.len()));
    let encoded = rsa_encoding::encode(n, e).expect("parts shorter than 64 KiB");
    let minimal = |x: &[u8]| {
        x.iter()
            .skip_while(|&&b| b == 0)
            .copied()
            .collect::<Vec<_>>()
    };
    let (n, e) = (minimal(n), minimal(e));
    assert_eq!(&encoded[..2], (n.len() as u16).to_be_bytes());
    assert_eq!(&encoded[2..4], (e.len() as u16).to_be_bytes());
    assert_eq!(encoded[4..], [n, e].concat());
}

// --- API gateway --------------------------------------------------------

/// The API-gateway signature check (`gateway::verify`) with a key store
/// of one access key.
///
/// Input: a byte of flags (scheme, which headers are present, whether the
/// signature and timestamp are right), a two-byte clock skew, then
/// length-prefixed method, target, timestamp, access key, API key and
/// signature. Invariants: an accepted request carries a timestamp within
/// 5 minutes, the known access key (and for v1 its API key), and exactly
/// the signature computed over its method and target; a request signed
/// right within the window is accepted; a missing header is named.
pub fn gateway_verify(data: &[u8]) {
    const NOW: u64 = 1_700_000_000_000;
    const AK: &str = "AKFUZZ";
    const SK: &[u8] = b"SKFUZZ";
    const API: &str = "APIFUZZ";
    let mut input = Input::new(data);
    let flags = input.byte();
    let skew = u64::from(input.u16()) * 8;
    let scheme = if flags & 1 == 0 {
        gateway::Scheme::V2
    } else {
        gateway::Scheme::V1
    };
    let method = input.text();
    let target = input.text();
    let timestamp = if flags & 2 == 0 {
        if flags & 4 == 0 {
            (NOW + skew).to_string()
        } else {
            NOW.saturating_sub(skew).to_string()
        }
    } else {
        input.text()
    };
    let access_key = if flags & 8 == 0 {
        AK.into()
    } else {
        input.text()
    };
    let api_key = if flags & 16 == 0 {
        API.into()
    } else {
        input.text()
    };
    let signature = if flags & 32 == 0 {
        gateway::signature(
            scheme,
            SK,
            &method,
            &target,
            &timestamp,
            &access_key,
            &api_key,
        )
    } else {
        input.text()
    };
    let present = input.byte();
    let creds = Credentials {
        timestamp: (present & 1 == 0).then_some(timestamp.as_str()),
        access_key: (present & 2 == 0).then_some(access_key.as_str()),
        signature: (present & 4 == 0).then_some(signature.as_str()),
        api_key: (present & 8 == 0).then_some(api_key.as_str()),
    };
    let result = gateway::verify(scheme, &method, &target, &creds, NOW, |ak, check| {
        if ak != AK {
            return Err(AuthError::UnknownAccessKey);
        }
        check(KeyInfo {
            secret_key: SK,
            api_key: API,
        })
    });
    let in_window = timestamp
        .parse::<u64>()
        .is_ok_and(|ts| ts.abs_diff(NOW) <= 5 * 60 * 1000);
    let v1 = scheme == gateway::Scheme::V1;
    let right = in_window
        && access_key == AK
        && (!v1 || api_key == API)
        && signature
            == gateway::signature(
                scheme,
                SK,
                &method,
                &target,
                &timestamp,
                &access_key,
                &api_key,
            );
    let all_present = present & 7 == 0 && (!v1 || present & 8 == 0);
    match result {
        Ok(()) => assert!(right && all_present, "accepted a request not signed right"),
        Err(AuthError::Missing(name)) => {
            assert!(!all_present, "{name} named missing but present");
        }
        Err(e) => assert!(!(right && all_present), "refused a right request: {e}"),
    }
}
