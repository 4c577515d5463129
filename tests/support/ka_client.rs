//! An independent client of the key-agreement profile (`POST /rest/key-agreement`,
//! docs/key-agreement.md), for integration tests.
//!
//! Deliberately shares no code with the server: no `keypipe_server::` import, and other
//! crypto crates (`ring` for ECDH/HKDF/HMAC/AES-GCM, `num-bigint` for the
//! finite-field groups, a small DER writer/reader of its own for
//! SubjectPublicKeyInfo).
//!
//! Profile:
//! - `okm = HKDF-SHA256(salt = nonce, ikm = Z, info = "key-agreement/v1" ‖ scheme ‖
//!   lp(id_C) ‖ lp(id_S) ‖ lp(pub_C) ‖ lp(pub_S))`, `k_enc ‖ k_mac = okm`
//!   (`pub_*` are the Base64-decoded `public_key` fields, as on the wire);
//! - `proof = HMAC-SHA256(k_mac, "KC_1_V" ‖ id_S ‖ id_C ‖ pub_S ‖ pub_C ‖ nonce)`;
//! - login fields: `Base64(iv12 ‖ AES-GCM(k_enc, plaintext, aad = client_reference_id))`.
#![allow(dead_code)]

use std::fmt;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use num_bigint::BigUint;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{aead, agreement, hkdf, hmac};
use serde_json::{Value, json};

/// The HKDF `info` label that starts every derivation.
const INFO_LABEL: &[u8] = b"key-agreement/v1";
/// The key-confirmation label that starts the proof's message.
const PROOF_LABEL: &[u8] = b"KC_1_V";

// ---------------------------------------------------------------------------
// Schemes and encodings
// ---------------------------------------------------------------------------

/// A key-agreement scheme of the profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `SCHEME-AES1`: FFDHE-2048 + AES-128-GCM.
    Aes1,
    /// `SCHEME-AES2`: FFDHE-3072 + AES-256-GCM.
    Aes2,
    /// `SCHEME-EC-AES1`: ECDH P-256 + AES-128-GCM.
    EcAes1,
    /// `SCHEME-EC-AES2`: ECDH P-384 + AES-256-GCM.
    EcAes2,
}

impl Scheme {
    /// The scheme's wire name (`SCHEME-…`).
    pub fn name(&self) -> &'static str {
        match self {
            Scheme::Aes1 => "SCHEME-AES1",
            Scheme::Aes2 => "SCHEME-AES2",
            Scheme::EcAes1 => "SCHEME-EC-AES1",
            Scheme::EcAes2 => "SCHEME-EC-AES2",
        }
    }

    /// All four schemes.
    pub fn all() -> [Scheme; 4] {
        [Scheme::Aes1, Scheme::Aes2, Scheme::EcAes1, Scheme::EcAes2]
    }

    /// The scheme with this wire name, if any.
    pub fn from_name(name: &str) -> Option<Scheme> {
        Scheme::all().into_iter().find(|s| s.name() == name)
    }

    /// Length of `k_enc` in bytes (16 for AES-128-GCM, 32 for AES-256-GCM).
    pub fn k_enc_len(&self) -> usize {
        match self {
            Scheme::Aes1 | Scheme::EcAes1 => 16,
            Scheme::Aes2 | Scheme::EcAes2 => 32,
        }
    }

    /// Whether the scheme is ECDH (as opposed to finite-field DH).
    pub fn is_ec(&self) -> bool {
        matches!(self, Scheme::EcAes1 | Scheme::EcAes2)
    }

    /// The FFDHE group size in bits (2048 or 3072), `None` for ECDH schemes.
    pub fn dh_bits(&self) -> Option<usize> {
        match self {
            Scheme::Aes1 => Some(2048),
            Scheme::Aes2 => Some(3072),
            Scheme::EcAes1 | Scheme::EcAes2 => None,
        }
    }

    /// Length of the raw public key: SEC1 uncompressed point (65 / 97) or len(p) (256 / 384).
    pub fn raw_public_key_len(&self) -> usize {
        match self {
            Scheme::Aes1 => 256,
            Scheme::Aes2 => 384,
            Scheme::EcAes1 => 65,
            Scheme::EcAes2 => 97,
        }
    }

    fn ec_alg(&self) -> &'static agreement::Algorithm {
        match self {
            Scheme::EcAes1 => &agreement::ECDH_P256,
            Scheme::EcAes2 => &agreement::ECDH_P384,
            _ => panic!("{} is not an ECDH scheme", self.name()),
        }
    }

    /// Arcs of the namedCurve OID of an ECDH scheme.
    fn curve_oid(&self) -> &'static [u64] {
        match self {
            Scheme::EcAes1 => OID_PRIME256V1,
            Scheme::EcAes2 => OID_SECP384R1,
            _ => panic!("{} is not an ECDH scheme", self.name()),
        }
    }

    fn aead_alg(&self) -> &'static aead::Algorithm {
        match self.k_enc_len() {
            16 => &aead::AES_128_GCM,
            _ => &aead::AES_256_GCM,
        }
    }
}

