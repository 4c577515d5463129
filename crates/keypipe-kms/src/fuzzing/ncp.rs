//! The NCP KMS fuzz entry points: the actions of a service over sound
//! in-memory keys (made once), and the ciphertext and signature text form.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use keypipe_core::fuzzing::Input;
use keypipe_core::key::locked::LockedBytes;
use serde_json::{Value, json};

use crate::ncp::ciphertext;
use crate::ncp::{KeySource, NcpError, NcpService, generate_material};
use crate::store::{KeyType, KeyVersion, MasterKey};

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
