//! NCP KMS (NAVER Cloud KMS REST API 1.0), sans-IO: the service behind
//! `POST /keys/v1|v2/{keyTag}/{action}` after the gateway authenticated
//! the request. [`NcpService::handle`] takes the key tag, the action of the
//! URL path and the raw JSON body and returns the status and JSON body to
//! send ([`NcpReply`]). Master keys come from a [`KeySource`]; nothing here
//! touches sockets or the store.
//!
//! The wire contract is `shared/specs/README.md` §2; this page records the
//! details it leaves open, as implemented.
//!
//! # Answers
//!
//! Success: HTTP 200, `{"code":"SUCCESS","msg":"","data":{…}}`.
//! Failure: `{"code": CODE, "msg": MESSAGE}` ([`NcpError`]):
//!
//! | HTTP | code | when |
//! |---|---|---|
//! | 400 | `INVALID_REQUEST` | body not JSON or not an object; a required field missing or of the wrong type (the message names the field, e.g. ``field `plaintext[3]`: …``); bad Base64; a field over its limit; an array of more than 1000 items; a malformed ciphertext or signature text (prefix, version syntax, Base64, empty or oversize payload); a version that the key does not have; a ciphertext that is truncated or does not decrypt (corrupted, other key, other version, other context); an RSA plaintext over 190 bytes; `bits` not 128/256/512; `context` missing for a convergent key or given for a non-convergent one |
//! | 404 | `NOT_FOUND` | unknown action, unknown key tag |
//! | 422 | `INVALID_STATUS` | the key is disabled, or the version needed is disabled (the newest one for `encrypt`, `createCustomKey`, `reencrypt`, `sign`; the one of the prefix for `decrypt`, `reencrypt`, `verify`) |
//! | 422 | `UNPROCESSABLE_ENTITY` | the key type cannot do the action |
//! | 500 | `INTERNAL_SERVER_ERROR` | the key source failed, stored material is unusable, the OS random source failed; the message is always just "Server internal error" |
//!
//! Checks run in this order, the first failure answers: action (404) →
//! JSON shape: an object, required fields present, types right (400) →
//! key lookup (404/500) → key enabled (422) → key type (422) → `bits`,
//! `context` (400) → the version to encrypt or sign with, the newest
//! (422) → the items (`plaintext`, `ciphertext`, `data`, `signature`) in
//! array order, each: Base64 and size (400), prefix (400), its version
//! exists (400) and is enabled (422), decryption (400). A failing item
//! fails the whole request (no partial answers). Messages never echo
//! values from the body, plaintexts or key bytes; key tags and actions are
//! echoed, cut to 64 characters.
//!
//! # Fields
//!
//! Field names are case-sensitive; unknown fields are ignored; `null` is
//! the same as an absent optional field. Base64 is the standard alphabet
//! with canonical padding, no whitespace.
//!
//! - `plaintext`: Base64, ≤ 32 KiB decoded (empty allowed), or an array of
//!   them; `ciphertext`: text form, or an array of them. Arrays hold at most
//!   1000 items (an empty array gives an empty array) and are answered with
//!   an array in the same order; a single string with a single string.
//! - `context`: Base64, ≤ 50 bytes decoded. An empty string is the same as
//!   absent. Required (non-empty) by convergent keys, refused by the others
//!   (400 either way). Only `AES256` keys can be convergent; the flag is
//!   ignored on other types.
//! - `data` (`sign`, `verify`): Base64, ≤ 8 KiB decoded.
//! - `requestPlainKey`: boolean, default false. `bits`: number 128, 256
//!   (default) or 512.
//!
//! # Text form
//!
//! Ciphertexts and signatures are `ncpkms:v{n}:{Base64 payload}`
//! ([`ciphertext`]): `n` is the key version in decimal, ≥ 1, without leading
//! zeros, ≤ `u32::MAX`; the payload is standard padded Base64, not empty.
//! Ciphertext payloads are at most 32 KiB + 28 bytes, signature payloads
//! at most 512 bytes (longer is a 400).
//!
//! # Actions and cryptography
//!
//! Actions (exact, case-sensitive): `encrypt`, `decrypt`, `createCustomKey`,
//! `reencrypt` (also `re-encrypt`), `sign`, `verify`.
//!
//! - `AES256`, not convergent: AES-256-GCM, a fresh random 96-bit nonce per
//!   item (`getrandom`), no associated data; payload = nonce ‖ ct ‖ tag.
//! - `AES256`, convergent: AES-256-GCM-SIV with nonce = the first 12 bytes of
//!   HMAC-SHA256(version material, `"keypipe-ncp-convergent-v1"` ‖ context)
//!   and the context as associated data; payload = nonce ‖ ct ‖ tag. Equal
//!   context and plaintext give equal ciphertexts; another context gives
//!   another one, and decryption with the wrong context fails (400).
//!   Decryption uses the nonce of the payload.
//! - `RSA2048`: encrypt RSA-OAEP (SHA-256, MGF1-SHA-256, empty label),
//!   plaintext ≤ 190 bytes, payload = the 256-byte OAEP ciphertext; sign
//!   RSA-PSS (SHA-256, MGF1-SHA-256, salt 32 bytes), verify requires salt 32.
//! - `ECDSA`: P-256 with SHA-256 (deterministic, RFC 6979), signatures in
//!   ASN.1 DER.
//!
//! What each action needs:
//!
//! - `encrypt` (`AES256`, `RSA2048`): `plaintext`, `context`? →
//!   `data.ciphertext`, under the newest version.
//! - `decrypt` (`AES256`, `RSA2048`): `ciphertext`, `context`? →
//!   `data.plaintext` (Base64), each item under the version of its prefix
//!   (items of one array may use different versions).
//! - `createCustomKey` (`AES256` only): `requestPlainKey`?, `bits`?,
//!   `context`? → `data.ciphertext` (a fresh random data key of `bits`
//!   bits from `getrandom`, encrypted as by `encrypt`), `data.key_version`
//!   (the number of the version used), `data.plaintext` (Base64 of the
//!   data key) only when `requestPlainKey` is true.
//! - `reencrypt` / `re-encrypt` (`AES256`, `RSA2048`): `ciphertext`,
//!   `context`? → `data.ciphertext`: each item decrypted under its version
//!   and encrypted again under the newest (also when it already was).
//! - `sign` (`RSA2048`, `ECDSA`): `data` → `data.signature`, newest version.
//! - `verify` (`RSA2048`, `ECDSA`): `data`, `signature` → `data.valid`.
//!   The version of the signature's prefix must exist (400) and be enabled
//!   (422). A well-formed signature text whose bytes are not a valid
//!   signature of `data` (tampered data or signature, wrong length, not
//!   DER) is `valid: false` with 200.
//!
//! # Secrets
//!
//! Plaintexts, data keys and contexts are decoded into `Zeroizing` buffers;
//! the only escapes a body may hold, `\/` and `\uXXXX` of printable ASCII,
//! are resolved into a zeroizing copy before parsing and any other escape
//! is refused (400; [`crate::json_escapes`]), so serde never unescapes a
//! secret into its unwiped scratch buffer; strings are borrowed from the
//! (resolved) body. Success bodies are written into a
//! buffer sized in advance, so no partial copy of a secret is left behind
//! by reallocation; the body of a `decrypt` (or of a `createCustomKey` with
//! `requestPlainKey`) answer carries secrets, and the caller should zeroize
//! [`NcpReply::body`] once sent. No `Debug` output or error message of
//! this module shows plaintext or key bytes; `NcpReply`'s `Debug` shows the
//! length of success bodies only.
//!
//! # Cost
//!
//! One key schedule (AES) or key parse (RSA, ECDSA PKCS#8) per version used
//! by a request, shared by all its items; typed serde structs, no
//! `serde_json::Value`.