/// How the client encodes its public key (the server answers in the same one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Raw: SEC1 uncompressed point for EC, `y` big-endian padded to len(p) for DH.
    Raw,
    /// SubjectPublicKeyInfo DER; for DH the X9.42 `dhpublicnumber` form (p, g, q).
    Spki,
    /// SubjectPublicKeyInfo DER; for DH the PKCS#3 `dhKeyAgreement` form (p, g).
    /// For EC schemes this is the same as [`Encoding::Spki`].
    SpkiPkcs3,
}

// ---------------------------------------------------------------------------
// FFDHE groups (RFC 7919), derived from the definition
// ---------------------------------------------------------------------------

struct Group {
    p: BigUint,
    q: BigUint,
    len: usize,
}

/// `floor(e * 2^n)`, exactly, with integers: `sum_k floor(2^(n+G) / k!) >> G`.
fn e_times_pow2(n: usize) -> BigUint {
    const GUARD: usize = 64;
    let mut s = BigUint::ZERO;
    let mut t = BigUint::from(1u8) << (n + GUARD);
    let mut k = 0u32;
    while t != BigUint::ZERO {
        s += &t;
        k += 1;
        t /= k;
    }
    s >> GUARD
}

/// `p = 2^b - 2^(b-64) + (floor(2^(b-130) * e) + X) * 2^64 - 1` (RFC 7919).
fn make_group(bits: usize, x: u32) -> Group {
    let one = BigUint::from(1u8);
    let middle = (e_times_pow2(bits - 130) + BigUint::from(x)) << 64;
    let p: BigUint = (&one << bits) + middle - (&one << (bits - 64)) - &one;
    assert_eq!(
        p.bits(),
        bits as u64,
        "derived FFDHE prime has the wrong size"
    );
    let q = (&p - &one) >> 1;
    Group {
        p,
        q,
        len: bits / 8,
    }
}

fn group(bits: usize) -> &'static Group {
    static G2048: OnceLock<Group> = OnceLock::new();
    static G3072: OnceLock<Group> = OnceLock::new();
    match bits {
        2048 => G2048.get_or_init(|| make_group(2048, 560_316)),
        3072 => G3072.get_or_init(|| make_group(3072, 2_625_351)),
        _ => panic!("no FFDHE group of {bits} bits in this profile (2048 or 3072)"),
    }
}

/// The RFC 7919 prime `p` of ffdhe2048 or ffdhe3072 (`bits` = 2048 or 3072; panics otherwise).
pub fn ffdhe_prime(bits: usize) -> &'static BigUint {
    &group(bits).p
}

/// The subgroup order `q = (p - 1) / 2` of ffdhe2048 or ffdhe3072.
pub fn ffdhe_q(bits: usize) -> &'static BigUint {
    &group(bits).q
}

/// Big-endian bytes of `n` left-padded with zeros to `len`; the minimal bytes if it does not fit.
fn pad_be(n: &BigUint, len: usize) -> Vec<u8> {
    let bytes = n.to_bytes_be();
    if bytes.len() >= len {
        return bytes;
    }
    let mut out = vec![0u8; len - bytes.len()];
    out.extend_from_slice(&bytes);
    out
}

