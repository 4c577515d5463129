//! The NCP KMS service, [`NcpService`]: one API call from action, key tag
//! and body to reply, each action's checks in the documented order, and
//! the key versions a request uses, each prepared once.

use std::fmt;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::NcpError;
use super::action::Action;
use super::budget::{self, Budget};
use super::ciphertext;
use super::crypto::{CryptoError, Engine};
use super::field::{
    Field, MAX_CIPHERTEXT_PAYLOAD, MAX_CONTEXT, MAX_PLAINTEXT, MAX_SIGN_DATA,
    MAX_SIGNATURE_PAYLOAD, decode_b64, encode_secret, map_items,
};
use super::reply::{NcpReply, success};
use super::request::{self, Text};
use super::source::KeySource;
use crate::entropy::Entropy;
use crate::json_escapes;
use crate::store::{KeyType, KeyVersion, MasterKey};

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

/// At most 64 characters of a client-supplied name, for messages.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
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

pub(super) fn prepare(
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
    /// Never panics; every failure is an error reply (see `docs/ncp-kms.md`).
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
