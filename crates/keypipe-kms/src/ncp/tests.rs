//! The service over an in-memory key source: every action's answers, the
//! requests it must refuse (one table, [`REFUSALS`], and the cases that
//! depend on a ciphertext made first), secrets kept out of errors and
//! `Debug`, and a hand-rolled junk fuzzer.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use keypipe_core::key::locked::LockedBytes;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::ciphertext;
use super::crypto::{NONCE_LEN, TAG_LEN};
use super::field::{
    Field, MAX_CIPHERTEXT_PAYLOAD, MAX_PLAINTEXT, MAX_SIGN_DATA, decode_b64, encode_secret,
};
use super::request::{self, MAX_ITEMS};
use super::service::prepare;
use super::{Action, KeySource, NcpError, NcpService, generate_material};
use crate::store::{KeyType, KeyVersion, MasterKey};

/// In-memory key source; keys can be replaced (rotation).
#[derive(Default)]
struct Mem {
    keys: RwLock<HashMap<String, Arc<MasterKey>>>,
    /// AES-GCM encryptions reserved per (tag, version).
    used: std::sync::Mutex<HashMap<(String, u32), u64>>,
}

impl KeySource for Mem {
    fn key(&self, tag: &str) -> Result<Option<Arc<MasterKey>>, NcpError> {
        if tag == "broken" {
            return Err(NcpError::Internal("database is locked".into()));
        }
        Ok(self.keys.read().unwrap().get(tag).cloned())
    }

    fn reserve_encryptions(
        &self,
        tag: &str,
        version: u32,
        n: u64,
        limit: u64,
    ) -> Result<(u64, u64), NcpError> {
        let mut used = self.used.lock().unwrap();
        let count = used.entry((tag.to_owned(), version)).or_insert(0);
        let granted = n.min(limit - *count);
        *count += granted;
        Ok((granted, *count))
    }
}

/// Material for (type, seed); RSA keys are generated once per seed.
fn material(key_type: KeyType, seed: u8) -> Zeroizing<Vec<u8>> {
    static RSA: OnceLock<Vec<Zeroizing<Vec<u8>>>> = OnceLock::new();
    match key_type {
        KeyType::Rsa2048 => {
            let keys = RSA.get_or_init(|| {
                (0..2u8)
                    .map(|s| generate_material(KeyType::Rsa2048, &[s + 100; 32]))
                    .collect()
            });
            keys[usize::from(seed) % keys.len()].clone()
        }
        other => generate_material(other, &[seed; 32]),
    }
}

/// A key of `key_type` whose versions 1..=n have the given enabled flags.
fn master(tag: &str, key_type: KeyType, convergent: bool, versions: &[bool]) -> MasterKey {
    let versions = versions
        .iter()
        .enumerate()
        .map(|(i, &enabled)| KeyVersion {
            version: i as u32 + 1,
            enabled,
            material: LockedBytes::secret(&material(key_type, i as u8 + tag.len() as u8)).unwrap(),
        })
        .collect();
    MasterKey {
        tag: tag.to_owned(),
        name: format!("test {tag}"),
        key_type,
        convergent,
        enabled: true,
        created_ms: 1_700_000_000_000,
        versions,
    }
}

struct Fixture {
    mem: Arc<Mem>,
    svc: NcpService,
}

impl Fixture {
    fn new() -> Self {
        let mem = Arc::new(Mem::default());
        let svc = NcpService::new(mem.clone());
        let f = Fixture { mem, svc };
        f.put(master("aes", KeyType::Aes256, false, &[true, true, true]));
        f.put(master("aes1", KeyType::Aes256, false, &[true]));
        f.put(master("conv", KeyType::Aes256, true, &[true, true]));
        f.put(master("rsa", KeyType::Rsa2048, false, &[true, true]));
        f.put(master("ec", KeyType::Ecdsa, false, &[true, true]));
        f.put(master("old-off", KeyType::Aes256, false, &[false, true]));
        f.put(master("new-off", KeyType::Aes256, false, &[true, false]));
        f.put(master("rsa-off", KeyType::Rsa2048, false, &[false, true]));
        f.put(master("ec-new-off", KeyType::Ecdsa, false, &[true, false]));
        let mut off = master("off", KeyType::Aes256, false, &[true]);
        off.enabled = false;
        f.put(off);
        let mut ec_off = master("ec-off", KeyType::Ecdsa, false, &[true]);
        ec_off.enabled = false;
        f.put(ec_off);
        f
    }

    fn put(&self, key: MasterKey) {
        self.mem
            .keys
            .write()
            .unwrap()
            .insert(key.tag.clone(), Arc::new(key));
    }

    fn raw(&self, tag: &str, action: &str, body: &[u8]) -> (u16, Value) {
        let reply = self.svc.handle(tag, action, body);
        let v: Value = serde_json::from_str(&reply.body)
            .unwrap_or_else(|e| panic!("reply not JSON ({e}): {}", reply.body));
        (reply.status, v)
    }

    /// `data` of a successful call.
    fn ok(&self, tag: &str, action: &str, body: Value) -> Value {
        let (status, v) = self.raw(tag, action, body.to_string().as_bytes());
        assert_eq!(status, 200, "{tag}/{action}: {v}");
        assert_eq!(v["code"], "SUCCESS");
        assert_eq!(v["msg"], "");
        assert_eq!(v.as_object().unwrap().len(), 3);
        v["data"].clone()
    }

    /// `msg` of a failed call, checking status and code.
    fn fail(&self, tag: &str, action: &str, body: Value, status: u16, code: &str) -> String {
        let (s, v) = self.raw(tag, action, body.to_string().as_bytes());
        assert_eq!(
            (s, v["code"].as_str().unwrap()),
            (status, code),
            "{tag}/{action}: {v}"
        );
        assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
        v["msg"].as_str().unwrap().to_owned()
    }

    /// Sends every case; fails naming each case whose answer differs.
    fn refuse_all(&self, cases: &[Refusal<'_>]) {
        let wrong: Vec<String> = cases
            .iter()
            .filter_map(|case| {
                self.refused(case)
                    .err()
                    .map(|why| format!("{}: {why}", case.name))
            })
            .collect();
        assert!(
            wrong.is_empty(),
            "{} of {} refusals differ:\n{}",
            wrong.len(),
            cases.len(),
            wrong.join("\n")
        );
    }

    /// Whether `case` is answered as it says: its status and code, a body
    /// of just `code` and `msg`, a message holding every needle.
    fn refused(&self, case: &Refusal<'_>) -> Result<(), String> {
        let (status, v) = self.raw(case.tag, case.action, &case.body);
        let code = v["code"].as_str();
        if (status, code) != (case.status, Some(case.code)) {
            return Err(format!(
                "{}/{}: {status} {v}, expected {} {}",
                case.tag, case.action, case.status, case.code
            ));
        }
        if v.as_object().map(|o| o.len()) != Some(2) {
            return Err(format!("not just code and msg: {v}"));
        }
        let msg = v["msg"].as_str().ok_or_else(|| format!("no msg: {v}"))?;
        if msg.is_empty() {
            return Err("empty msg".to_owned());
        }
        match case.needles.iter().find(|n| !msg.contains(**n)) {
            Some(needle) => Err(format!("{msg:?} does not contain {needle:?}")),
            None => Ok(()),
        }
    }

    fn encrypt(&self, tag: &str, plaintext: &[u8]) -> String {
        let d = self.ok(tag, "encrypt", json!({ "plaintext": b64(plaintext) }));
        d["ciphertext"].as_str().unwrap().to_owned()
    }

    fn decrypt(&self, tag: &str, ciphertext: &str) -> Vec<u8> {
        let d = self.ok(tag, "decrypt", json!({ "ciphertext": ciphertext }));
        unb64(d["plaintext"].as_str().unwrap())
    }
}

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    STANDARD.decode(text).unwrap()
}

fn version_of(text: &str) -> u32 {
    ciphertext::split(text).unwrap().0
}