/// Checks a peer DH public value: `1 < y < p-1` and `y^q = 1 mod p`.
fn check_dh_public(bits: usize, y: &BigUint) -> Result<(), String> {
    let g = group(bits);
    let one = BigUint::from(1u8);
    if *y <= one {
        return Err("DH public value y <= 1".into());
    }
    if *y >= &g.p - &one {
        return Err("DH public value y >= p-1".into());
    }
    if y.modpow(&g.q, &g.p) != one {
        return Err("DH public value is not in the prime-order subgroup (y^q != 1 mod p)".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// DER writer
// ---------------------------------------------------------------------------

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;

const OID_EC_PUBLIC_KEY: &[u64] = &[1, 2, 840, 10045, 2, 1];
const OID_PRIME256V1: &[u64] = &[1, 2, 840, 10045, 3, 1, 7];
const OID_SECP384R1: &[u64] = &[1, 3, 132, 0, 34];
const OID_DH_PUBLIC_NUMBER: &[u64] = &[1, 2, 840, 10046, 2, 1];
const OID_DH_KEY_AGREEMENT: &[u64] = &[1, 2, 840, 113_549, 1, 3, 1];

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let len_bytes = len.to_be_bytes();
        let skip = len_bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (len_bytes.len() - skip) as u8);
        out.extend_from_slice(&len_bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

fn der_seq(parts: &[&[u8]]) -> Vec<u8> {
    der_tlv(TAG_SEQUENCE, &parts.concat())
}

/// Minimal DER INTEGER of a non-negative value.
fn der_uint(n: &BigUint) -> Vec<u8> {
    let mut bytes = n.to_bytes_be(); // [0] for zero
    if bytes[0] & 0x80 != 0 {
        bytes.insert(0, 0);
    }
    der_tlv(TAG_INTEGER, &bytes)
}

fn oid_content(arcs: &[u64]) -> Vec<u8> {
    fn base128(mut v: u64, out: &mut Vec<u8>) {
        let mut tmp = vec![(v & 0x7f) as u8];
        v >>= 7;
        while v != 0 {
            tmp.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        tmp.reverse();
        out.extend_from_slice(&tmp);
    }
    let mut out = Vec::new();
    base128(arcs[0] * 40 + arcs[1], &mut out);
    for &arc in &arcs[2..] {
        base128(arc, &mut out);
    }
    out
}

fn der_oid(arcs: &[u64]) -> Vec<u8> {
    der_tlv(TAG_OID, &oid_content(arcs))
}

/// BIT STRING with 0 unused bits.
fn der_bits(bytes: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(bytes.len() + 1);
    content.push(0);
    content.extend_from_slice(bytes);
    der_tlv(TAG_BIT_STRING, &content)
}

/// The raw DH public key: `y` big-endian left-padded to len(p) (256 or 384 bytes);
/// if `y` does not fit, its minimal big-endian bytes. Works for invalid `y` too.
pub fn dh_raw(bits: usize, y: &BigUint) -> Vec<u8> {
    pad_be(y, group(bits).len)
}

/// SubjectPublicKeyInfo DER of a DH public value `y` (any value, for negative tests too):
/// X9.42 `dhpublicnumber` with parameters (p, g, q), or with `pkcs3` the PKCS#3
/// `dhKeyAgreement` form with parameters (p, g). The key is a BIT STRING wrapping INTEGER y.
pub fn dh_spki(bits: usize, y: &BigUint, pkcs3: bool) -> Vec<u8> {
    let g = group(bits);
    let two = BigUint::from(2u8);
    let algorithm = if pkcs3 {
        let params = der_seq(&[&der_uint(&g.p), &der_uint(&two)]);
        der_seq(&[&der_oid(OID_DH_KEY_AGREEMENT), &params])
    } else {
        let params = der_seq(&[&der_uint(&g.p), &der_uint(&two), &der_uint(&g.q)]);
        der_seq(&[&der_oid(OID_DH_PUBLIC_NUMBER), &params])
    };
    der_seq(&[&algorithm, &der_bits(&der_uint(y))])
}

/// SubjectPublicKeyInfo DER (id-ecPublicKey + namedCurve of the scheme) wrapping
/// `point` as given (any bytes, for negative tests too). Panics for a DH scheme.
pub fn ec_spki(scheme: Scheme, point: &[u8]) -> Vec<u8> {
    let algorithm = der_seq(&[&der_oid(OID_EC_PUBLIC_KEY), &der_oid(scheme.curve_oid())]);
    der_seq(&[&algorithm, &der_bits(point)])
}

// ---------------------------------------------------------------------------
// DER reader (strict: definite minimal lengths, single-byte tags, no trailing data)
// ---------------------------------------------------------------------------

struct Der<'a> {
    buf: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Der { buf }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err(format!("DER: truncated {what}"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// Next TLV: (tag, content).
    fn tlv(&mut self) -> Result<(u8, &'a [u8]), String> {
        let tag = self.take(1, "tag")?[0];
        if tag & 0x1f == 0x1f {
            return Err(format!("DER: multi-byte tag {tag:#04x} not supported"));
        }
        let first = self.take(1, "length")?[0];
        let len = if first < 0x80 {
            first as usize
        } else if first == 0x80 {
            return Err("DER: indefinite length".into());
        } else {
            let n = (first & 0x7f) as usize;
            if n > 4 {
                return Err(format!("DER: length of {n} bytes"));
            }
            let bytes = self.take(n, "long-form length")?;
            if bytes[0] == 0 {
                return Err("DER: non-minimal long-form length (leading zero)".into());
            }
            let len = bytes.iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
            if len < 0x80 {
                return Err("DER: long-form length below 128".into());
            }
            len
        };
        let content = self.take(len, "content")?;
        Ok((tag, content))
    }

    fn expect(&mut self, tag: u8, what: &str) -> Result<&'a [u8], String> {
        let (got, content) = self.tlv()?;
        if got != tag {
            return Err(format!(
                "DER: expected {what} (tag {tag:#04x}), got tag {got:#04x}"
            ));
        }
        Ok(content)
    }

    fn seq(&mut self, what: &str) -> Result<Der<'a>, String> {
        Ok(Der::new(self.expect(TAG_SEQUENCE, what)?))
    }

    fn oid(&mut self, expected: &[u64], what: &str) -> Result<(), String> {
        let content = self.expect(TAG_OID, what)?;
        if content != oid_content(expected).as_slice() {
            return Err(format!(
                "DER: unexpected {what} OID (content {})",
                hex(content)
            ));
        }
        Ok(())
    }

    /// A non-negative minimal INTEGER.
    fn uint(&mut self, what: &str) -> Result<BigUint, String> {
        let content = self.expect(TAG_INTEGER, what)?;
        if content.is_empty() {
            return Err(format!("DER: empty INTEGER {what}"));
        }
        if content[0] & 0x80 != 0 {
            return Err(format!("DER: negative INTEGER {what}"));
        }
        if content.len() > 1 && content[0] == 0 && content[1] & 0x80 == 0 {
            return Err(format!("DER: non-minimal INTEGER {what}"));
        }
        Ok(BigUint::from_bytes_be(content))
    }

    /// BIT STRING content with 0 unused bits.
    fn bits(&mut self, what: &str) -> Result<&'a [u8], String> {
        let content = self.expect(TAG_BIT_STRING, what)?;
        match content.split_first() {
            Some((0, rest)) => Ok(rest),
            Some((n, _)) => Err(format!("DER: BIT STRING {what} with {n} unused bits")),
            None => Err(format!("DER: empty BIT STRING {what}")),
        }
    }

    fn end(&self, what: &str) -> Result<(), String> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "DER: {} trailing bytes after {what}",
                self.buf.len()
            ))
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses an EC SubjectPublicKeyInfo of `scheme`'s curve; returns the point bytes.
fn parse_ec_spki(scheme: Scheme, der: &[u8]) -> Result<Vec<u8>, String> {
    let mut top = Der::new(der);
    let mut spki = top.seq("SubjectPublicKeyInfo")?;
    top.end("SubjectPublicKeyInfo")?;
    let mut alg = spki.seq("AlgorithmIdentifier")?;
    alg.oid(OID_EC_PUBLIC_KEY, "algorithm (id-ecPublicKey)")?;
    alg.oid(scheme.curve_oid(), "namedCurve")?;
    alg.end("AlgorithmIdentifier")?;
    let point = spki.bits("subjectPublicKey")?;
    spki.end("SubjectPublicKeyInfo content")?;
    Ok(point.to_vec())
}

/// Parses a DH SubjectPublicKeyInfo of the `bits` group in the X9.42 form (or the
/// PKCS#3 form with `pkcs3`), checking p, g (and q); returns `y` (not range-checked).
fn parse_dh_spki(bits: usize, der: &[u8], pkcs3: bool) -> Result<BigUint, String> {
    let g = group(bits);
    let mut top = Der::new(der);
    let mut spki = top.seq("SubjectPublicKeyInfo")?;
    top.end("SubjectPublicKeyInfo")?;
    let mut alg = spki.seq("AlgorithmIdentifier")?;
    if pkcs3 {
        alg.oid(OID_DH_KEY_AGREEMENT, "algorithm (dhKeyAgreement)")?;
    } else {
        alg.oid(OID_DH_PUBLIC_NUMBER, "algorithm (dhpublicnumber)")?;
    }
    let mut params = alg.seq("DH parameters")?;
    alg.end("AlgorithmIdentifier")?;
    if params.uint("p")? != g.p {
        return Err(format!("DH parameters: p is not the ffdhe{bits} prime"));
    }
    if params.uint("g")? != BigUint::from(2u8) {
        return Err("DH parameters: g != 2".into());
    }
    if !pkcs3 && params.uint("q")? != g.q {
        return Err(format!("DH parameters: q is not (p-1)/2 of ffdhe{bits}"));
    }
    params.end("DH parameters")?;
    let key = spki.bits("subjectPublicKey")?;
    spki.end("SubjectPublicKeyInfo content")?;
    let mut inner = Der::new(key);
    let y = inner.uint("public value y")?;
    inner.end("public value y")?;
    Ok(y)
}

// ---------------------------------------------------------------------------
// Key derivation and proof (pure)
// ---------------------------------------------------------------------------

fn lp(x: &[u8]) -> Vec<u8> {
    let len = u32::try_from(x.len()).expect("field longer than 4 GiB");
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(x);
    out
}

struct OkmLen(usize);

impl hkdf::KeyType for OkmLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// `(k_enc, k_mac)` from `HKDF-SHA256(salt = nonce, ikm = z, info = "key-agreement/v1" ‖
/// scheme_name ‖ lp(id_c) ‖ lp(id_s) ‖ lp(pub_c) ‖ lp(pub_s))` of `k_enc_len + 32` bytes.
#[allow(clippy::too_many_arguments)]
pub fn derive(
    scheme_name: &str,
    z: &[u8],
    nonce: &[u8],
    id_c: &[u8],
    id_s: &[u8],
    pub_c: &[u8],
    pub_s: &[u8],
    k_enc_len: usize,
) -> (Vec<u8>, Vec<u8>) {
    let (lid_c, lid_s, lpub_c, lpub_s) = (lp(id_c), lp(id_s), lp(pub_c), lp(pub_s));
    let info: [&[u8]; 6] = [
        INFO_LABEL,
        scheme_name.as_bytes(),
        &lid_c,
        &lid_s,
        &lpub_c,
        &lpub_s,
    ];
    let total = k_enc_len + 32;
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, nonce).extract(z);
    let okm = prk
        .expand(&info, OkmLen(total))
        .expect("HKDF output length out of range");
    let mut out = vec![0u8; total];
    okm.fill(&mut out).expect("HKDF fill");
    let k_mac = out.split_off(k_enc_len);
    (out, k_mac)
}