pub mod budget;
pub mod ciphertext;
mod crypto;
mod error;
mod request;

use std::fmt;
use std::sync::Arc;

use super::entropy::Entropy;
use super::json_escapes;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::store::{KeyType, KeyVersion, MasterKey};
use budget::Budget;
use crypto::{CryptoError, Engine, NONCE_LEN, TAG_LEN};
use request::Text;

pub use crypto::generate_material;
pub use error::NcpError;
#[cfg(test)]
use request::MAX_ITEMS;

/// Largest plaintext of one item, decoded (32 KiB).
pub(crate) const MAX_PLAINTEXT: usize = 32 * 1024;
/// Largest `context`, decoded.
pub(crate) const MAX_CONTEXT: usize = 50;
/// Largest `data` to sign or verify, decoded (8 KiB).
pub(crate) const MAX_SIGN_DATA: usize = 8 * 1024;
/// Largest ciphertext payload, decoded (an AES item of [`MAX_PLAINTEXT`]).
pub(crate) const MAX_CIPHERTEXT_PAYLOAD: usize = NONCE_LEN + MAX_PLAINTEXT + TAG_LEN;
/// Largest signature payload, decoded.
pub(crate) const MAX_SIGNATURE_PAYLOAD: usize = 512;

/// Where the service finds master keys (the server implements it over the
/// store, with a cache).
pub trait KeySource: Send + Sync {
    /// The key tagged `tag`, `None` when there is none. A failure should be
    /// [`NcpError::Internal`], or [`NcpError::Unavailable`] when the store
    /// cannot be reached now; its detail is not sent to the client.
    fn key(&self, tag: &str) -> Result<Option<Arc<MasterKey>>, NcpError>;

    /// Durably reserves up to `n` more AES-GCM encryptions of version
    /// `version` of `tag`, never taking its count past `limit`: how many
    /// were granted (0 at the limit) and the count after ([`budget`]).
    fn reserve_encryptions(
        &self,
        tag: &str,
        version: u32,
        n: u64,
        limit: u64,
    ) -> Result<(u64, u64), NcpError>;
}

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

/// What to answer: HTTP status and JSON body.
///
/// `Debug` shows the body of errors but only the length of success bodies
/// (a `decrypt` answer carries plaintext).
#[derive(Clone, PartialEq, Eq)]
pub struct NcpReply {
    /// HTTP status.
    pub status: u16,
    /// The JSON body to send (`application/json`).
    pub body: String,
}

impl fmt::Debug for NcpReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("NcpReply");
        d.field("status", &self.status);
        if self.status == 200 {
            d.field("body_len", &self.body.len());
        } else {
            d.field("body", &self.body);
        }
        d.finish()
    }
}

/// The NCP KMS service. Cheap to clone; thread-safe.
#[derive(Clone)]
pub struct NcpService {
    keys: Arc<dyn KeySource>,
    /// Randomness for new key material (data keys of createCustomKey).
    entropy: Arc<Entropy>,
    /// AES-GCM encryptions left per key version.
    budget: Arc<Budget>,
}

impl fmt::Debug for NcpService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NcpService").finish_non_exhaustive()
    }
}

/// The request field an item came from, for messages: `plaintext`,
/// `ciphertext[3]`.
#[derive(Clone, Copy)]
struct Field {
    name: &'static str,
    index: Option<usize>,
}

impl Field {
    fn new(name: &'static str) -> Self {
        Field { name, index: None }
    }

    fn item(name: &'static str, many: bool, index: usize) -> Self {
        Field {
            name,
            index: many.then_some(index),
        }
    }

    fn invalid(self, what: impl fmt::Display) -> NcpError {
        NcpError::InvalidRequest(format!("field `{self}`: {what}"))
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "{}[{i}]", self.name),
            None => f.write_str(self.name),
        }
    }
}