fn fixture() -> Fixture {
    Fixture::new()
}

/// The status and code a refusal answers.
type Want = (u16, &'static str);

/// 400 `INVALID_REQUEST`.
const INVALID_REQUEST: Want = (400, "INVALID_REQUEST");
/// 404 `NOT_FOUND`.
const NOT_FOUND: Want = (404, "NOT_FOUND");
/// 422 `INVALID_STATUS`.
const INVALID_STATUS: Want = (422, "INVALID_STATUS");
/// 422 `UNPROCESSABLE_ENTITY`.
const UNPROCESSABLE: Want = (422, "UNPROCESSABLE_ENTITY");

/// A request the service must refuse, and how.
struct Refusal<'a> {
    /// Names the case when it fails.
    name: Cow<'a, str>,
    tag: &'a str,
    action: &'a str,
    /// The raw body.
    body: Cow<'a, [u8]>,
    status: u16,
    code: &'a str,
    /// Texts the message must contain.
    needles: &'a [&'a str],
}

/// A row of [`REFUSALS`]: `name`, then `tag`/`action` are sent `body` and
/// answer `want` with a message holding every one of `needles`.
const fn refusal<'a>(
    name: &'a str,
    tag: &'a str,
    action: &'a str,
    body: &'a [u8],
    want: Want,
    needles: &'a [&'a str],
) -> Refusal<'a> {
    Refusal {
        name: Cow::Borrowed(name),
        tag,
        action,
        body: Cow::Borrowed(body),
        status: want.0,
        code: want.1,
        needles,
    }
}

/// A refusal of a JSON body made at run time (from a ciphertext or a size).
fn refusal_of<'a>(
    name: impl Into<Cow<'a, str>>,
    tag: &'a str,
    action: &'a str,
    body: Value,
    want: Want,
    needles: &'a [&'a str],
) -> Refusal<'a> {
    Refusal {
        name: name.into(),
        tag,
        action,
        body: Cow::Owned(body.to_string().into_bytes()),
        status: want.0,
        code: want.1,
        needles,
    }
}