/// `HMAC-SHA256(k_mac, "KC_1_V" ‖ id_s ‖ id_c ‖ pub_s ‖ pub_c ‖ nonce)`.
pub fn proof(
    k_mac: &[u8],
    id_s: &[u8],
    id_c: &[u8],
    pub_s: &[u8],
    pub_c: &[u8],
    nonce: &[u8],
) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, k_mac);
    let mut ctx = hmac::Context::with_key(&key);
    for part in [PROOF_LABEL, id_s, id_c, pub_s, pub_c, nonce] {
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

fn verify_proof(
    k_mac: &[u8],
    id_s: &[u8],
    id_c: &[u8],
    pub_s: &[u8],
    pub_c: &[u8],
    nonce: &[u8],
    tag: &[u8],
) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, k_mac);
    let msg = [PROOF_LABEL, id_s, id_c, pub_s, pub_c, nonce].concat();
    hmac::verify(&key, &msg, tag).is_ok()
}

// ---------------------------------------------------------------------------
// Randomness
// ---------------------------------------------------------------------------

/// `n` bytes from the system CSPRNG.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    SystemRandom::new().fill(&mut out).expect("system RNG");
    out
}

/// A fresh 32-byte nonce (the profile's default size; at least 16 is required).
pub fn random_nonce() -> Vec<u8> {
    random_bytes(32)
}