/// At most 64 characters of a client-supplied name, for messages.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Decodes a Base64 field of at most `max` bytes into a zeroizing buffer.
fn decode_b64(field: Field, text: &str, max: usize) -> Result<Zeroizing<Vec<u8>>, NcpError> {
    let too_large = || field.invalid(format_args!("larger than {max} bytes"));
    if text.len() > ciphertext::max_encoded_len(max) {
        return Err(too_large());
    }
    // Room for the decoder's estimate, so the buffer never reallocates.
    let mut out = Zeroizing::new(Vec::with_capacity(text.len() / 4 * 3 + 3));
    STANDARD
        .decode_vec(text, &mut out)
        .map_err(|_| field.invalid("not valid Base64"))?;
    if out.len() > max {
        return Err(too_large());
    }
    Ok(out)
}

/// A result text whose length sizes the reply buffer.
trait TextLen {
    fn text_len(&self) -> usize;
}

impl TextLen for String {
    fn text_len(&self) -> usize {
        self.len()
    }
}

impl TextLen for Zeroizing<String> {
    fn text_len(&self) -> usize {
        self.len()
    }
}

/// Applies `f` to every item of a one-or-array field `name`, in order,
/// keeping its shape; also the results' total length (plus JSON quoting).
fn map_items<S, T: TextLen>(
    name: &'static str,
    items: &request::OneOrMany<S>,
    mut f: impl FnMut(Field, &S) -> Result<T, NcpError>,
) -> Result<(request::OneOrMany<T>, usize), NcpError> {
    let many = items.is_many();
    let slice = items.as_slice();
    let mut out = Vec::with_capacity(slice.len());
    let mut len = 0;
    for (i, item) in slice.iter().enumerate() {
        let result = f(Field::item(name, many, i), item)?;
        len += result.text_len() + 3;
        out.push(result);
    }
    Ok((items.reshape(out), len))
}

/// Base64 of a secret, in a zeroizing string.
fn encode_secret(bytes: &[u8]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(ciphertext::max_encoded_len(
        bytes.len(),
    )));
    STANDARD.encode_string(bytes, &mut out);
    out
}

/// A cryptographic failure as the client sees it.
fn crypto_error(e: CryptoError, field: Field) -> NcpError {
    match e {
        CryptoError::BadMaterial => NcpError::Internal("stored key material is unusable".into()),
        CryptoError::Random => NcpError::Internal("OS random source failed".into()),
        CryptoError::Failed => NcpError::Internal("cryptographic operation failed".into()),
        CryptoError::Unsupported => {
            NcpError::Unprocessable("the key type cannot do this operation".into())
        }
        CryptoError::TooLong => field.invalid("too long for this key"),
        CryptoError::Truncated => field.invalid("ciphertext is truncated"),
        CryptoError::Undecryptable => field
            .invalid("ciphertext does not decrypt (corrupted, or another key, version or context)"),
    }
}

/// The success reply for `data`; `strings_len` bounds the length of the
/// strings in `data`, so that the body buffer never reallocates.
fn success<D: Serialize>(data: D, strings_len: usize) -> Result<NcpReply, NcpError> {
    let mut buf = Vec::with_capacity(strings_len.saturating_add(128));
    serde_json::to_writer(
        &mut buf,
        &request::Success {
            code: "SUCCESS",
            msg: "",
            data,
        },
    )
    .map_err(|_| NcpError::Internal("cannot serialize the answer".into()))?;
    let body =
        String::from_utf8(buf).map_err(|_| NcpError::Internal("answer is not UTF-8".into()))?;
    Ok(NcpReply { status: 200, body })
}

/// The key versions one request uses, each prepared once.
struct Engines<'k> {
    key: &'k MasterKey,
    context: Option<&'k [u8]>,
    prepared: Vec<(u32, Engine)>,
}

impl<'k> Engines<'k> {
    fn new(key: &'k MasterKey, context: Option<&'k [u8]>) -> Self {
        Engines {
            key,
            context,
            prepared: Vec::new(),
        }
    }

    /// The engine of version `number`, which must exist (400) and be
    /// enabled (422).
    fn get(&mut self, field: Field, number: u32) -> Result<&Engine, NcpError> {
        let at = match self.prepared.iter().position(|(n, _)| *n == number) {
            Some(at) => at,
            None => {
                let version = version(self.key, field, number)?;
                let engine = prepare(self.key, version, self.context)?;
                self.prepared.push((number, engine));
                self.prepared.len() - 1
            }
        };
        Ok(&self.prepared[at].1)
    }
}

/// Version `number` of `key`: 400 when it does not exist, 422 when disabled.
fn version(key: &MasterKey, field: Field, number: u32) -> Result<&KeyVersion, NcpError> {
    let version = key
        .versions
        .iter()
        .find(|v| v.version == number)
        .ok_or_else(|| field.invalid(format_args!("unknown key version v{number}")))?;
    if !version.enabled {
        return Err(NcpError::InvalidStatus(format!(
            "key version v{number} is disabled"
        )));
    }
    Ok(version)
}

/// The newest version of `key`, which must be enabled (422).
fn newest(key: &MasterKey) -> Result<&KeyVersion, NcpError> {
    let version = key
        .versions
        .iter()
        .max_by_key(|v| v.version)
        .ok_or_else(|| NcpError::InvalidStatus("key has no version".into()))?;
    if !version.enabled {
        return Err(NcpError::InvalidStatus(format!(
            "newest key version v{} is disabled",
            version.version
        )));
    }
    Ok(version)
}

fn prepare(
    key: &MasterKey,
    version: &KeyVersion,
    context: Option<&[u8]>,
) -> Result<Engine, NcpError> {
    Engine::new(&key.key_type, key.convergent, &version.material, context)
        .map_err(|e| crypto_error(e, Field::new("key")))
}