/// The requests refused on the keys of [`Fixture::new`] whatever was done
/// before: one row each, walked by [`every_refusal_of_the_table`]. JSON
/// bodies are written as `json!(…).to_string()` writes them (keys sorted);
/// `eA==`, `YQ==` and `Yw==` are the Base64 of `x`, `a` and `c`, and
/// `c2lnbmVkIG1lc3NhZ2U=` of `signed message`.
#[rustfmt::skip]
static REFUSALS: &[Refusal<'static>] = &[
    // Unknown action or key.
    refusal("unknown key tag", "nope", "encrypt", br#"{"plaintext":"eA=="}"#, NOT_FOUND, &["nope"]),
    refusal("empty key tag", "", "encrypt", br#"{"plaintext":"eA=="}"#, NOT_FOUND, &[]),
    refusal("empty action", "aes", "", br#"{"plaintext":"eA=="}"#, NOT_FOUND, &[]),
    refusal("action in another case", "aes", "Encrypt", br#"{"plaintext":"eA=="}"#, NOT_FOUND, &[]),
    refusal("action with a slash", "aes", "encrypt/", br#"{"plaintext":"eA=="}"#, NOT_FOUND, &[]),
    refusal("action delete", "aes", "delete", br#"{"plaintext":"eA=="}"#, NOT_FOUND, &[]),
    refusal("action re_encrypt", "aes", "re_encrypt", br#"{"plaintext":"eA=="}"#, NOT_FOUND, &[]),
    refusal("action createcustomkey", "aes", "createcustomkey", br#"{"plaintext":"eA=="}"#, NOT_FOUND, &[]),
    // The key type cannot do the action.
    refusal("ECDSA encrypt", "ec", "encrypt", br#"{"plaintext":"eA=="}"#, UNPROCESSABLE, &["cannot"]),
    refusal("ECDSA decrypt", "ec", "decrypt", br#"{"ciphertext":"ncpkms:v1:AAAA"}"#, UNPROCESSABLE, &["cannot"]),
    refusal("ECDSA reencrypt", "ec", "reencrypt", br#"{"ciphertext":"ncpkms:v1:AAAA"}"#, UNPROCESSABLE, &["cannot"]),
    refusal("ECDSA createCustomKey", "ec", "createCustomKey", br#"{}"#, UNPROCESSABLE, &["cannot"]),
    refusal("RSA createCustomKey", "rsa", "createCustomKey", br#"{}"#, UNPROCESSABLE, &["cannot"]),
    refusal("AES sign", "aes", "sign", br#"{"data":"eA=="}"#, UNPROCESSABLE, &["cannot"]),
    refusal("AES verify", "aes", "verify", br#"{"data":"eA==","signature":"ncpkms:v1:AAAA"}"#, UNPROCESSABLE, &["cannot"]),
    refusal("convergent sign", "conv", "sign", br#"{"data":"eA=="}"#, UNPROCESSABLE, &["cannot"]),
    // A disabled key, or a disabled newest version to encrypt or sign with.
    refusal("disabled key encrypt", "off", "encrypt", br#"{"ciphertext":"ncpkms:v1:AAAA","data":"eA==","plaintext":"eA==","signature":"ncpkms:v1:AAAA"}"#, INVALID_STATUS, &[]),
    refusal("disabled key decrypt", "off", "decrypt", br#"{"ciphertext":"ncpkms:v1:AAAA","data":"eA==","plaintext":"eA==","signature":"ncpkms:v1:AAAA"}"#, INVALID_STATUS, &[]),
    refusal("disabled key createCustomKey", "off", "createCustomKey", br#"{"ciphertext":"ncpkms:v1:AAAA","data":"eA==","plaintext":"eA==","signature":"ncpkms:v1:AAAA"}"#, INVALID_STATUS, &[]),
    refusal("disabled key reencrypt", "off", "reencrypt", br#"{"ciphertext":"ncpkms:v1:AAAA","data":"eA==","plaintext":"eA==","signature":"ncpkms:v1:AAAA"}"#, INVALID_STATUS, &[]),
    refusal("disabled key sign", "ec-off", "sign", br#"{"ciphertext":"ncpkms:v1:AAAA","data":"eA==","plaintext":"eA==","signature":"ncpkms:v1:AAAA"}"#, INVALID_STATUS, &[]),
    refusal("disabled key verify", "ec-off", "verify", br#"{"ciphertext":"ncpkms:v1:AAAA","data":"eA==","plaintext":"eA==","signature":"ncpkms:v1:AAAA"}"#, INVALID_STATUS, &[]),
    refusal("newest version disabled: encrypt", "new-off", "encrypt", br#"{"plaintext":"eA=="}"#, INVALID_STATUS, &[]),
    refusal("newest version disabled: createCustomKey", "new-off", "createCustomKey", br#"{}"#, INVALID_STATUS, &[]),
    refusal("newest version disabled: sign", "ec-new-off", "sign", br#"{"data":"eA=="}"#, INVALID_STATUS, &[]),
    // The JSON shape: a required field missing or of the wrong type. It is
    // checked before the key: a bad body on an unknown key is a 400.
    refusal("bad body, unknown key", "nope", "encrypt", br#"{"#, INVALID_REQUEST, &[]),
    refusal("encrypt without plaintext", "aes", "encrypt", br#"{}"#, INVALID_REQUEST, &["plaintext"]),
    refusal("plaintext a number", "aes", "encrypt", br#"{"plaintext":1}"#, INVALID_REQUEST, &["plaintext"]),
    refusal("plaintext an object", "aes", "encrypt", br#"{"plaintext":{"a":1}}"#, INVALID_REQUEST, &["plaintext"]),
    refusal("plaintext item a number", "aes", "encrypt", br#"{"plaintext":[1]}"#, INVALID_REQUEST, &["plaintext[0]"]),
    refusal("context a number", "aes", "encrypt", br#"{"context":5,"plaintext":"YQ=="}"#, INVALID_REQUEST, &["context"]),
    refusal("decrypt without ciphertext", "aes", "decrypt", br#"{"plaintext":"YQ=="}"#, INVALID_REQUEST, &["ciphertext"]),
    refusal("ciphertext null", "aes", "decrypt", br#"{"ciphertext":null}"#, INVALID_REQUEST, &["ciphertext"]),
    refusal("ciphertext a boolean", "aes", "reencrypt", br#"{"ciphertext":true}"#, INVALID_REQUEST, &["ciphertext"]),
    refusal("bits negative", "aes", "createCustomKey", br#"{"bits":-1}"#, INVALID_REQUEST, &["bits"]),
    refusal("bits a fraction", "aes", "createCustomKey", br#"{"bits":256.5}"#, INVALID_REQUEST, &["bits"]),
    refusal("bits a string", "aes", "createCustomKey", br#"{"bits":"256"}"#, INVALID_REQUEST, &["bits"]),
    refusal("requestPlainKey a string", "aes", "createCustomKey", br#"{"requestPlainKey":"yes"}"#, INVALID_REQUEST, &["requestPlainKey"]),
    refusal("data a number", "ec", "sign", br#"{"data":1}"#, INVALID_REQUEST, &["data"]),
    refusal("verify without data", "ec", "verify", br#"{"signature":"ncpkms:v1:AAAA"}"#, INVALID_REQUEST, &["data"]),
    refusal("signature an array", "ec", "verify", br#"{"data":"YQ==","signature":[]}"#, INVALID_REQUEST, &["signature"]),
    // bits other than 128, 256 and 512.
    refusal("bits 0", "aes", "createCustomKey", br#"{"bits":0}"#, INVALID_REQUEST, &["bits"]),
    refusal("bits 100", "aes", "createCustomKey", br#"{"bits":100}"#, INVALID_REQUEST, &["bits"]),
    refusal("bits 192", "aes", "createCustomKey", br#"{"bits":192}"#, INVALID_REQUEST, &["bits"]),
    refusal("bits 1024", "aes", "createCustomKey", br#"{"bits":1024}"#, INVALID_REQUEST, &["bits"]),
    // Escapes that would send a secret through serde's scratch buffer (F14).
    refusal("escaped quote in plaintext", "aes", "encrypt", br#"{"plaintext":"YW\"Jj"}"#, INVALID_REQUEST, &["JSON escapes"]),
    refusal("escaped newline in plaintext", "aes", "encrypt", br#"{"plaintext":"YWJj\n"}"#, INVALID_REQUEST, &["JSON escapes"]),
    refusal("escaped NUL in plaintext", "aes", "encrypt", br#"{"plaintext":"\u0000"}"#, INVALID_REQUEST, &["JSON escapes"]),
    // Base64: standard alphabet, canonical padding, no whitespace. A
    // newline travels as a JSON escape, refused as such (F14).
    refusal("Base64 short of padding", "aes1", "encrypt", br#"{"plaintext":"YWJ"}"#, INVALID_REQUEST, &["plaintext", "Base64"]),
    refusal("Base64 non-canonical bits", "aes1", "encrypt", br#"{"plaintext":"YW=="}"#, INVALID_REQUEST, &["plaintext", "Base64"]),
    refusal("Base64 of one character", "aes1", "encrypt", br#"{"plaintext":"Y"}"#, INVALID_REQUEST, &["plaintext", "Base64"]),
    refusal("Base64 with a newline", "aes1", "encrypt", br#"{"plaintext":"YWJj\n"}"#, INVALID_REQUEST, &["JSON escapes"]),
    refusal("Base64 with a space", "aes1", "encrypt", br#"{"plaintext":"YW Jj"}"#, INVALID_REQUEST, &["plaintext", "Base64"]),
    refusal("Base64 URL-safe alphabet", "aes1", "encrypt", br#"{"plaintext":"YW-_"}"#, INVALID_REQUEST, &["plaintext", "Base64"]),
    refusal("Base64 not ASCII", "aes1", "encrypt", r#"{"plaintext":"é"}"#.as_bytes(), INVALID_REQUEST, &["plaintext", "Base64"]),
    refusal("array item not Base64", "aes", "encrypt", br#"{"plaintext":["YQ==","!!"]}"#, INVALID_REQUEST, &["plaintext[1]", "Base64"]),
    // context: required by convergent keys, refused by the others (an
    // empty string counts as absent), at most 50 bytes, Base64.
    refusal("convergent without context", "conv", "encrypt", br#"{"plaintext":"eA=="}"#, INVALID_REQUEST, &["context"]),
    refusal("convergent with an empty context", "conv", "encrypt", br#"{"context":"","plaintext":"eA=="}"#, INVALID_REQUEST, &["context"]),
    refusal("convergent with a null context", "conv", "encrypt", br#"{"context":null,"plaintext":"eA=="}"#, INVALID_REQUEST, &["context"]),
    refusal("convergent createCustomKey without context", "conv", "createCustomKey", br#"{}"#, INVALID_REQUEST, &[]),
    refusal("context for a non-convergent AES key", "aes", "encrypt", br#"{"context":"Yw==","plaintext":"eA=="}"#, INVALID_REQUEST, &["context"]),
    refusal("context for an RSA key", "rsa", "encrypt", br#"{"context":"Yw==","plaintext":"eA=="}"#, INVALID_REQUEST, &[]),
    refusal("context of 51 bytes", "conv", "encrypt", br#"{"context":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB","plaintext":"eA=="}"#, INVALID_REQUEST, &["context", "50"]),
    refusal("context not Base64", "conv", "encrypt", br#"{"context":"%%","plaintext":"eA=="}"#, INVALID_REQUEST, &[]),
    // Malformed signature texts, and sign or verify without their fields.
    refusal("RSA signature empty", "rsa", "verify", br#"{"data":"c2lnbmVkIG1lc3NhZ2U=","signature":""}"#, INVALID_REQUEST, &["signature"]),
    refusal("RSA signature prefix foo", "rsa", "verify", br#"{"data":"c2lnbmVkIG1lc3NhZ2U=","signature":"foo:v2:AAAA"}"#, INVALID_REQUEST, &["signature"]),
    refusal("RSA signature version x2", "rsa", "verify", br#"{"data":"c2lnbmVkIG1lc3NhZ2U=","signature":"ncpkms:x2:AAAA"}"#, INVALID_REQUEST, &["signature"]),
    refusal("RSA signature version v0", "rsa", "verify", br#"{"data":"c2lnbmVkIG1lc3NhZ2U=","signature":"ncpkms:v0:AAAA"}"#, INVALID_REQUEST, &["signature"]),
    refusal("RSA signature version v02", "rsa", "verify", br#"{"data":"c2lnbmVkIG1lc3NhZ2U=","signature":"ncpkms:v02:AAAA"}"#, INVALID_REQUEST, &["signature"]),
    refusal("RSA signature payload not Base64", "rsa", "verify", br#"{"data":"c2lnbmVkIG1lc3NhZ2U=","signature":"ncpkms:v2:A!=="}"#, INVALID_REQUEST, &["signature"]),
    refusal("RSA signature payload empty", "rsa", "verify", br#"{"data":"c2lnbmVkIG1lc3NhZ2U=","signature":"ncpkms:v2:"}"#, INVALID_REQUEST, &["signature"]),
    refusal("RSA sign data not Base64", "rsa", "sign", br#"{"data":"a b"}"#, INVALID_REQUEST, &[]),
    refusal("RSA sign without data", "rsa", "sign", br#"{}"#, INVALID_REQUEST, &[]),
    refusal("RSA verify without signature", "rsa", "verify", br#"{"data":"c2lnbmVkIG1lc3NhZ2U="}"#, INVALID_REQUEST, &[]),
    refusal("ECDSA signature empty", "ec", "verify", br#"{"data":"c2lnbmVkIG1lc3NhZ2U=","signature":""}"#, INVALID_REQUEST, &["signature"]),
    refusal("ECDSA signature prefix foo", "ec", "verify", br#"{"data":"c2lnbmVkIG1lc3NhZ2U=","signature":"foo:v2:AAAA"}"#, INVALID_REQUEST, &["signature"]),
    refusal("ECDSA signature version x2", "ec", "verify", br#"{"data":"c2lnbmVkIG1lc3NhZ2U=","signature":"ncpkms:x2:AAAA"}"#, INVALID_REQUEST, &["signature"]),
    refusal("ECDSA signature version v0", "ec", "verify", br#"{"data":"c2lnbmVkIG1lc3NhZ2U=","signature":"ncpkms:v0:AAAA"}"#, INVALID_REQUEST, &["signature"]),
    refusal("ECDSA signature version v02", "ec", "verify", br#"{"data":"c2lnbmVkIG1lc3NhZ2U=","signature":"ncpkms:v02:AAAA"}"#, INVALID_REQUEST, &["signature"]),
    refusal("ECDSA signature payload not Base64", "ec", "verify", br#"{"data":"c2lnbmVkIG1lc3NhZ2U=","signature":"ncpkms:v2:A!=="}"#, INVALID_REQUEST, &["signature"]),
    refusal("ECDSA signature payload empty", "ec", "verify", br#"{"data":"c2lnbmVkIG1lc3NhZ2U=","signature":"ncpkms:v2:"}"#, INVALID_REQUEST, &["signature"]),
    refusal("ECDSA sign data not Base64", "ec", "sign", br#"{"data":"a b"}"#, INVALID_REQUEST, &[]),
    refusal("ECDSA sign without data", "ec", "sign", br#"{}"#, INVALID_REQUEST, &[]),
    refusal("ECDSA verify without signature", "ec", "verify", br#"{"data":"c2lnbmVkIG1lc3NhZ2U="}"#, INVALID_REQUEST, &[]),
];

/// Every action, as the URL path names it.
const ACTIONS: [&str; 6] = [
    "encrypt",
    "decrypt",
    "createCustomKey",
    "reencrypt",
    "sign",
    "verify",
];

/// Bodies that are not a JSON object (or not JSON at all).
const NOT_OBJECTS: [&[u8]; 8] = [
    b"",
    b"not json",
    b"{",
    b"[]",
    b"\"x\"",
    b"null",
    b"{} {}",
    b"\xff\xfe",
];
/// Every row of [`REFUSALS`] is answered as it says.
#[test]
fn every_refusal_of_the_table() {
    fixture().refuse_all(REFUSALS);
}

/// F14: `\/` (PHP) and `\u002B` (.NET) in secret fields are resolved
/// in a zeroizing copy and give the same result as the plain body; any
/// escape that would send a secret through serde's unwiped scratch
/// buffer is refused (the escapes refused: [`REFUSALS`]).
#[test]
fn escaped_secret_fields_are_resolved() {
    let f = fixture();
    let plain = [0xfbu8, 0xff, 0xbf, 0x3e, 0x00];
    let text = b64(&plain);
    assert!(text.contains('/') && text.contains('+'), "{text}");
    let escaped = text.replace('/', "\\/").replace('+', "\\u002B");
    let body = format!(r#"{{"plaintext":"{escaped}"}}"#);
    let (status, v) = f.raw("aes", "encrypt", body.as_bytes());
    assert_eq!(status, 200, "{v}");
    let ct = v["data"]["ciphertext"].as_str().unwrap().to_owned();
    assert_eq!(f.decrypt("aes", &ct), plain);
    let escaped_ct = ct.replace('/', "\\/");
    let body = format!(r#"{{"ciphertext":"{escaped_ct}"}}"#);
    let (status, v) = f.raw("aes", "decrypt", body.as_bytes());
    assert_eq!(status, 200, "{v}");
}

/// An AES-GCM encryption needs a reservation (a store write) first:
/// until one is made the service says so, so an event loop passes the
/// request to the pool; decryption never needs one.
#[test]
fn encryptions_serve_from_memory_only_once_reserved() {
    let f = fixture();
    let key = f.mem.keys.read().unwrap()["aes"].clone();
    assert!(!f.svc.serves_from_memory(&key, "encrypt"));
    assert!(!f.svc.serves_from_memory(&key, "createCustomKey"));
    assert!(f.svc.serves_from_memory(&key, "decrypt"));
    f.encrypt("aes", b"x");
    assert!(f.svc.serves_from_memory(&key, "encrypt"));
    assert!(f.svc.serves_from_memory(&key, "reencrypt"));
}

#[test]
fn aes_encrypt_decrypt_round_trip() {
    let f = fixture();
    for pt in [&b""[..], b"x", b"hello world", &[7u8; 1024][..]] {
        let ct = f.encrypt("aes", pt);
        assert!(ct.starts_with("ncpkms:v3:"), "{ct}");
        let payload = ciphertext::parse(&ct, MAX_CIPHERTEXT_PAYLOAD)
            .unwrap()
            .payload;
        assert_eq!(payload.len(), NONCE_LEN + pt.len() + TAG_LEN);
        assert_eq!(f.decrypt("aes", &ct), pt);
    }
    // Fresh nonce: two encryptions differ.
    assert_ne!(f.encrypt("aes", b"same"), f.encrypt("aes", b"same"));
    // The payload is standard AES-256-GCM (nonce ‖ ct ‖ tag) under v3.
    use aes_gcm::aead::{Aead, KeyInit};
    let ct = f.encrypt("aes", b"interop");
    let payload = ciphertext::parse(&ct, MAX_CIPHERTEXT_PAYLOAD)
        .unwrap()
        .payload;
    let key = f.mem.keys.read().unwrap()["aes"].clone();
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&key.versions[2].material).unwrap();
    let nonce = aes_gcm::Nonce::try_from(&payload[..12]).unwrap();
    assert_eq!(cipher.decrypt(&nonce, &payload[12..]).unwrap(), b"interop");
}

#[test]
fn arrays_in_and_out_in_order() {
    let f = fixture();
    let pts: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; usize::from(i) * 3]).collect();
    let d = f.ok(
        "aes",
        "encrypt",
        json!({ "plaintext": pts.iter().map(|p| b64(p)).collect::<Vec<_>>() }),
    );
    let cts = d["ciphertext"].as_array().unwrap().clone();
    assert_eq!(cts.len(), 5);
    let d = f.ok("aes", "decrypt", json!({ "ciphertext": cts }));
    let back: Vec<Vec<u8>> = d["plaintext"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| unb64(p.as_str().unwrap()))
        .collect();
    assert_eq!(back, pts);
    // A single-item array stays an array; an empty array is answered empty.
    let d = f.ok("aes", "encrypt", json!({ "plaintext": [b64(b"one")] }));
    assert_eq!(d["ciphertext"].as_array().unwrap().len(), 1);
    let d = f.ok("aes", "encrypt", json!({ "plaintext": [] }));
    assert_eq!(d["ciphertext"], json!([]));
    // Re-encrypt keeps the shape and order too.
    let d = f.ok("aes", "reencrypt", json!({ "ciphertext": cts }));
    let re = d["ciphertext"].as_array().unwrap().clone();
    let d = f.ok("aes", "decrypt", json!({ "ciphertext": re }));
    assert_eq!(d["plaintext"][4], json!(b64(&pts[4])));
    // Errors name the item (a row of REFUSALS). At most 1000 items.
    let many = vec![b64(b"a"); MAX_ITEMS + 1];
    f.refuse_all(&[refusal_of(
        "1001 plaintexts",
        "aes",
        "encrypt",
        json!({ "plaintext": many }),
        INVALID_REQUEST,
        &["plaintext", "1000"],
    )]);
    let d = f.ok(
        "aes",
        "encrypt",
        json!({ "plaintext": vec![b64(b"a"); MAX_ITEMS] }),
    );
    assert_eq!(d["ciphertext"].as_array().unwrap().len(), MAX_ITEMS);
}

#[test]
fn rsa_round_trip_and_oaep_limit() {
    let f = fixture();
    let ct = f.encrypt("rsa", b"rsa secret");
    assert!(ct.starts_with("ncpkms:v2:"));
    let payload = ciphertext::parse(&ct, MAX_CIPHERTEXT_PAYLOAD)
        .unwrap()
        .payload;
    assert_eq!(payload.len(), 256);
    assert_eq!(f.decrypt("rsa", &ct), b"rsa secret");
    let max = [0xabu8; 190];
    let ct = f.encrypt("rsa", &max);
    assert_eq!(f.decrypt("rsa", &ct), max);
    // Arrays and reencrypt.
    let d = f.ok(
        "rsa",
        "encrypt",
        json!({ "plaintext": [b64(b"a"), b64(b"b")] }),
    );
    let d = f.ok("rsa", "reencrypt", json!({ "ciphertext": d["ciphertext"] }));
    let d = f.ok("rsa", "decrypt", json!({ "ciphertext": d["ciphertext"] }));
    assert_eq!(d["plaintext"], json!([b64(b"a"), b64(b"b")]));
    let short = ciphertext::format(2, &payload[..255]);
    let mut bad = payload.clone();
    bad[100] ^= 1;
    f.refuse_all(&[
        refusal_of(
            "191 bytes for RSA-OAEP",
            "rsa",
            "encrypt",
            json!({ "plaintext": b64(&[0u8; 191]) }),
            INVALID_REQUEST,
            &["190", "plaintext"],
        ),
        refusal_of(
            "truncated RSA ciphertext",
            "rsa",
            "decrypt",
            json!({ "ciphertext": short }),
            INVALID_REQUEST,
            &["ciphertext"],
        ),
        refusal_of(
            "RSA ciphertext with a bit flipped",
            "rsa",
            "decrypt",
            json!({ "ciphertext": ciphertext::format(2, &bad) }),
            INVALID_REQUEST,
            &["does not decrypt"],
        ),
        // Ciphertext of v2 presented as v1: does not decrypt.
        refusal_of(
            "RSA ciphertext of v2 labelled v1",
            "rsa",
            "decrypt",
            json!({ "ciphertext": ciphertext::format(1, &payload) }),
            INVALID_REQUEST,
            &["does not decrypt"],
        ),
    ]);
}

#[test]
fn create_custom_key() {
    let f = fixture();
    let d = f.ok("aes", "createCustomKey", json!({}));
    assert_eq!(d["key_version"], 3);
    assert!(d.get("plaintext").is_none(), "{d}");
    let key = f.decrypt("aes", d["ciphertext"].as_str().unwrap());
    assert_eq!(key.len(), 32);
    for (bits, len) in [(128, 16), (256, 32), (512, 64)] {
        let d = f.ok(
            "aes",
            "createCustomKey",
            json!({ "requestPlainKey": true, "bits": bits }),
        );
        let plain = unb64(d["plaintext"].as_str().unwrap());
        assert_eq!(plain.len(), len);
        assert_eq!(f.decrypt("aes", d["ciphertext"].as_str().unwrap()), plain);
    }
    let d = f.ok(
        "aes",
        "createCustomKey",
        json!({ "requestPlainKey": false }),
    );
    assert!(d.get("plaintext").is_none());
    // Convergent key: context as for encrypt.
    let d = f.ok(
        "conv",
        "createCustomKey",
        json!({ "requestPlainKey": true, "context": b64(b"c") }),
    );
    let back = f.ok(
        "conv",
        "decrypt",
        json!({ "ciphertext": d["ciphertext"], "context": b64(b"c") }),
    );
    assert_eq!(back["plaintext"], d["plaintext"]);
    // Its refusals (bits, field types, key types, context) are rows of
    // REFUSALS.
}

#[test]
fn reencrypt_after_rotation() {
    let f = fixture();
    f.put(master("rot", KeyType::Aes256, false, &[true]));
    let ct = f.encrypt("rot", b"rotate me");
    assert!(ct.starts_with("ncpkms:v1:"));
    f.put(master("rot", KeyType::Aes256, false, &[true, true]));
    for action in ["reencrypt", "re-encrypt"] {
        let d = f.ok("rot", action, json!({ "ciphertext": ct }));
        let re = d["ciphertext"].as_str().unwrap();
        assert_eq!(version_of(re), 2, "{re}");
        assert_eq!(f.decrypt("rot", re), b"rotate me");
    }
    // The old ciphertext still decrypts while v1 is enabled...
    assert_eq!(f.decrypt("rot", &ct), b"rotate me");
    // ...and not once it is disabled (422), nor reencrypts.
    f.put(master("rot", KeyType::Aes256, false, &[false, true]));
    f.refuse_all(&[
        refusal_of(
            "decrypt under disabled v1",
            "rot",
            "decrypt",
            json!({ "ciphertext": ct }),
            INVALID_STATUS,
            &[],
        ),
        refusal_of(
            "reencrypt from disabled v1",
            "rot",
            "reencrypt",
            json!({ "ciphertext": ct }),
            INVALID_STATUS,
            &[],
        ),
    ]);
    // Re-encrypting under a disabled newest version is refused.
    f.put(master("rot", KeyType::Aes256, false, &[true, false]));
    f.fail(
        "rot",
        "reencrypt",
        json!({ "ciphertext": ct }),
        422,
        "INVALID_STATUS",
    );
}

#[test]
fn decrypt_every_old_enabled_version() {
    let f = fixture();
    let mut cts = Vec::new();
    for n in 1..=4 {
        f.put(master("hist", KeyType::Aes256, false, &vec![true; n]));
        let ct = f.encrypt("hist", format!("under v{n}").as_bytes());
        assert_eq!(version_of(&ct), n as u32);
        cts.push(ct);
    }
    for (i, ct) in cts.iter().enumerate() {
        assert_eq!(
            f.decrypt("hist", ct),
            format!("under v{}", i + 1).as_bytes()
        );
    }
    // One array mixing all versions.
    let d = f.ok("hist", "decrypt", json!({ "ciphertext": cts }));
    assert_eq!(d["plaintext"][0], json!(b64(b"under v1")));
    assert_eq!(d["plaintext"][3], json!(b64(b"under v4")));
    // A ciphertext under v2 relabelled v3 does not decrypt.
    let payload = ciphertext::parse(&cts[1], MAX_CIPHERTEXT_PAYLOAD)
        .unwrap()
        .payload;
    f.fail(
        "hist",
        "decrypt",
        json!({ "ciphertext": ciphertext::format(3, &payload) }),
        400,
        "INVALID_REQUEST",
    );
}

#[test]
fn disabled_key_or_version_is_invalid_status() {
    let f = fixture();
    // A disabled key, or a disabled newest version (no encryption or
    // signing), is refused for every action: rows of REFUSALS.
    // Old version disabled: its ciphertexts and signatures are refused...
    let mut v1_only = master("old-off", KeyType::Aes256, false, &[true, true]);
    v1_only.versions.pop();
    f.put(v1_only);
    let ct = f.encrypt("old-off", b"x");
    f.put(master("old-off", KeyType::Aes256, false, &[false, true]));
    let msg = f.fail(
        "old-off",
        "decrypt",
        json!({ "ciphertext": ct }),
        422,
        "INVALID_STATUS",
    );
    assert!(msg.contains("v1"), "{msg}");
    // ...while the enabled newest one works.
    let ct2 = f.encrypt("old-off", b"y");
    assert_eq!(f.decrypt("old-off", &ct2), b"y");
    // Old version of a signing key disabled: verify is 422.
    f.put(master("ec-rot", KeyType::Ecdsa, false, &[true]));
    let sig = f.ok("ec-rot", "sign", json!({ "data": b64(b"m") }))["signature"].clone();
    f.put(master("ec-rot", KeyType::Ecdsa, false, &[false, true]));
    f.fail(
        "ec-rot",
        "verify",
        json!({ "data": b64(b"m"), "signature": sig }),
        422,
        "INVALID_STATUS",
    );
    // Disabled newest version: decrypt of the enabled v1 still works.
    f.put(master("new-off2", KeyType::Aes256, false, &[true]));
    let ct = f.encrypt("new-off2", b"z");
    f.put(master("new-off2", KeyType::Aes256, false, &[true, false]));
    assert_eq!(f.decrypt("new-off2", &ct), b"z");
}

#[test]
fn convergent_encryption() {
    let f = fixture();
    let enc = |pt: &[u8], ctx: &[u8]| {
        f.ok(
            "conv",
            "encrypt",
            json!({ "plaintext": b64(pt), "context": b64(ctx) }),
        )["ciphertext"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let a = enc(b"same", b"ctx-1");
    assert_eq!(a, enc(b"same", b"ctx-1"), "deterministic");
    assert_ne!(a, enc(b"same", b"ctx-2"), "context changes it");
    assert_ne!(a, enc(b"other", b"ctx-1"), "plaintext changes it");
    let d = f.ok(
        "conv",
        "decrypt",
        json!({ "ciphertext": a, "context": b64(b"ctx-1") }),
    );
    assert_eq!(d["plaintext"], json!(b64(b"same")));
    // Wrong or missing context. (Encrypting without one, with one for a
    // non-convergent key, over 50 bytes or not Base64: rows of REFUSALS.)
    f.refuse_all(&[
        refusal_of(
            "decrypt with another context",
            "conv",
            "decrypt",
            json!({ "ciphertext": a, "context": b64(b"ctx-2") }),
            INVALID_REQUEST,
            &["does not decrypt"],
        ),
        refusal_of(
            "decrypt without context",
            "conv",
            "decrypt",
            json!({ "ciphertext": a }),
            INVALID_REQUEST,
            &[],
        ),
    ]);
    // An empty context counts as absent.
    f.ok(
        "aes",
        "encrypt",
        json!({ "plaintext": b64(b"x"), "context": "" }),
    );
    // Context limits: 50 bytes ok.
    enc(b"x", &[1u8; 50]);
    // Array and reencrypt keep determinism under the newest version.
    let d = f.ok(
        "conv",
        "reencrypt",
        json!({ "ciphertext": [a.clone(), a.clone()], "context": b64(b"ctx-1") }),
    );
    assert_eq!(d["ciphertext"][0], d["ciphertext"][1]);
    assert_eq!(
        d["ciphertext"][0],
        json!(a),
        "already under the newest version"
    );
    // The nonce is the documented HMAC.
    use hmac::{Hmac, Mac};
    let key = f.mem.keys.read().unwrap()["conv"].clone();
    let mut mac =
        <Hmac<rsa::sha2::Sha256> as hmac::KeyInit>::new_from_slice(&key.versions[1].material)
            .unwrap();
    mac.update(b"keypipe-ncp-convergent-v1ctx-1");
    let payload = ciphertext::parse(&a, MAX_CIPHERTEXT_PAYLOAD)
        .unwrap()
        .payload;
    assert_eq!(payload[..12], mac.finalize().into_bytes()[..12]);
}

#[test]
fn sign_and_verify() {
    let f = fixture();
    for tag in ["rsa", "ec"] {
        let data = b64(b"signed message");
        let sig = f.ok(tag, "sign", json!({ "data": data }))["signature"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(version_of(&sig), 2, "{sig}");
        let verify = |data: &str, sig: &str| {
            f.ok(tag, "verify", json!({ "data": data, "signature": sig }))["valid"].clone()
        };
        assert_eq!(verify(&data, &sig), json!(true));
        // Tampered data.
        assert_eq!(verify(&b64(b"signed messagE"), &sig), json!(false));
        // Tampered signature bytes (also one with a broken DER frame).
        let mut bytes = ciphertext::parse(&sig, 512).unwrap().payload;
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(verify(&data, &ciphertext::format(2, &bytes)), json!(false));
        bytes[0] ^= 0xff;
        assert_eq!(verify(&data, &ciphertext::format(2, &bytes)), json!(false));
        assert_eq!(
            verify(&data, &ciphertext::format(2, b"short")),
            json!(false)
        );
        // Same signature under the other version's key.
        let payload = ciphertext::parse(&sig, 512).unwrap().payload;
        assert_eq!(
            verify(&data, &ciphertext::format(1, &payload)),
            json!(false)
        );
        // Signature under v1 still verifies (the prefix picks the version).
        let v1 = f.mem.keys.read().unwrap()[tag].clone();
        let engine = prepare(&v1, &v1.versions[0], None).unwrap();
        let old = ciphertext::format(1, &engine.sign(b"signed message").unwrap());
        assert_eq!(verify(&data, &old), json!(true));
        // Malformed signature texts, and sign or verify without their
        // fields: rows of REFUSALS. Data limits: 8 KiB is fine.
        f.ok(tag, "sign", json!({ "data": b64(&[5u8; MAX_SIGN_DATA]) }));
        f.refuse_all(&[
            refusal_of(
                format!("{tag} signature of an unknown version"),
                tag,
                "verify",
                json!({ "data": data, "signature": ciphertext::format(9, &payload) }),
                INVALID_REQUEST,
                &["v9"],
            ),
            refusal_of(
                format!("{tag} signature of 513 bytes"),
                tag,
                "verify",
                json!({ "data": data, "signature": ciphertext::format(2, &[0; 513]) }),
                INVALID_REQUEST,
                &[],
            ),
            refusal_of(
                format!("{tag} sign data over 8 KiB"),
                tag,
                "sign",
                json!({ "data": b64(&[5u8; MAX_SIGN_DATA + 1]) }),
                INVALID_REQUEST,
                &["data", "8192"],
            ),
            refusal_of(
                format!("{tag} verify data over 8 KiB"),
                tag,
                "verify",
                json!({ "data": b64(&[5u8; MAX_SIGN_DATA + 1]), "signature": sig }),
                INVALID_REQUEST,
                &[],
            ),
        ]);
    }
    // ECDSA signatures are DER; RSA-PSS ones are 256 bytes and verify
    // with the rsa crate's own PSS check.
    let sig = f.ok("ec", "sign", json!({ "data": b64(b"m") }))["signature"].clone();
    let der = ciphertext::parse(sig.as_str().unwrap(), 512)
        .unwrap()
        .payload;
    assert_eq!(der[0], 0x30);
    p256::ecdsa::DerSignature::from_bytes(&der).unwrap();
    let sig = f.ok("rsa", "sign", json!({ "data": b64(b"m") }))["signature"].clone();
    let raw = ciphertext::parse(sig.as_str().unwrap(), 512)
        .unwrap()
        .payload;
    assert_eq!(raw.len(), 256);
    let key = f.mem.keys.read().unwrap()["rsa"].clone();
    use rsa::pkcs8::DecodePrivateKey;
    let private = rsa::PrivateKey::from_pkcs8_der(&key.versions[1].material).unwrap();
    private
        .to_public_key()
        .pss_verify::<rsa::sha2::Sha256>(b"m", &raw)
        .unwrap();
}

#[test]
fn malformed_ciphertexts_are_invalid_request() {
    let f = fixture();
    let ct = f.encrypt("aes", b"payload bytes");
    let payload = ciphertext::parse(&ct, MAX_CIPHERTEXT_PAYLOAD)
        .unwrap()
        .payload;
    let mut corrupted = payload.clone();
    corrupted[20] ^= 0x40;
    let mut bad_tag = payload.clone();
    let last = bad_tag.len() - 1;
    bad_tag[last] ^= 1;
    let b64_part = ct.split_once(":v3:").unwrap().1;
    let cases = [
        ("corrupted", ciphertext::format(3, &corrupted)),
        ("tag flipped", ciphertext::format(3, &bad_tag)),
        (
            "one byte short",
            ciphertext::format(3, &payload[..payload.len() - 1]),
        ),
        ("20 bytes", ciphertext::format(3, &payload[..20])),
        ("one byte", ciphertext::format(3, &payload[..1])),
        ("text cut by 4", ct[..ct.len() - 4].to_owned()),
        ("text cut by 1", ct[..ct.len() - 1].to_owned()),
        ("version x1", format!("ncpkms:x1:{b64_part}")),
        ("prefix foo", format!("foo:v1:{b64_part}")),
        ("unknown version v9", format!("ncpkms:v9:{b64_part}")),
        ("version v0", format!("ncpkms:v0:{b64_part}")),
        ("version v01", format!("ncpkms:v01:{b64_part}")),
        ("version v03", format!("ncpkms:v03:{b64_part}")),
        ("payload not Base64", format!("ncpkms:v3:{b64_part}!")),
        ("payload after a space", format!("ncpkms:v3: {b64_part}")),
        ("payload empty", "ncpkms:v3:".to_owned()),
        ("no payload", "ncpkms:v3".to_owned()),
        ("empty", String::new()),
        ("plain text", "plain text".to_owned()),
        (
            "payload too large",
            ciphertext::format(3, &[0u8; MAX_CIPHERTEXT_PAYLOAD + 1]),
        ),
    ];
    let mut refusals = Vec::new();
    for (name, bad) in &cases {
        for action in ["decrypt", "reencrypt"] {
            refusals.push(refusal_of(
                format!("{name} ({action})"),
                "aes",
                action,
                json!({ "ciphertext": bad }),
                INVALID_REQUEST,
                &["ciphertext"],
            ));
        }
        refusals.push(refusal_of(
            format!("{name} (second of an array)"),
            "aes",
            "decrypt",
            json!({ "ciphertext": [ct.clone(), bad] }),
            INVALID_REQUEST,
            &["ciphertext[1]"],
        ));
    }
    refusals.push(refusal_of(
        "unknown version v9, named",
        "aes",
        "decrypt",
        json!({ "ciphertext": format!("ncpkms:v9:{b64_part}") }),
        INVALID_REQUEST,
        &["unknown key version v9"],
    ));
    // A ciphertext of another key does not decrypt.
    let other = f.encrypt("aes1", b"x");
    let payload = ciphertext::parse(&other, MAX_CIPHERTEXT_PAYLOAD)
        .unwrap()
        .payload;
    refusals.push(refusal_of(
        "ciphertext of another key",
        "aes",
        "decrypt",
        json!({ "ciphertext": ciphertext::format(1, &payload) }),
        INVALID_REQUEST,
        &[],
    ));
    f.refuse_all(&refusals);
}

#[test]
fn oversize_and_bad_base64_fields() {
    let f = fixture();
    f.encrypt("aes1", &vec![1u8; MAX_PLAINTEXT]);
    f.refuse_all(&[
        refusal_of(
            "plaintext over 32 KiB",
            "aes1",
            "encrypt",
            json!({ "plaintext": b64(&vec![1u8; MAX_PLAINTEXT + 1]) }),
            INVALID_REQUEST,
            &["plaintext", "32768"],
        ),
        // Far larger text is refused before decoding.
        refusal_of(
            "plaintext of 100 000 characters",
            "aes1",
            "encrypt",
            json!({ "plaintext": "A".repeat(100_000) }),
            INVALID_REQUEST,
            &["plaintext"],
        ),
    ]);
    // Largest plaintext round-trips (largest ciphertext accepted).
    let ct = f.encrypt("aes1", &vec![2u8; MAX_PLAINTEXT]);
    assert_eq!(f.decrypt("aes1", &ct).len(), MAX_PLAINTEXT);
    // Bad Base64: rows of REFUSALS.
    // Escaped JSON strings are fine.
    let (status, _) = f.raw("aes1", "encrypt", br#"{"plaintext":"YW\/j"}"#);
    assert_eq!(status, 200);
}

#[test]
fn unknown_tag_action_and_wrong_type() {
    let f = fixture();
    let body = json!({ "plaintext": b64(b"x") });
    // Unknown tags and actions, wrong key types: rows of REFUSALS.
    // A long tag is echoed cut.
    let long = "t".repeat(1000);
    let msg = f.fail(&long, "encrypt", body.clone(), 404, "NOT_FOUND");
    assert!(msg.len() < 200, "{msg}");
    // Key source failure: 500, detail withheld.
    let msg = f.fail("broken", "encrypt", body, 500, "INTERNAL_SERVER_ERROR");
    assert_eq!(msg, "Server internal error");
    // Unusable stored material: 500.
    let mut junk = master("junk", KeyType::Rsa2048, false, &[true]);
    junk.versions[0].material = LockedBytes::secret(b"not a key").unwrap();
    f.put(junk);
    f.fail(
        "junk",
        "encrypt",
        json!({ "plaintext": b64(b"x") }),
        500,
        "INTERNAL_SERVER_ERROR",
    );
    // A key without versions.
    let mut empty = master("empty", KeyType::Aes256, false, &[]);
    empty.versions.clear();
    f.put(empty);
    f.fail(
        "empty",
        "encrypt",
        json!({ "plaintext": b64(b"x") }),
        422,
        "INVALID_STATUS",
    );
}

/// A body that is not a JSON object is refused by every action (the
/// fields missing or of the wrong type: rows of REFUSALS).
#[test]
fn bad_bodies_name_the_problem() {
    let f = fixture();
    let refusals: Vec<Refusal<'_>> = ACTIONS
        .iter()
        .flat_map(|action| {
            NOT_OBJECTS.iter().map(move |body| Refusal {
                name: format!("{action} {:?}", String::from_utf8_lossy(body)).into(),
                tag: "aes",
                action,
                body: Cow::Borrowed(*body),
                status: INVALID_REQUEST.0,
                code: INVALID_REQUEST.1,
                needles: &[],
            })
        })
        .collect();
    f.refuse_all(&refusals);
}

#[test]
fn secrets_never_in_errors_or_debug() {
    let f = fixture();
    let secret = b"TOP-SECRET-PLAINTEXT-0123456789";
    let secret_b64 = b64(secret);
    let ct = f.encrypt("aes", secret);
    let key = f.mem.keys.read().unwrap()["aes"].clone();
    let key_b64 = b64(&key.versions[2].material);
    let key_hex: String = key.versions[2]
        .material
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let key_dbg = format!("{:?}", &key.versions[2].material[..8]);
    let leaks = |text: &str| {
        text.contains("TOP-SECRET")
            || text.contains(&secret_b64)
            || text.contains(&key_b64)
            || text.contains(&key_hex)
            || text.contains(&key_dbg)
    };
    // A decrypt answer carries the plaintext; its Debug does not.
    let reply = f.svc.handle(
        "aes",
        "decrypt",
        json!({ "ciphertext": ct }).to_string().as_bytes(),
    );
    assert!(reply.body.contains(&secret_b64));
    assert!(!leaks(&format!("{reply:?}")));
    assert!(!leaks(&format!("{:?}", f.svc)));
    // Secret values in wrong places are not echoed in errors.
    let bodies = [
        json!({ "plaintext": { "x": secret_b64 } }).to_string(),
        json!({ "plaintext": secret_b64, "context": secret_b64 }).to_string(),
        json!({ "ciphertext": secret_b64 }).to_string(),
        json!({ "ciphertext": format!("ncpkms:v3:{secret_b64}") }).to_string(),
        json!({ "requestPlainKey": "TOP-SECRET, expected x", "bits": 256 }).to_string(),
        json!({ "bits": secret_b64 }).to_string(),
        format!("{{\"plaintext\":\"{secret_b64}\"}} trailing TOP-SECRET"),
        json!({ "plaintext": [1, "TOP-SECRET"] }).to_string(),
        json!({ "plaintext": "TOP-SECRET" }).to_string(),
    ];
    for body in &bodies {
        for action in ["encrypt", "decrypt", "createCustomKey"] {
            let reply = f.svc.handle("aes", action, body.as_bytes());
            if reply.status != 200 {
                assert!(!leaks(&reply.body), "{action} {body}: {}", reply.body);
                let err = f
                    .svc
                    .handle_action("aes", Action::parse(action).unwrap(), body.as_bytes())
                    .unwrap_err();
                assert!(!leaks(&err.to_string()) && !leaks(&format!("{err:?}")));
            }
        }
    }
    // A wrong-context decryption failure names no bytes either.
    let conv_ct = f.ok(
        "conv",
        "encrypt",
        json!({ "plaintext": secret_b64, "context": b64(b"a") }),
    )["ciphertext"]
        .clone();
    let msg = f.fail(
        "conv",
        "decrypt",
        json!({ "ciphertext": conv_ct, "context": b64(b"b") }),
        400,
        "INVALID_REQUEST",
    );
    assert!(!leaks(&msg));
    // Internal types.
    let engine = prepare(&key, &key.versions[2], None).unwrap();
    assert!(!leaks(&format!("{engine:?}")));
    let body = json!({ "plaintext": secret_b64 }).to_string();
    let parsed: request::EncryptRequest = request::parse(body.as_bytes()).unwrap();
    assert!(!leaks(&format!("{parsed:?}")));
    let text = ciphertext::parse(&ct, MAX_CIPHERTEXT_PAYLOAD).unwrap();
    assert!(!format!("{text:?}").contains(&ct[10..30]));
}

#[test]
fn junk_never_panics_or_fails_internally() {
    use rand_core::{Rng, SeedableRng};
    let f = fixture();
    let mut rng = rand_chacha::ChaCha20Rng::from_seed([9; 32]);
    let ct = f.encrypt("aes", b"seed");
    let templates = [
        json!({ "plaintext": b64(b"abc") }).to_string(),
        json!({ "ciphertext": ct }).to_string(),
        json!({ "ciphertext": [ct, ct], "context": "" }).to_string(),
        json!({ "data": b64(b"abc"), "signature": "ncpkms:v1:AAAA" }).to_string(),
        json!({ "requestPlainKey": true, "bits": 512 }).to_string(),
    ];
    let actions = [
        "encrypt",
        "decrypt",
        "createCustomKey",
        "reencrypt",
        "sign",
        "verify",
        "x",
    ];
    let tags = ["aes", "conv", "rsa", "ec", "off", "new-off", "nope"];
    for round in 0..3000 {
        let mut body = templates[round % templates.len()].as_bytes().to_vec();
        let edits = 1 + rng.next_u32() as usize % 4;
        for _ in 0..edits {
            let at = rng.next_u32() as usize % body.len().max(1);
            match rng.next_u32() % 3 {
                0 if !body.is_empty() => body[at] = rng.next_u32() as u8,
                1 if !body.is_empty() => {
                    body.remove(at);
                }
                _ => {
                    let junk = b"\"[]{}:,\\0Aa=v";
                    body.insert(
                        at.min(body.len()),
                        junk[rng.next_u32() as usize % junk.len()],
                    );
                }
            }
        }
        let action = actions[rng.next_u32() as usize % actions.len()];
        // RSA is slow in debug builds: keep it to a few rounds.
        let tag = tags[rng.next_u32() as usize % tags.len()];
        if tag == "rsa" && round % 50 != 0 {
            continue;
        }
        let reply = f.svc.handle(tag, action, &body);
        assert!(
            matches!(reply.status, 200 | 400 | 404 | 422),
            "{tag}/{action} {:?}: {reply:?}",
            String::from_utf8_lossy(&body)
        );
        let v: Value = serde_json::from_str(&reply.body).unwrap();
        assert!(v["code"].is_string());
    }
}

/// `cargo test -p keypipe-kms --release --lib ncp::tests::encrypt_throughput -- --ignored --nocapture`
#[test]
#[ignore]
fn encrypt_throughput() {
    let f = fixture();
    let body = json!({ "plaintext": b64(&[7u8; 1024]) }).to_string();
    let n = 100_000;
    let start = std::time::Instant::now();
    for _ in 0..n {
        let reply = f.svc.handle("aes", "encrypt", body.as_bytes());
        assert_eq!(reply.status, 200);
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{:.0} encrypts of 1 KiB per second", n as f64 / secs);
}

/// Property tests of the Base64 fields (`plaintext`, `context`,
/// `data`): [`decode_b64`] takes exactly the standard, padded,
/// canonical Base64 of at most `max` bytes; [`encode_secret`] writes
/// it.
mod base64_properties {
    use super::*;
    use proptest::prelude::*;

    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    fn field() -> Field {
        Field::new("plaintext")
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..200)
    }

    use crate::test_strategies::near_canonical;

    proptest! {
        #[test]
        fn decode_b64_of_encode_secret_is_identity(data in bytes(), slack in 0usize..5) {
            let text = encode_secret(&data);
            prop_assert_eq!(text.len(), ciphertext::max_encoded_len(data.len()));
            let max = data.len() + slack;
            let decoded = decode_b64(field(), &text, max);
            prop_assert_eq!(decoded.as_deref().map(|d| d.as_slice()).ok(), Some(&data[..]));
        }

        #[test]
        fn decode_b64_refuses_more_than_max_bytes(
            data in bytes(),
            // Short by 1 or 2 bytes often: the encoded lengths are then
            // equal and only the decoded length tells.
            short_by in prop_oneof![1usize..3, 1usize..300],
        ) {
            prop_assume!(!data.is_empty());
            let max = data.len().saturating_sub(short_by);
            let e = decode_b64(field(), &encode_secret(&data), max).unwrap_err();
            let msg = e.to_string();
            prop_assert!(
                msg.contains("plaintext") && msg.contains(&format!("larger than {max} bytes")),
                "{}", msg
            );
        }

        #[test]
        fn decode_b64_accepts_only_the_canonical_encoding(
            text in prop_oneof![
                2 => near_canonical(|b| encode_secret(b).to_string()),
                1 => "[A-Za-z0-9+/]{0,12}={0,3}",
                1 => "[A-Za-z0-9+/=_ \\n-]{0,16}",
                1 => any::<String>(),
            ],
        ) {
            // Whatever is accepted is the one encoding of its bytes.
            if let Ok(d) = decode_b64(field(), &text, 64) {
                let again = encode_secret(&d);
                prop_assert_eq!(again.as_str(), text.as_str());
            }
        }

        #[test]
        fn decode_b64_refuses_non_canonical_variants(
            data in proptest::collection::vec(any::<u8>(), 1..100),
            mutation in 0..4u8,
            at in any::<prop::sample::Index>(),
        ) {
            let good = encode_secret(&data);
            let pad = good.len() - good.trim_end_matches('=').len();
            let bad = match mutation {
                // Padding dropped.
                0 => {
                    prop_assume!(pad > 0);
                    good.trim_end_matches('=').to_owned()
                }
                // Non-zero unused bits in the last data character.
                1 => {
                    prop_assume!(pad > 0);
                    let mut chars = good.as_bytes().to_vec();
                    let last = good.len() - pad - 1;
                    let v = ALPHABET.iter().position(|&c| c == chars[last]).unwrap();
                    chars[last] = ALPHABET[v | 1];
                    String::from_utf8(chars).unwrap()
                }
                // Whitespace inside.
                2 => {
                    let i = at.index(good.len() + 1);
                    format!("{}{}{}", &good[..i], [" ", "\n", "\r\n", "\t"][i % 4], &good[i..])
                }
                // The URL-safe alphabet.
                _ => {
                    prop_assume!(good.contains(['+', '/']));
                    good.replace('+', "-").replace('/', "_")
                }
            };
            let msg = decode_b64(field(), &bad, 1024).unwrap_err().to_string();
            prop_assert!(
                msg.contains("plaintext") && msg.contains("not valid Base64"),
                "{:?}: {}",
                bad,
                msg
            );
        }
    }
}