// ---------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------

enum PrivateKey {
    /// FFDHE exponent `x`.
    Dh(BigUint),
    /// ECDH key, consumed by `finish`.
    Ec(agreement::EphemeralPrivateKey),
}

/// The client's first message and the state needed to finish the agreement.
pub struct ClientHello {
    /// The request body for `POST /rest/key-agreement`.
    pub body: Value,
    scheme: Scheme,
    encoding: Encoding,
    private: PrivateKey,
    pub_c: Vec<u8>,
    id_c: Vec<u8>,
    nonce: Vec<u8>,
}

impl fmt::Debug for ClientHello {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientHello")
            .field("scheme", &self.scheme)
            .field("encoding", &self.encoding)
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

/// Starts an agreement: a fresh key pair of `scheme`, the public key encoded as
/// `encoding`, and the request body `{"identifier", "nonce", "public_key",
/// "supported_schemes": [scheme.name()]}`. `identifier` and `nonce` are sent as
/// given (no length checks, so negative tests can send bad ones).
pub fn hello(scheme: Scheme, encoding: Encoding, identifier: &[u8], nonce: &[u8]) -> ClientHello {
    let rng = SystemRandom::new();
    let (private, pub_c) = match scheme.dh_bits() {
        Some(bits) => {
            let g = group(bits);
            let x = loop {
                let mut buf = [0u8; 32];
                rng.fill(&mut buf).expect("system RNG");
                let x = BigUint::from_bytes_be(&buf);
                if x != BigUint::ZERO {
                    break x;
                }
            };
            let y = BigUint::from(2u8).modpow(&x, &g.p);
            let pub_c = match encoding {
                Encoding::Raw => dh_raw(bits, &y),
                Encoding::Spki => dh_spki(bits, &y, false),
                Encoding::SpkiPkcs3 => dh_spki(bits, &y, true),
            };
            (PrivateKey::Dh(x), pub_c)
        }
        None => {
            let key = agreement::EphemeralPrivateKey::generate(scheme.ec_alg(), &rng)
                .expect("ECDH key generation");
            let point = key.compute_public_key().expect("ECDH public key");
            let pub_c = match encoding {
                Encoding::Raw => point.as_ref().to_vec(),
                Encoding::Spki | Encoding::SpkiPkcs3 => ec_spki(scheme, point.as_ref()),
            };
            (PrivateKey::Ec(key), pub_c)
        }
    };
    let body = json!({
        "identifier": B64.encode(identifier),
        "nonce": B64.encode(nonce),
        "public_key": B64.encode(&pub_c),
        "supported_schemes": [scheme.name()],
    });
    ClientHello {
        body,
        scheme,
        encoding,
        private,
        pub_c,
        id_c: identifier.to_vec(),
        nonce: nonce.to_vec(),
    }
}

fn field_str<'a>(answer: &'a Value, name: &str) -> Result<&'a str, String> {
    match answer.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!("answer field {name:?} is not a string: {other}")),
        None => Err(format!("answer has no field {name:?}: {answer}")),
    }
}

fn field_b64(answer: &Value, name: &str) -> Result<Vec<u8>, String> {
    let s = field_str(answer, name)?;
    B64.decode(s)
        .map_err(|e| format!("answer field {name:?} is not standard padded Base64 ({e}): {s:?}"))
}

/// Whether `s` is a hyphenated UUID of version 4 (RFC 4122 variant).
fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b' | b'A' | b'B')
}

impl ClientHello {
    /// Replaces `supported_schemes` in the body (the key pair stays the one of our scheme).
    pub fn with_schemes(mut self, schemes: &[&str]) -> Self {
        self.body["supported_schemes"] = json!(schemes);
        self
    }

    /// The scheme whose key pair this hello carries.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The encoding of our public key.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Our public key exactly as sent (Base64-decoded `public_key`).
    pub fn public_key(&self) -> &[u8] {
        &self.pub_c
    }

    /// Our identifier `id_C` as sent.
    pub fn identifier(&self) -> &[u8] {
        &self.id_c
    }

    /// Our nonce as sent.
    pub fn nonce(&self) -> &[u8] {
        &self.nonce
    }