/// Applies the `context` rules of `key`: required by convergent keys,
/// refused by the others; an empty string counts as absent.
fn context(
    key: &MasterKey,
    text: Option<&Text<'_>>,
) -> Result<Option<Zeroizing<Vec<u8>>>, NcpError> {
    let field = Field::new("context");
    let given = text.map(Text::as_str).filter(|s| !s.is_empty());
    let convergent = key.convergent && matches!(key.key_type, KeyType::Aes256);
    match (convergent, given) {
        (true, Some(text)) => decode_b64(field, text, MAX_CONTEXT).map(Some),
        (true, None) => Err(field.invalid("required by a convergent key")),
        (false, Some(_)) => Err(field.invalid("only accepted by convergent keys")),
        (false, None) => Ok(None),
    }
}

/// Encrypts one plaintext into its text form under `version`.
fn seal(engine: &Engine, version: u32, field: Field, plaintext: &[u8]) -> Result<String, NcpError> {
    if let Some(max) = engine.max_plaintext()
        && plaintext.len() > max
    {
        return Err(field.invalid(format_args!("RSA2048 keys encrypt at most {max} bytes")));
    }
    let payload = engine
        .encrypt(plaintext)
        .map_err(|e| crypto_error(e, field))?;
    Ok(ciphertext::format(version, &payload))
}

/// Decrypts one ciphertext text with the version of its prefix.
fn open(
    engines: &mut Engines<'_>,
    field: Field,
    text: &str,
) -> Result<Zeroizing<Vec<u8>>, NcpError> {
    let parsed = ciphertext::parse(text, MAX_CIPHERTEXT_PAYLOAD).map_err(|e| field.invalid(e))?;
    engines
        .get(field, parsed.version)?
        .decrypt(&parsed.payload)
        .map_err(|e| crypto_error(e, field))
}

impl NcpService {
    /// A service over `keys`.
    pub fn new(keys: Arc<dyn KeySource>) -> Self {
        NcpService {
            keys,
            entropy: Arc::new(Entropy::os_only()),
            budget: Arc::new(Budget::new(budget::GCM_LIMIT)),
        }
    }

    /// The same service with `limit` AES-GCM encryptions per key version
    /// instead of [`budget::GCM_LIMIT`] (tests of the limit).
    pub fn with_encryption_limit(mut self, limit: u64) -> Self {
        self.budget = Arc::new(Budget::new(limit));
        self
    }

    /// Whether `action` on `key` needs no store access beyond `key` itself:
    /// false when it encrypts under an AES-GCM version whose encryptions
    /// are not reserved yet (for a full array of items), so the caller
    /// runs it where the store may be written (the pool, not an event
    /// loop).
    pub fn serves_from_memory(&self, key: &MasterKey, action: &str) -> bool {
        let seals = matches!(
            Action::parse(action),
            Some(Action::Encrypt | Action::Reencrypt | Action::CreateCustomKey)
        );
        if !seals || key.key_type != KeyType::Aes256 || key.convergent {
            return true;
        }
        // A fresh reservation must leave the loops room to serve from.
        const _: () = assert!(budget::BLOCK > request::MAX_ITEMS as u64 * budget::LOOP_MARGIN);
        // Room for LOOP_MARGIN whole requests: event loops that passed
        // this check together each take at most MAX_ITEMS, so none of
        // them has to reserve (a store write) on its loop.
        newest(key).map_or(true, |v| {
            self.budget.reserved(
                &key.tag,
                v.version,
                (request::MAX_ITEMS as u64) * budget::LOOP_MARGIN,
            )
        })
    }

    /// An engine that encrypts `items` items under `version` of `key`,
    /// counted against the version's AES-GCM budget.
    fn sealer(
        &self,
        key: &MasterKey,
        version: &KeyVersion,
        context: Option<&[u8]>,
        items: usize,
    ) -> Result<Engine, NcpError> {
        let engine = prepare(key, version, context)?;
        if engine.random_nonces() {
            self.budget
                .take(&*self.keys, &key.tag, version.version, items as u64)?;
        }
        Ok(engine)
    }

    /// The same service drawing new key material from `entropy` (the OS
    /// generator mixed with the node's QKD key; see `kms::entropy`).
    pub fn with_entropy(mut self, entropy: Arc<Entropy>) -> Self {
        self.entropy = entropy;
        self
    }

    /// One API call: `action` as in the URL path; `body` the raw JSON body.
    /// Never panics; every failure is an error reply (see the module docs).
    pub fn handle(&self, key_tag: &str, action: &str, body: &[u8]) -> NcpReply {
        let result = match Action::parse(action) {
            Some(action) => self.handle_action(key_tag, action, body),
            None => Err(NcpError::NotFound(format!(
                "unknown action `{}`",
                clip(action)
            ))),
        };
        result.unwrap_or_else(|e| {
            if let NcpError::Internal(detail) | NcpError::Unavailable(detail) = &e {
                tracing::warn!(status = e.status(), "NCP {action}: {detail}");
            }
            e.to_reply()
        })
    }

    /// As [`NcpService::handle`] for a parsed action, with the error (and
    /// its internal detail, for logs) on failure.
    pub fn handle_action(
        &self,
        key_tag: &str,
        action: Action,
        body: &[u8],
    ) -> Result<NcpReply, NcpError> {
        let resolved =
            json_escapes::resolve(body).map_err(|e| NcpError::InvalidRequest(e.to_string()))?;
        let body = resolved.as_ref().map_or(body, |b| b.as_slice());
        match action {
            Action::Encrypt => self.encrypt(key_tag, body),
            Action::Decrypt => self.decrypt(key_tag, body),
            Action::CreateCustomKey => self.create_custom_key(key_tag, body),
            Action::Reencrypt => self.reencrypt(key_tag, body),
            Action::Sign => self.sign(key_tag, body),
            Action::Verify => self.verify(key_tag, body),
        }
    }

    /// The enabled key `tag` able to do `action`.
    fn key(&self, tag: &str, action: Action) -> Result<Arc<MasterKey>, NcpError> {
        let key = self
            .keys
            .key(tag)?
            .ok_or_else(|| NcpError::NotFound(format!("no key `{}`", clip(tag))))?;
        if !key.enabled {
            return Err(NcpError::InvalidStatus(format!(
                "key `{}` is disabled",
                clip(tag)
            )));
        }
        if !action.supported_by(&key.key_type) {
            return Err(NcpError::Unprocessable(format!(
                "a {} key cannot {action}",
                key.key_type.as_str()
            )));
        }
        Ok(key)
    }