    /// Checks the server's answer: scheme name equals ours, `client_reference_id` is a
    /// UUIDv4, the public key parses in our encoding and is valid, the proof verifies
    /// (constant time). Returns the session or a String error describing what failed.
    pub fn finish(self, answer: &Value) -> Result<Session, String> {
        if !answer.is_object() {
            return Err(format!("answer is not a JSON object: {answer}"));
        }
        let scheme_name = field_str(answer, "scheme")?;
        if scheme_name != self.scheme.name() {
            return Err(format!(
                "answer scheme {scheme_name:?}, expected {:?}",
                self.scheme.name()
            ));
        }
        let client_reference_id = field_str(answer, "client_reference_id")?.to_owned();
        if !is_uuid_v4(&client_reference_id) {
            return Err(format!(
                "client_reference_id {client_reference_id:?} is not a UUIDv4"
            ));
        }
        let id_s = field_b64(answer, "identifier")?;
        let pub_s = field_b64(answer, "public_key")?;
        let tag = field_b64(answer, "proof")?;
        if tag.len() != 32 {
            return Err(format!("proof is {} bytes, expected 32", tag.len()));
        }

        let z = match self.private {
            PrivateKey::Dh(ref x) => {
                let bits = self.scheme.dh_bits().expect("DH scheme");
                let g = group(bits);
                let y_s = match self.encoding {
                    Encoding::Raw => {
                        if pub_s.len() != g.len {
                            return Err(format!(
                                "raw DH public key is {} bytes, expected {}",
                                pub_s.len(),
                                g.len
                            ));
                        }
                        BigUint::from_bytes_be(&pub_s)
                    }
                    Encoding::Spki => parse_dh_spki(bits, &pub_s, false)?,
                    Encoding::SpkiPkcs3 => parse_dh_spki(bits, &pub_s, true)?,
                };
                check_dh_public(bits, &y_s)?;
                let z = y_s.modpow(x, &g.p);
                if z <= BigUint::from(1u8) {
                    return Err("DH shared secret is degenerate".into());
                }
                pad_be(&z, g.len)
            }
            PrivateKey::Ec(key) => {
                let point = match self.encoding {
                    Encoding::Raw => pub_s.clone(),
                    Encoding::Spki | Encoding::SpkiPkcs3 => parse_ec_spki(self.scheme, &pub_s)?,
                };
                let want = self.scheme.raw_public_key_len();
                if point.len() != want || point[0] != 0x04 {
                    return Err(format!(
                        "EC public key is not an uncompressed {want}-byte SEC1 point ({} bytes, first {:?})",
                        point.len(),
                        point.first()
                    ));
                }
                let peer = agreement::UnparsedPublicKey::new(self.scheme.ec_alg(), &point);
                agreement::agree_ephemeral(key, &peer, |z| z.to_vec())
                    .map_err(|_| "ECDH failed: server point is invalid".to_string())?
            }
        };

        let (k_enc, k_mac) = derive(
            self.scheme.name(),
            &z,
            &self.nonce,
            &self.id_c,
            &id_s,
            &self.pub_c,
            &pub_s,
            self.scheme.k_enc_len(),
        );
        if !verify_proof(
            &k_mac,
            &id_s,
            &self.id_c,
            &pub_s,
            &self.pub_c,
            &self.nonce,
            &tag,
        ) {
            return Err("proof does not verify".into());
        }
        Ok(Session {
            client_reference_id,
            k_enc,
            k_mac,
            scheme: self.scheme,
        })
    }
}

/// An agreed session: the keys and the reference to pass to login.
#[derive(Clone, Debug)]
pub struct Session {
    /// The server's `client_reference_id`, exactly as returned.
    pub client_reference_id: String,
    /// AES-GCM key (16 or 32 bytes).
    pub k_enc: Vec<u8>,
    /// Key-confirmation MAC key (32 bytes).
    pub k_mac: Vec<u8>,
    /// The agreed scheme.
    pub scheme: Scheme,
}

impl Session {
    fn aead_key(&self) -> aead::LessSafeKey {
        let key = aead::UnboundKey::new(self.scheme.aead_alg(), &self.k_enc)
            .expect("k_enc length matches the scheme's AES-GCM");
        aead::LessSafeKey::new(key)
    }

    /// `Base64(iv12 ‖ AES-GCM(k_enc, plaintext, aad = client_reference_id))` with a random
    /// IV, ciphertext followed by the 16-byte tag: the value of a sensitive login field.
    pub fn encrypt(&self, plaintext: &[u8]) -> String {
        let mut iv = [0u8; 12];
        SystemRandom::new().fill(&mut iv).expect("system RNG");
        let mut in_out = plaintext.to_vec();
        self.aead_key()
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(iv),
                aead::Aad::from(self.client_reference_id.as_bytes()),
                &mut in_out,
            )
            .expect("AES-GCM seal");
        let mut out = iv.to_vec();
        out.extend_from_slice(&in_out);
        B64.encode(out)
    }

    /// The login route under this session's reference.
    pub fn login_path(&self) -> String {
        format!(
            "/rest/login?client_reference_id={}",
            self.client_reference_id
        )
    }

    /// A login body for `domain/name` with `password` encrypted under
    /// this session.
    pub fn login_body(&self, domain: &str, name: &str, password: &str) -> Value {
        json!({"domain": domain, "username": name, "password": self.encrypt(password.as_bytes())})
    }

    /// Inverse of [`Session::encrypt`] (same layout and AAD); errors on bad Base64,
    /// a short input or a failed tag check.
    pub fn decrypt(&self, b64: &str) -> Result<Vec<u8>, String> {
        let data = B64.decode(b64).map_err(|e| format!("not Base64: {e}"))?;
        if data.len() < 12 + 16 {
            return Err(format!("ciphertext of {} bytes is too short", data.len()));
        }
        let (iv, rest) = data.split_at(12);
        let nonce = aead::Nonce::try_assume_unique_for_key(iv).map_err(|_| "bad IV")?;
        let mut in_out = rest.to_vec();
        let plain = self
            .aead_key()
            .open_in_place(
                nonce,
                aead::Aad::from(self.client_reference_id.as_bytes()),
                &mut in_out,
            )
            .map_err(|_| "AES-GCM authentication failed".to_string())?;
        Ok(plain.to_vec())
    }
}

// ---------------------------------------------------------------------------
// Self-checks (cheap)
// ---------------------------------------------------------------------------

#[cfg(test)]
mod self_checks {
    use super::*;

    const PRIME_PREFIX: &str = "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1";

    #[test]
    fn ka_client_ffdhe_primes_match_rfc7919() {
        for bits in [2048usize, 3072] {
            let p = ffdhe_prime(bits);
            assert_eq!(p.bits(), bits as u64);
            let h = p.to_str_radix(16).to_uppercase();
            assert_eq!(h.len(), bits / 4);
            assert!(
                h.starts_with(PRIME_PREFIX),
                "ffdhe{bits} prefix: {}",
                &h[..48]
            );
            assert!(h.ends_with("FFFFFFFFFFFFFFFF"), "ffdhe{bits} suffix");
            assert_eq!(ffdhe_q(bits) * 2u8 + 1u8, *p);
        }
        // Safe prime with g = 2 a quadratic residue: 2^q = 1 mod p (Fermat-style sanity check).
        let (p, q) = (ffdhe_prime(2048), ffdhe_q(2048));
        assert_eq!(BigUint::from(2u8).modpow(q, p), BigUint::from(1u8));
    }

    #[test]
    fn ka_client_der_round_trip() {
        // Well-known SPKI headers of P-256 / P-384 keys.
        let point256 = [0x04u8; 65];
        let spki = ec_spki(Scheme::EcAes1, &point256);
        assert_eq!(
            hex(&spki[..26]),
            "3059301306072a8648ce3d020106082a8648ce3d030107034200"
        );
        assert_eq!(parse_ec_spki(Scheme::EcAes1, &spki).unwrap(), point256);
        let point384 = [0x04u8; 97];
        let spki = ec_spki(Scheme::EcAes2, &point384);
        assert_eq!(
            hex(&spki[..23]),
            "3076301006072a8648ce3d020106052b81040022036200"
        );
        assert_eq!(parse_ec_spki(Scheme::EcAes2, &spki).unwrap(), point384);
        assert!(parse_ec_spki(Scheme::EcAes1, &ec_spki(Scheme::EcAes2, &point384)).is_err());

        // DH: y with the top bit set (needs a 0x00) and clear, both forms; long-form lengths.
        for bits in [2048usize, 3072] {
            let p = ffdhe_prime(bits);
            let one = BigUint::from(1u8);
            for y in [p - 2u8, BigUint::from(2u8) << (bits - 9), one.clone()] {
                for pkcs3 in [false, true] {
                    let der = dh_spki(bits, &y, pkcs3);
                    assert_eq!(der[0], 0x30);
                    assert_eq!(der[1], 0x82, "two-byte long-form length");
                    assert_eq!(parse_dh_spki(bits, &der, pkcs3).unwrap(), y);
                    assert!(
                        parse_dh_spki(bits, &der, !pkcs3).is_err(),
                        "OID form checked"
                    );
                    let mut trailing = der.clone();
                    trailing.push(0);
                    assert!(parse_dh_spki(bits, &trailing, pkcs3).is_err());
                }
            }
            assert_eq!(dh_raw(bits, &one).len(), bits / 8);
            assert_eq!(dh_raw(bits, &(&one << bits)).len(), bits / 8 + 1);
        }
        assert!(parse_dh_spki(3072, &dh_spki(2048, &BigUint::from(5u8), false), false).is_err());
        // Reader strictness.
        assert!(Der::new(&[0x30, 0x81, 0x05, 0, 0, 0, 0, 0]).tlv().is_err());
        assert!(Der::new(&[0x30, 0x80, 0, 0]).tlv().is_err());
        assert!(Der::new(&[0x02, 0x02, 0x00, 0x01]).uint("x").is_err());
        assert!(Der::new(&[0x02, 0x01, 0x80]).uint("x").is_err());
        assert_eq!(
            Der::new(&[0x02, 0x02, 0x00, 0x80]).uint("x").unwrap(),
            BigUint::from(128u8)
        );
    }

    #[test]
    fn ka_client_derive_and_proof_vector() {
        // Computed independently with Python's hmac/hashlib (HKDF by hand), and the
        // HKDF output cross-checked with `openssl kdf ... HKDF`.
        let z: Vec<u8> = (1..=32).collect();
        let nonce: Vec<u8> = (0xA0..=0xAF).collect();
        let (pub_c, pub_s) = ([0x04u8; 65], [0x05u8; 65]);
        let (k_enc, k_mac) = derive(
            "SCHEME-EC-AES1",
            &z,
            &nonce,
            b"client-1",
            b"Broker",
            &pub_c,
            &pub_s,
            16,
        );
        assert_eq!(hex(&k_enc), "ed9e4236d2afd7e033e186118667a24a");
        assert_eq!(
            hex(&k_mac),
            "a645b260180422540be07f749cbc34043e9f44f92a3a78a0d940661bce55c0d0"
        );
        let tag = proof(&k_mac, b"Broker", b"client-1", &pub_s, &pub_c, &nonce);
        assert_eq!(
            hex(&tag),
            "6dad5200c2265023dd66ea914d01b15dd57b4d66510ff46e8c7498e16fa97c9b"
        );
        assert!(verify_proof(
            &k_mac,
            b"Broker",
            b"client-1",
            &pub_s,
            &pub_c,
            &nonce,
            &tag
        ));
        assert!(!verify_proof(
            &k_mac,
            b"Broker",
            b"client-2",
            &pub_s,
            &pub_c,
            &nonce,
            &tag
        ));
    }