    fn encrypt(&self, tag: &str, body: &[u8]) -> Result<NcpReply, NcpError> {
        let req: request::EncryptRequest = request::parse(body)?;
        let key = self.key(tag, Action::Encrypt)?;
        let context = context(&key, req.context.as_ref())?;
        let ctx = context.as_ref().map(|c| c.as_slice());
        let version = newest(&key)?;
        let engine = self.sealer(&key, version, ctx, req.plaintext.as_slice().len())?;
        let (ciphertext, len) = map_items("plaintext", &req.plaintext, |field, text| {
            let plaintext = decode_b64(field, text.as_str(), MAX_PLAINTEXT)?;
            seal(&engine, version.version, field, &plaintext)
        })?;
        success(request::CiphertextData { ciphertext }, len)
    }

    fn decrypt(&self, tag: &str, body: &[u8]) -> Result<NcpReply, NcpError> {
        let req: request::CiphertextRequest = request::parse(body)?;
        let key = self.key(tag, Action::Decrypt)?;
        let context = context(&key, req.context.as_ref())?;
        let ctx = context.as_ref().map(|c| c.as_slice());
        let mut engines = Engines::new(&key, ctx);
        let (plaintext, len) = map_items("ciphertext", &req.ciphertext, |field, text| {
            Ok(encode_secret(&open(&mut engines, field, text.as_str())?))
        })?;
        success(request::PlaintextData { plaintext }, len)
    }

    fn create_custom_key(&self, tag: &str, body: &[u8]) -> Result<NcpReply, NcpError> {
        let req: request::CreateCustomKeyRequest = request::parse(body)?;
        let key = self.key(tag, Action::CreateCustomKey)?;
        let bits = req.bits.unwrap_or(256);
        if !matches!(bits, 128 | 256 | 512) {
            return Err(Field::new("bits").invalid("must be 128, 256 or 512"));
        }
        let context = context(&key, req.context.as_ref())?;
        let ctx = context.as_ref().map(|c| c.as_slice());
        let version = newest(&key)?;
        let engine = self.sealer(&key, version, ctx, 1)?;
        let mut data_key = Zeroizing::new(vec![0u8; bits as usize / 8]);
        self.entropy
            .fill(&mut data_key)
            .map_err(|_| NcpError::Internal("OS random source failed".into()))?;
        let ciphertext = seal(&engine, version.version, Field::new("key"), &data_key)?;
        let plaintext = req
            .request_plain_key
            .unwrap_or(false)
            .then(|| encode_secret(&data_key));
        let len = ciphertext.len() + plaintext.as_ref().map_or(0, |p| p.len());
        success(
            request::CustomKeyData {
                ciphertext,
                key_version: version.version,
                plaintext,
            },
            len,
        )
    }

    fn reencrypt(&self, tag: &str, body: &[u8]) -> Result<NcpReply, NcpError> {
        let req: request::CiphertextRequest = request::parse(body)?;
        let key = self.key(tag, Action::Reencrypt)?;
        let context = context(&key, req.context.as_ref())?;
        let ctx = context.as_ref().map(|c| c.as_slice());
        let target = newest(&key)?;
        let sealer = self.sealer(&key, target, ctx, req.ciphertext.as_slice().len())?;
        let mut engines = Engines::new(&key, ctx);
        let (ciphertext, len) = map_items("ciphertext", &req.ciphertext, |field, text| {
            let plaintext = open(&mut engines, field, text.as_str())?;
            seal(&sealer, target.version, field, &plaintext)
        })?;
        success(request::CiphertextData { ciphertext }, len)
    }

    fn sign(&self, tag: &str, body: &[u8]) -> Result<NcpReply, NcpError> {
        let req: request::SignRequest = request::parse(body)?;
        let key = self.key(tag, Action::Sign)?;
        let version = newest(&key)?;
        let data = decode_b64(Field::new("data"), req.data.as_str(), MAX_SIGN_DATA)?;
        let engine = prepare(&key, version, None)?;
        let signature = engine
            .sign(&data)
            .map_err(|e| crypto_error(e, Field::new("data")))?;
        let signature = ciphertext::format(version.version, &signature);
        let len = signature.len();
        success(request::SignatureData { signature }, len)
    }