    /// A toy server built from this module's own pieces (checks the client's plumbing only).
    fn toy_answer(h: &ClientHello, tamper_proof: bool) -> Value {
        let rng = SystemRandom::new();
        let scheme = h.scheme();
        let (z, pub_s) = match scheme.dh_bits() {
            Some(bits) => {
                let p = ffdhe_prime(bits);
                let y_c = match h.encoding() {
                    Encoding::Raw => BigUint::from_bytes_be(h.public_key()),
                    Encoding::Spki => parse_dh_spki(bits, h.public_key(), false).unwrap(),
                    Encoding::SpkiPkcs3 => parse_dh_spki(bits, h.public_key(), true).unwrap(),
                };
                let x = BigUint::from_bytes_be(&random_bytes(32)) + 1u8;
                let y = BigUint::from(2u8).modpow(&x, p);
                let pub_s = match h.encoding() {
                    Encoding::Raw => dh_raw(bits, &y),
                    Encoding::Spki => dh_spki(bits, &y, false),
                    Encoding::SpkiPkcs3 => dh_spki(bits, &y, true),
                };
                (pad_be(&y_c.modpow(&x, p), bits / 8), pub_s)
            }
            None => {
                let point_c = match h.encoding() {
                    Encoding::Raw => h.public_key().to_vec(),
                    _ => parse_ec_spki(scheme, h.public_key()).unwrap(),
                };
                let key = agreement::EphemeralPrivateKey::generate(scheme.ec_alg(), &rng).unwrap();
                let point = key.compute_public_key().unwrap().as_ref().to_vec();
                let peer = agreement::UnparsedPublicKey::new(scheme.ec_alg(), point_c);
                let z = agreement::agree_ephemeral(key, &peer, |z| z.to_vec()).unwrap();
                let pub_s = match h.encoding() {
                    Encoding::Raw => point,
                    _ => ec_spki(scheme, &point),
                };
                (z, pub_s)
            }
        };
        let id_s = b"Broker";
        let (_, k_mac) = derive(
            scheme.name(),
            &z,
            h.nonce(),
            h.identifier(),
            id_s,
            h.public_key(),
            &pub_s,
            scheme.k_enc_len(),
        );
        let mut tag = proof(
            &k_mac,
            id_s,
            h.identifier(),
            &pub_s,
            h.public_key(),
            h.nonce(),
        );
        if tamper_proof {
            tag[0] ^= 1;
        }
        json!({
            "client_reference_id": "855ea6c5-720a-41e1-96f4-958c90e6e424",
            "identifier": B64.encode(id_s),
            "proof": B64.encode(tag),
            "public_key": B64.encode(&pub_s),
            "scheme": scheme.name(),
        })
    }

    #[test]
    fn ka_client_loopback() {
        let cases = [
            (Scheme::EcAes1, Encoding::Raw),
            (Scheme::EcAes2, Encoding::Spki),
            (Scheme::EcAes1, Encoding::SpkiPkcs3),
            (Scheme::Aes1, Encoding::Raw),
            (Scheme::Aes1, Encoding::Spki),
            (Scheme::Aes1, Encoding::SpkiPkcs3),
        ];
        for (scheme, encoding) in cases {
            let nonce = random_nonce();
            let h = hello(scheme, encoding, b"client-1", &nonce);
            assert_eq!(h.body["supported_schemes"], json!([scheme.name()]));
            let answer = toy_answer(&h, false);
            let session = h.finish(&answer).unwrap();
            assert_eq!(session.k_enc.len(), scheme.k_enc_len());
            assert_eq!(session.k_mac.len(), 32);
            let ct = session.encrypt(b"s3cret");
            assert_eq!(B64.decode(&ct).unwrap().len(), 12 + 6 + 16);
            assert_eq!(session.decrypt(&ct).unwrap(), b"s3cret");

            let h = hello(scheme, encoding, b"client-1", &nonce);
            let answer = toy_answer(&h, true);
            assert!(h.finish(&answer).unwrap_err().contains("proof"));
        }
        let h = hello(Scheme::EcAes1, Encoding::Raw, b"c", &random_nonce())
            .with_schemes(&["SCHEME-AES1", "SCHEME-EC-AES1"]);
        assert_eq!(
            h.body["supported_schemes"],
            json!(["SCHEME-AES1", "SCHEME-EC-AES1"])
        );
        let mut answer = toy_answer(&h, false);
        answer["scheme"] = json!("SCHEME-AES1");
        assert!(h.finish(&answer).unwrap_err().contains("scheme"));
    }
}