    fn verify(&self, tag: &str, body: &[u8]) -> Result<NcpReply, NcpError> {
        let req: request::VerifyRequest = request::parse(body)?;
        let key = self.key(tag, Action::Verify)?;
        let data = decode_b64(Field::new("data"), req.data.as_str(), MAX_SIGN_DATA)?;
        let field = Field::new("signature");
        let signature = ciphertext::parse(req.signature.as_str(), MAX_SIGNATURE_PAYLOAD)
            .map_err(|e| field.invalid(e))?;
        let version = version(&key, field, signature.version)?;
        let engine = prepare(&key, version, None)?;
        let valid = engine
            .verify(&data, &signature.payload)
            .map_err(|e| crypto_error(e, field))?;
        success(request::VerifyData { valid }, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keypipe_core::key::locked::LockedBytes;
    use std::collections::HashMap;
    use std::sync::{OnceLock, RwLock};

    use serde_json::{Value, json};

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
                material: LockedBytes::secret(&material(key_type, i as u8 + tag.len() as u8))
                    .unwrap(),
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
        fn fail_raw(
            &self,
            tag: &str,
            action: &str,
            body: &[u8],
            status: u16,
            code: &str,
        ) -> String {
            let (s, v) = self.raw(tag, action, body);
            assert_eq!(
                (s, v["code"].as_str().unwrap()),
                (status, code),
                "{tag}/{action}: {v}"
            );
            assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
            v["msg"].as_str().unwrap().to_owned()
        }

        fn fail(&self, tag: &str, action: &str, body: Value, status: u16, code: &str) -> String {
            self.fail_raw(tag, action, body.to_string().as_bytes(), status, code)
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

    /// F14: `\/` (PHP) and `\u002B` (.NET) in secret fields are resolved
    /// in a zeroizing copy and give the same result as the plain body; any
    /// escape that would send a secret through serde's unwiped scratch
    /// buffer is refused.
    #[test]
    fn escaped_secret_fields_are_resolved_or_refused() {
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
        for bad in [
            r#"{"plaintext":"YW\"Jj"}"#,
            r#"{"plaintext":"YWJj\n"}"#,
            r#"{"plaintext":"\u0000"}"#,
        ] {
            let msg = f.fail_raw("aes", "encrypt", bad.as_bytes(), 400, "INVALID_REQUEST");
            assert!(msg.contains("JSON escapes"), "{msg}");
        }
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
        // Errors name the item.
        let msg = f.fail(
            "aes",
            "encrypt",
            json!({ "plaintext": [b64(b"a"), "!!"] }),
            400,
            "INVALID_REQUEST",
        );
        assert!(
            msg.contains("plaintext[1]") && msg.contains("Base64"),
            "{msg}"
        );
        // At most 1000 items.
        let many = vec![b64(b"a"); MAX_ITEMS + 1];
        let msg = f.fail(
            "aes",
            "encrypt",
            json!({ "plaintext": many }),
            400,
            "INVALID_REQUEST",
        );
        assert!(msg.contains("plaintext") && msg.contains("1000"), "{msg}");
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
        let msg = f.fail(
            "rsa",
            "encrypt",
            json!({ "plaintext": b64(&[0u8; 191]) }),
            400,
            "INVALID_REQUEST",
        );
        assert!(msg.contains("190") && msg.contains("plaintext"), "{msg}");
        // Arrays, reencrypt, and a truncated RSA ciphertext.
        let d = f.ok(
            "rsa",
            "encrypt",
            json!({ "plaintext": [b64(b"a"), b64(b"b")] }),
        );
        let d = f.ok("rsa", "reencrypt", json!({ "ciphertext": d["ciphertext"] }));
        let d = f.ok("rsa", "decrypt", json!({ "ciphertext": d["ciphertext"] }));
        assert_eq!(d["plaintext"], json!([b64(b"a"), b64(b"b")]));
        let short = ciphertext::format(2, &payload[..255]);
        let msg = f.fail(
            "rsa",
            "decrypt",
            json!({ "ciphertext": short }),
            400,
            "INVALID_REQUEST",
        );
        assert!(msg.contains("ciphertext"), "{msg}");
        let mut bad = payload.clone();
        bad[100] ^= 1;
        let msg = f.fail(
            "rsa",
            "decrypt",
            json!({ "ciphertext": ciphertext::format(2, &bad) }),
            400,
            "INVALID_REQUEST",
        );
        assert!(msg.contains("does not decrypt"), "{msg}");
        // Ciphertext of v2 presented as v1: does not decrypt.
        let msg = f.fail(
            "rsa",
            "decrypt",
            json!({ "ciphertext": ciphertext::format(1, &payload) }),
            400,
            "INVALID_REQUEST",
        );
        assert!(msg.contains("does not decrypt"), "{msg}");
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
        f.fail("conv", "createCustomKey", json!({}), 400, "INVALID_REQUEST");
        for bits in [0, 100, 192, 1024] {
            let msg = f.fail(
                "aes",
                "createCustomKey",
                json!({ "bits": bits }),
                400,
                "INVALID_REQUEST",
            );
            assert!(msg.contains("bits"), "{msg}");
        }
        let msg = f.fail(
            "aes",
            "createCustomKey",
            json!({ "bits": "256" }),
            400,
            "INVALID_REQUEST",
        );
        assert!(msg.contains("bits"), "{msg}");
        let msg = f.fail(
            "aes",
            "createCustomKey",
            json!({ "requestPlainKey": "yes" }),
            400,
            "INVALID_REQUEST",
        );
        assert!(msg.contains("requestPlainKey"), "{msg}");
        f.fail(
            "rsa",
            "createCustomKey",
            json!({}),
            422,
            "UNPROCESSABLE_ENTITY",
        );
        f.fail(
            "ec",
            "createCustomKey",
            json!({}),
            422,
            "UNPROCESSABLE_ENTITY",
        );
        f.fail(
            "new-off",
            "createCustomKey",
            json!({}),
            422,
            "INVALID_STATUS",
        );
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
        f.fail(
            "rot",
            "decrypt",
            json!({ "ciphertext": ct }),
            422,
            "INVALID_STATUS",
        );
        f.fail(
            "rot",
            "reencrypt",
            json!({ "ciphertext": ct }),
            422,
            "INVALID_STATUS",
        );
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
        let any = json!({ "plaintext": b64(b"x"), "ciphertext": "ncpkms:v1:AAAA", "data": b64(b"x"), "signature": "ncpkms:v1:AAAA" });
        for action in ["encrypt", "decrypt", "createCustomKey", "reencrypt"] {
            f.fail("off", action, any.clone(), 422, "INVALID_STATUS");
        }
        for action in ["sign", "verify"] {
            f.fail("ec-off", action, any.clone(), 422, "INVALID_STATUS");
        }
        // Newest version disabled: no encryption or signing.
        f.fail(
            "new-off",
            "encrypt",
            json!({ "plaintext": b64(b"x") }),
            422,
            "INVALID_STATUS",
        );
        f.fail(
            "ec-new-off",
            "sign",
            json!({ "data": b64(b"x") }),
            422,
            "INVALID_STATUS",
        );
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
        // Wrong or missing context.
        let msg = f.fail(
            "conv",
            "decrypt",
            json!({ "ciphertext": a, "context": b64(b"ctx-2") }),
            400,
            "INVALID_REQUEST",
        );
        assert!(msg.contains("does not decrypt"), "{msg}");
        for body in [
            json!({ "plaintext": b64(b"x") }),
            json!({ "plaintext": b64(b"x"), "context": "" }),
            json!({ "plaintext": b64(b"x"), "context": null }),
        ] {
            let msg = f.fail("conv", "encrypt", body, 400, "INVALID_REQUEST");
            assert!(msg.contains("context"), "{msg}");
        }
        f.fail(
            "conv",
            "decrypt",
            json!({ "ciphertext": a }),
            400,
            "INVALID_REQUEST",
        );
        // Context for a non-convergent key (empty counts as absent).
        let msg = f.fail(
            "aes",
            "encrypt",
            json!({ "plaintext": b64(b"x"), "context": b64(b"c") }),
            400,
            "INVALID_REQUEST",
        );
        assert!(msg.contains("context"), "{msg}");
        f.fail(
            "rsa",
            "encrypt",
            json!({ "plaintext": b64(b"x"), "context": b64(b"c") }),
            400,
            "INVALID_REQUEST",
        );
        f.ok(
            "aes",
            "encrypt",
            json!({ "plaintext": b64(b"x"), "context": "" }),
        );
        // Context limits: 50 bytes ok, 51 refused; bad Base64 refused.
        enc(b"x", &[1u8; 50]);
        let msg = f.fail(
            "conv",
            "encrypt",
            json!({ "plaintext": b64(b"x"), "context": b64(&[1u8; 51]) }),
            400,
            "INVALID_REQUEST",
        );
        assert!(msg.contains("context") && msg.contains("50"), "{msg}");
        f.fail(
            "conv",
            "encrypt",
            json!({ "plaintext": b64(b"x"), "context": "%%" }),
            400,
            "INVALID_REQUEST",
        );
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
            // Malformed texts are 400.
            for bad in [
                "",
                "foo:v2:AAAA",
                "ncpkms:x2:AAAA",
                "ncpkms:v0:AAAA",
                "ncpkms:v02:AAAA",
                "ncpkms:v2:A!==",
                "ncpkms:v2:",
            ] {
                let msg = f.fail(
                    tag,
                    "verify",
                    json!({ "data": data, "signature": bad }),
                    400,
                    "INVALID_REQUEST",
                );
                assert!(msg.contains("signature"), "{msg}");
            }
            let msg = f.fail(
                tag,
                "verify",
                json!({ "data": data, "signature": ciphertext::format(9, &payload) }),
                400,
                "INVALID_REQUEST",
            );
            assert!(msg.contains("v9"), "{msg}");
            f.fail(
                tag,
                "verify",
                json!({ "data": data, "signature": ciphertext::format(2, &[0; 513]) }),
                400,
                "INVALID_REQUEST",
            );
            // data limits.
            f.ok(tag, "sign", json!({ "data": b64(&[5u8; MAX_SIGN_DATA]) }));
            let msg = f.fail(
                tag,
                "sign",
                json!({ "data": b64(&[5u8; MAX_SIGN_DATA + 1]) }),
                400,
                "INVALID_REQUEST",
            );
            assert!(msg.contains("data") && msg.contains("8192"), "{msg}");
            f.fail(
                tag,
                "verify",
                json!({ "data": b64(&[5u8; MAX_SIGN_DATA + 1]), "signature": sig }),
                400,
                "INVALID_REQUEST",
            );
            f.fail(
                tag,
                "sign",
                json!({ "data": "a b" }),
                400,
                "INVALID_REQUEST",
            );
            f.fail(tag, "sign", json!({}), 400, "INVALID_REQUEST");
            f.fail(
                tag,
                "verify",
                json!({ "data": data }),
                400,
                "INVALID_REQUEST",
            );
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
            ciphertext::format(3, &corrupted),
            ciphertext::format(3, &bad_tag),
            ciphertext::format(3, &payload[..payload.len() - 1]),
            ciphertext::format(3, &payload[..20]),
            ciphertext::format(3, &payload[..1]),
            ct[..ct.len() - 4].to_owned(),
            ct[..ct.len() - 1].to_owned(),
            format!("ncpkms:x1:{b64_part}"),
            format!("foo:v1:{b64_part}"),
            format!("ncpkms:v9:{b64_part}"),
            format!("ncpkms:v0:{b64_part}"),
            format!("ncpkms:v01:{b64_part}"),
            format!("ncpkms:v03:{b64_part}"),
            format!("ncpkms:v3:{b64_part}!"),
            format!("ncpkms:v3: {b64_part}"),
            "ncpkms:v3:".to_owned(),
            "ncpkms:v3".to_owned(),
            String::new(),
            "plain text".to_owned(),
            ciphertext::format(3, &[0u8; MAX_CIPHERTEXT_PAYLOAD + 1]),
        ];
        for (i, bad) in cases.iter().enumerate() {
            for action in ["decrypt", "reencrypt"] {
                let msg = f.fail(
                    "aes",
                    action,
                    json!({ "ciphertext": bad }),
                    400,
                    "INVALID_REQUEST",
                );
                assert!(msg.contains("ciphertext"), "case {i}: {msg}");
            }
            let msg = f.fail(
                "aes",
                "decrypt",
                json!({ "ciphertext": [ct.clone(), bad] }),
                400,
                "INVALID_REQUEST",
            );
            assert!(msg.contains("ciphertext[1]"), "case {i}: {msg}");
        }
        let msg = f.fail(
            "aes",
            "decrypt",
            json!({ "ciphertext": format!("ncpkms:v9:{b64_part}") }),
            400,
            "INVALID_REQUEST",
        );
        assert!(msg.contains("unknown key version v9"), "{msg}");
        // A ciphertext of another key does not decrypt.
        let other = f.encrypt("aes1", b"x");
        let payload = ciphertext::parse(&other, MAX_CIPHERTEXT_PAYLOAD)
            .unwrap()
            .payload;
        f.fail(
            "aes",
            "decrypt",
            json!({ "ciphertext": ciphertext::format(1, &payload) }),
            400,
            "INVALID_REQUEST",
        );
    }

    #[test]
    fn oversize_and_bad_base64_fields() {
        let f = fixture();
        f.encrypt("aes1", &vec![1u8; MAX_PLAINTEXT]);
        let msg = f.fail(
            "aes1",
            "encrypt",
            json!({ "plaintext": b64(&vec![1u8; MAX_PLAINTEXT + 1]) }),
            400,
            "INVALID_REQUEST",
        );
        assert!(msg.contains("plaintext") && msg.contains("32768"), "{msg}");
        // Far larger text is refused before decoding.
        let msg = f.fail(
            "aes1",
            "encrypt",
            json!({ "plaintext": "A".repeat(100_000) }),
            400,
            "INVALID_REQUEST",
        );
        assert!(msg.contains("plaintext"), "{msg}");
        // Largest plaintext round-trips (largest ciphertext accepted).
        let ct = f.encrypt("aes1", &vec![2u8; MAX_PLAINTEXT]);
        assert_eq!(f.decrypt("aes1", &ct).len(), MAX_PLAINTEXT);
        for bad in ["YWJ", "YW==", "Y", "YWJj\n", "YW Jj", "YW-_", "é"] {
            let msg = f.fail(
                "aes1",
                "encrypt",
                json!({ "plaintext": bad }),
                400,
                "INVALID_REQUEST",
            );
            // A newline travels as a JSON escape, refused as such (F14).
            let expected = if bad.contains('\n') {
                msg.contains("JSON escapes")
            } else {
                msg.contains("plaintext") && msg.contains("Base64")
            };
            assert!(expected, "{bad:?}: {msg}");
        }
        // Escaped JSON strings are fine.
        let (status, _) = f.raw("aes1", "encrypt", br#"{"plaintext":"YW\/j"}"#);
        assert_eq!(status, 200);
    }

    #[test]
    fn unknown_tag_action_and_wrong_type() {
        let f = fixture();
        let body = json!({ "plaintext": b64(b"x") });
        let msg = f.fail("nope", "encrypt", body.clone(), 404, "NOT_FOUND");
        assert!(msg.contains("nope"), "{msg}");
        f.fail("", "encrypt", body.clone(), 404, "NOT_FOUND");
        for action in [
            "",
            "Encrypt",
            "encrypt/",
            "delete",
            "re_encrypt",
            "createcustomkey",
        ] {
            f.fail("aes", action, body.clone(), 404, "NOT_FOUND");
        }
        // A long tag is echoed cut.
        let long = "t".repeat(1000);
        let msg = f.fail(&long, "encrypt", body.clone(), 404, "NOT_FOUND");
        assert!(msg.len() < 200, "{msg}");
        // Wrong key type for the action.
        let cases = [
            ("ec", "encrypt", json!({ "plaintext": b64(b"x") })),
            ("ec", "decrypt", json!({ "ciphertext": "ncpkms:v1:AAAA" })),
            ("ec", "reencrypt", json!({ "ciphertext": "ncpkms:v1:AAAA" })),
            ("ec", "createCustomKey", json!({})),
            ("rsa", "createCustomKey", json!({})),
            ("aes", "sign", json!({ "data": b64(b"x") })),
            (
                "aes",
                "verify",
                json!({ "data": b64(b"x"), "signature": "ncpkms:v1:AAAA" }),
            ),
            ("conv", "sign", json!({ "data": b64(b"x") })),
        ];
        for (tag, action, body) in cases {
            let msg = f.fail(tag, action, body, 422, "UNPROCESSABLE_ENTITY");
            assert!(msg.contains("cannot"), "{msg}");
        }
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

    #[test]
    fn bad_bodies_name_the_problem() {
        let f = fixture();
        for action in [
            "encrypt",
            "decrypt",
            "createCustomKey",
            "reencrypt",
            "sign",
            "verify",
        ] {
            for body in [
                &b""[..],
                b"not json",
                b"{",
                b"[]",
                b"\"x\"",
                b"null",
                b"{} {}",
                b"\xff\xfe",
            ] {
                let msg = f.fail_raw("aes", action, body, 400, "INVALID_REQUEST");
                assert!(!msg.is_empty());
            }
        }
        let cases = [
            ("encrypt", json!({}), "plaintext"),
            ("encrypt", json!({ "plaintext": 1 }), "plaintext"),
            ("encrypt", json!({ "plaintext": {"a": 1} }), "plaintext"),
            ("encrypt", json!({ "plaintext": [1] }), "plaintext[0]"),
            (
                "encrypt",
                json!({ "plaintext": "YQ==", "context": 5 }),
                "context",
            ),
            ("decrypt", json!({ "plaintext": "YQ==" }), "ciphertext"),
            ("decrypt", json!({ "ciphertext": null }), "ciphertext"),
            ("reencrypt", json!({ "ciphertext": true }), "ciphertext"),
            ("createCustomKey", json!({ "bits": -1 }), "bits"),
            ("createCustomKey", json!({ "bits": 256.5 }), "bits"),
            ("sign", json!({ "data": 1 }), "data"),
            ("verify", json!({ "signature": "ncpkms:v1:AAAA" }), "data"),
            (
                "verify",
                json!({ "data": "YQ==", "signature": [] }),
                "signature",
            ),
        ];
        for (action, body, field) in cases {
            let tag = if matches!(action, "sign" | "verify") {
                "ec"
            } else {
                "aes"
            };
            let msg = f.fail(tag, action, body, 400, "INVALID_REQUEST");
            assert!(msg.contains(field), "{action}: {msg}");
        }
        // JSON shape is checked before the key: bad body on an unknown key is 400.
        f.fail_raw("nope", "encrypt", b"{", 400, "INVALID_REQUEST");
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

    /// `cargo test --release --lib kms::ncp::tests::encrypt_throughput -- --ignored --nocapture`
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
}
