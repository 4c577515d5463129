//! Packaging of a freshly issued certificate and its private key the way
//! KeyTalk RCDP v2 clients expect them after certificate enrolment.
//!
//! Two formats:
//!
//! * [`pem_bundle`]: PEM certificates (leaf first, then the chain) followed by
//!   the private key as a PKCS#8 `ENCRYPTED PRIVATE KEY` (PBES2:
//!   PBKDF2-HMAC-SHA256, random 16-byte salt, 2048 iterations, AES-256-CBC
//!   with a random IV).
//! * [`p12`]: a PKCS#12 file for legacy clients (older Windows CryptoAPI
//!   and the like): key and certificate bags encrypted with
//!   `pbeWithSHAAnd3-KeyTripleDES-CBC` and a SHA-1 HMAC MAC, 2048 iterations
//!   each, which those clients and OpenSSL 3 (without `-legacy`) open.
//!
//! Both check, before packaging, that every certificate is a well-formed DER
//! X.509 certificate and that the private key is the one the leaf
//! certificate certifies, so that a client never receives a bundle whose key
//! does not fit its certificate.
//!
//! Secrets: every unencrypted copy of the key made in this module lives in a
//! [`Zeroizing`] buffer (or in a `p256`/`p384` `SecretKey`, which wipes
//! itself); neither the key nor the passphrase ever appears in a
//! [`PackageError`]. Copies made inside the crates used are out of reach:
//! `p12-keystore` keeps the key in a plain `Vec` and does not wipe its
//! derived keys, nor does `pkcs5` wipe the PBKDF2-derived AES key.

use p12_keystore::{
    Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, PrivateKey,
    PrivateKeyChain,
};
use pkcs5::pbes2;
use pkcs8::ObjectIdentifier;
use pkcs8::der::Encode;
use pkcs8::der::asn1::OctetString;
use pkcs8::der::pem::{self, LineEnding, PemLabel};
use pkcs8::{EncryptedPrivateKeyInfoOwned, PrivateKeyInfoRef, SubjectPublicKeyInfoRef};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// PBKDF2 iterations of the PEM bundle's encrypted private key.
const PEM_PBKDF2_ITERATIONS: u32 = 2048;
/// Length of the PBKDF2 salt of the PEM bundle's encrypted private key.
const PEM_PBKDF2_SALT_LEN: usize = 16;
/// AES block size: the CBC IV length and the most PKCS#7 padding adds.
const AES_BLOCK_LEN: usize = 16;
/// Key-derivation iterations of the PKCS#12 bag encryption.
const P12_ENCRYPTION_ITERATIONS: u32 = 2048;
/// Key-derivation iterations of the PKCS#12 MAC.
const P12_MAC_ITERATIONS: u32 = 2048;

/// `rsaEncryption` (RFC 8017).
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// `id-ecPublicKey` (RFC 5480).
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// `secp256r1` (RFC 5480).
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// `secp384r1` (RFC 5480).
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// Why packaging failed (never contains key bytes or the passphrase).
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// The private key is not a well-formed unencrypted PKCS#8
    /// `PrivateKeyInfo`, or its algorithm is not one of ECDSA P-256, ECDSA
    /// P-384 and RSA.
    #[error("private key: {0}")]
    Key(String),
    /// The private key is not the one the leaf certificate certifies.
    #[error("the private key does not belong to the leaf certificate")]
    KeyMismatch,
    /// A certificate is missing or is not a well-formed DER X.509
    /// certificate.
    #[error("certificate {index} (0 = leaf): {reason}")]
    Certificate {
        /// Position of the certificate: 0 for the leaf, then the chain.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The operating system's random generator failed.
    #[error("random generator failed")]
    Random,
    /// Encrypting or encoding the package failed.
    #[error("encoding: {0}")]
    Encode(String),
}

/// PEM: the certificates (leaf first, then the chain, each
/// `-----BEGIN CERTIFICATE-----`) followed by the private key as
/// `-----BEGIN ENCRYPTED PRIVATE KEY-----` (PKCS#8 EncryptedPrivateKeyInfo,
/// PBES2: PBKDF2-HMAC-SHA256, random 16-byte salt, 2048 iterations,
/// AES-256-CBC with a random IV), encrypted under `passphrase`.
///
/// `certs_der` must hold at least the leaf; `key_pkcs8_der` is an
/// unencrypted PKCS#8 `PrivateKeyInfo` (ECDSA P-256/P-384 or RSA) whose
/// public key is the leaf's. The key is encrypted exactly as given (its
/// DER bytes are not re-encoded). Lines end in `\n`.
pub fn pem_bundle(
    certs_der: &[&[u8]],
    key_pkcs8_der: &[u8],
    passphrase: &[u8],
) -> Result<Zeroizing<String>, PackageError> {
    let Some((leaf, _chain)) = certs_der.split_first() else {
        return Err(PackageError::Certificate {
            index: 0,
            reason: "no certificate given".to_owned(),
        });
    };
    let leaf_spki = leaf_spki(leaf)?;
    for (index, cert) in certs_der.iter().enumerate().skip(1) {
        check_certificate(index, cert)?;
    }
    let key = parse_key(key_pkcs8_der)?;
    check_key_matches(&key, key_pkcs8_der, leaf_spki)?;

    let encrypted = encrypt_pkcs8(key_pkcs8_der, passphrase)?;

    let mut out = Zeroizing::new(String::new());
    for cert in certs_der {
        out.push_str(&pem_block("CERTIFICATE", cert)?);
    }
    out.push_str(&pem_block(
        EncryptedPrivateKeyInfoOwned::PEM_LABEL,
        &encrypted,
    )?);
    Ok(out)
}

/// PKCS#12 (DER) for legacy clients: key bag and certificate bags encrypted
/// with pbeWithSHAAnd3-KeyTripleDES-CBC (2048 iterations), a SHA-1 HMAC MAC
/// (2048 iterations), friendlyName = `friendly_name` and a localKeyId on the
/// key and the leaf. `chain` (the issuing CAs, leaf's issuer first) is
/// included as further certificate bags; with an empty chain the file holds
/// exactly one key and one certificate.
///
/// Layout (as written by `p12-keystore`): an `encryptedData` safe holding
/// the certificate bags (leaf, then `chain` in order), then a `data` safe
/// holding one `pkcs8ShroudedKeyBag`. The key bag carries
/// friendlyName = `friendly_name`; the certificate bags carry their own
/// subject DN (RFC 4514 style) as friendlyName, which `p12-keystore` does not
/// let a caller choose. The localKeyId of the key bag and of the leaf's bag
/// is the SHA-256 of the leaf certificate's DER. The passphrase is used as
/// UTF-8, converted to BMPString as PKCS#12 requires, so `friendly_name`
/// and `passphrase` must stay within the Basic Multilingual Plane.
pub fn p12(
    leaf_der: &[u8],
    chain: &[&[u8]],
    key_pkcs8_der: &[u8],
    passphrase: &str,
    friendly_name: &str,
) -> Result<Vec<u8>, PackageError> {
    let leaf_spki = leaf_spki(leaf_der)?;
    let key = parse_key(key_pkcs8_der)?;
    check_key_matches(&key, key_pkcs8_der, leaf_spki)?;

    let mut certs = Vec::with_capacity(chain.len() + 1);
    for (index, cert) in std::iter::once(&leaf_der).chain(chain).enumerate() {
        if index > 0 {
            check_certificate(index, cert)?;
        }
        certs.push(
            Certificate::from_der(cert).map_err(|e| PackageError::Certificate {
                index,
                reason: e.to_string(),
            })?,
        );
    }

    let local_key_id = Sha256::digest(leaf_der).to_vec();
    // p12-keystore keeps its own copy of the key in a plain `Vec` that it
    // does not wipe (its `PrivateKey` offers no way to do so); that copy is
    // freed with `store` when this function returns.
    let private_key = PrivateKey::from_der(key_pkcs8_der)
        .map_err(|_| PackageError::Key("not a PKCS#8 PrivateKeyInfo".to_owned()))?;
    let mut store = KeyStore::new();
    store.add_entry(
        friendly_name,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, private_key, certs)),
    );
    store
        .writer(passphrase)
        .encryption_algorithm(EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc)
        .encryption_iterations(P12_ENCRYPTION_ITERATIONS)
        .mac_algorithm(MacAlgorithm::HmacSha1)
        .mac_iterations(P12_MAC_ITERATIONS)
        .write()
        .map_err(|e| PackageError::Encode(format!("PKCS#12: {e}")))
}

/// Checks that `der` is exactly one well-formed X.509 certificate.
fn check_certificate(index: usize, der: &[u8]) -> Result<(), PackageError> {
    parse_certificate(index, der).map(|_| ())
}

/// Parses `der` as exactly one X.509 certificate.
fn parse_certificate(
    index: usize,
    der: &[u8],
) -> Result<x509_parser::certificate::X509Certificate<'_>, PackageError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(PackageError::Certificate {
            index,
            reason: "trailing data after the certificate".to_owned(),
        }),
        Err(e) => Err(PackageError::Certificate {
            index,
            reason: format!("not a DER X.509 certificate: {e}"),
        }),
    }
}

/// The DER SubjectPublicKeyInfo of the leaf certificate `der`.
fn leaf_spki(der: &[u8]) -> Result<&[u8], PackageError> {
    Ok(parse_certificate(0, der)?.tbs_certificate.subject_pki.raw)
}

/// Parses `der` as an unencrypted PKCS#8 PrivateKeyInfo (no trailing data).
fn parse_key(der: &[u8]) -> Result<PrivateKeyInfoRef<'_>, PackageError> {
    PrivateKeyInfoRef::try_from(der)
        .map_err(|e| PackageError::Key(format!("not an unencrypted PKCS#8 PrivateKeyInfo ({e})")))
}

/// Checks that `key` (whose DER is `key_der`) is the private half of the
/// public key `leaf_spki` (DER SubjectPublicKeyInfo).
fn check_key_matches(
    key: &PrivateKeyInfoRef<'_>,
    key_der: &[u8],
    leaf_spki: &[u8],
) -> Result<(), PackageError> {
    use p256::pkcs8::{DecodePrivateKey, DecodePublicKey};

    let matches = match key.algorithm.oid {
        RSA_ENCRYPTION => {
            // Only the public half is compared: modulus and exponent are
            // read in place from the key DER, nothing secret is copied.
            let private = rsa::pkcs1::RsaPrivateKeyRef::try_from(key.private_key)
                .map_err(|_| PackageError::Key("malformed RSA private key".to_owned()))?;
            let spki = SubjectPublicKeyInfoRef::try_from(leaf_spki)
                .map_err(|_| PackageError::KeyMismatch)?;
            spki.algorithm.oid == RSA_ENCRYPTION
                && spki
                    .subject_public_key
                    .as_bytes()
                    .and_then(|bits| rsa::pkcs1::RsaPublicKeyRef::try_from(bits).ok())
                    == Some(private.public_key())
        }
        EC_PUBLIC_KEY => match key.algorithm.parameters_oid() {
            // `SecretKey` zeroizes itself on drop.
            Ok(SECP256R1) => {
                let private = p256::SecretKey::from_pkcs8_der(key_der)
                    .map_err(|_| PackageError::Key("malformed P-256 private key".to_owned()))?;
                p256::PublicKey::from_public_key_der(leaf_spki)
                    .is_ok_and(|leaf| leaf == private.public_key())
            }
            Ok(SECP384R1) => {
                let private = p384::SecretKey::from_pkcs8_der(key_der)
                    .map_err(|_| PackageError::Key("malformed P-384 private key".to_owned()))?;
                p384::PublicKey::from_public_key_der(leaf_spki)
                    .is_ok_and(|leaf| leaf == private.public_key())
            }
            Ok(curve) => {
                return Err(PackageError::Key(format!(
                    "unsupported elliptic curve {curve}"
                )));
            }
            Err(_) => {
                return Err(PackageError::Key(
                    "EC private key without a named curve".to_owned(),
                ));
            }
        },
        other => {
            return Err(PackageError::Key(format!(
                "unsupported key algorithm {other} (ECDSA P-256/P-384 or RSA expected)"
            )));
        }
    };
    if matches {
        Ok(())
    } else {
        Err(PackageError::KeyMismatch)
    }
}

/// Encrypts the PKCS#8 DER `key_der` under `passphrase` into a DER
/// EncryptedPrivateKeyInfo: PBES2, PBKDF2-HMAC-SHA256 (random 16-byte salt,
/// 2048 iterations), AES-256-CBC (random IV).
fn encrypt_pkcs8(key_der: &[u8], passphrase: &[u8]) -> Result<Vec<u8>, PackageError> {
    let mut salt = [0u8; PEM_PBKDF2_SALT_LEN];
    let mut iv = [0u8; AES_BLOCK_LEN];
    getrandom::fill(&mut salt).map_err(|_| PackageError::Random)?;
    getrandom::fill(&mut iv).map_err(|_| PackageError::Random)?;
    let params =
        pbes2::Parameters::generate_pbkdf2_sha256_aes256cbc(PEM_PBKDF2_ITERATIONS, &salt, iv)
            .map_err(|e| PackageError::Encode(format!("PBES2 parameters: {e}")))?;

    // Encrypt in place in a buffer that is wiped on drop, whatever happens:
    // it holds the plain key until the cipher has run over it.
    let mut buffer = Zeroizing::new(Vec::with_capacity(key_der.len() + AES_BLOCK_LEN));
    buffer.extend_from_slice(key_der);
    buffer.resize(key_der.len() + AES_BLOCK_LEN, 0);
    let ciphertext = params
        .encrypt_in_place(passphrase, &mut buffer, key_der.len())
        .map_err(|e| PackageError::Encode(format!("PBES2 encryption: {e}")))?;
    let encrypted_data = OctetString::new(ciphertext)
        .map_err(|e| PackageError::Encode(format!("EncryptedPrivateKeyInfo: {e}")))?;

    EncryptedPrivateKeyInfoOwned {
        encryption_algorithm: params.into(),
        encrypted_data,
    }
    .to_der()
    .map_err(|e| PackageError::Encode(format!("EncryptedPrivateKeyInfo: {e}")))
}

/// One PEM block (RFC 7468, 64-character lines, `\n` line endings).
fn pem_block(label: &str, der: &[u8]) -> Result<String, PackageError> {
    pem::encode_string(label, LineEnding::LF, der)
        .map_err(|e| PackageError::Encode(format!("PEM: {e}")))
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output};

    use pkcs5::pbes2::{EncryptionScheme, Kdf, Pbkdf2Prf};
    use pkcs8::EncryptedPrivateKeyInfoRef;
    use pkcs8::der::Decode;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    use super::*;

    const PASS: &str = "correct horse: battery staple!";
    const WRONG: &str = "correct horse: battery stable!";
    const NAME: &str = "keypipe KeyTalk client";

    /// The key type of the leaf in a test PKI.
    #[derive(Clone, Copy, Debug)]
    enum LeafKey {
        P256,
        P384,
        Rsa2048,
    }

    /// A root CA, a sub CA under it and a leaf under the sub CA.
    struct Pki {
        root: Vec<u8>,
        sub: Vec<u8>,
        leaf: Vec<u8>,
        leaf_key: Zeroizing<Vec<u8>>,
    }

    fn ca_params(cn: &str) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
    }

    fn pki(leaf_key: LeafKey) -> Pki {
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let root_params = ca_params("keypipe test root CA");
        let root = root_params.self_signed(&root_key).unwrap();

        let sub_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let sub_params = ca_params("keypipe test sub CA");
        let sub = sub_params
            .signed_by(&sub_key, &Issuer::from_params(&root_params, &root_key))
            .unwrap();

        let key = match leaf_key {
            LeafKey::P256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            LeafKey::P384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap(),
            LeafKey::Rsa2048 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                    .unwrap()
            }
        };
        let mut leaf_params =
            CertificateParams::new(vec!["client.keypipe.test".to_owned()]).unwrap();
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "keypipe test client");
        let leaf = leaf_params
            .signed_by(&key, &Issuer::from_params(&sub_params, &sub_key))
            .unwrap();

        Pki {
            root: root.der().to_vec(),
            sub: sub.der().to_vec(),
            leaf: leaf.der().to_vec(),
            leaf_key: Zeroizing::new(key.serialize_der()),
        }
    }

    /// Runs the real `openssl` CLI; fails the test if it cannot be run or is
    /// not OpenSSL 3 or later.
    fn openssl(args: &[&str]) -> Output {
        let version = Command::new("openssl").arg("version").output().unwrap_or_else(|e| {
            panic!(
                "these tests need the `openssl` command-line tool (OpenSSL 3 or later) on PATH, \
                 and it could not be run: {e}"
            )
        });
        let version = String::from_utf8_lossy(&version.stdout).into_owned();
        let major = version
            .strip_prefix("OpenSSL ")
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse::<u32>().ok());
        assert!(
            major.is_some_and(|m| m >= 3),
            "these tests need OpenSSL 3 or later as `openssl`, found: {version:?}"
        );
        Command::new("openssl")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running openssl {args:?}: {e}"))
    }

    /// stdout and stderr of `out`, for matching and for failure messages.
    fn text(out: &Output) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Runs openssl and asserts it succeeded; returns its stdout + stderr.
    fn openssl_ok(args: &[&str]) -> String {
        let out = openssl(args);
        assert!(
            out.status.success(),
            "openssl {args:?} failed:\n{}",
            text(&out)
        );
        text(&out)
    }

    fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap();
        path
    }

    fn s(path: &Path) -> &str {
        path.to_str().unwrap()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// The public key (PEM SubjectPublicKeyInfo) of the first certificate in
    /// the PEM file `cert`.
    fn cert_pubkey(cert: &Path) -> String {
        let out = openssl_ok(&["x509", "-in", s(cert), "-pubkey", "-noout"]);
        assert!(out.contains("-----BEGIN PUBLIC KEY-----"), "{out}");
        out
    }

    fn der_cert_pubkey(dir: &Path, der: &[u8]) -> String {
        let path = write(dir, "cert.der", der);
        let out = openssl_ok(&[
            "x509",
            "-inform",
            "DER",
            "-in",
            s(&path),
            "-pubkey",
            "-noout",
        ]);
        assert!(out.contains("-----BEGIN PUBLIC KEY-----"), "{out}");
        out
    }

    /// The value of attribute `name` (e.g. `localKeyID:`) in one bag as
    /// shown by `openssl pkcs12 -info`.
    fn attribute<'a>(bag: &'a str, name: &str) -> Option<&'a str> {
        bag.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(str::trim)
    }

    /// Opens `p12_der` with `openssl pkcs12 -info -nodes` (no `-legacy`)
    /// and checks the algorithms and iterations, that it holds exactly
    /// `certs` (leaf first, in this order) and one key, the attributes, and
    /// that the key belongs to the leaf; a wrong passphrase must fail.
    /// Returns the certificate bags as openssl prints them.
    fn check_p12_in_openssl(dir: &Path, p12_der: &[u8], certs: &[&[u8]]) -> Vec<String> {
        let file = write(dir, "f.p12", p12_der);
        let pass = format!("pass:{PASS}");
        let args = [
            "pkcs12",
            "-in",
            s(&file),
            "-passin",
            &pass,
            "-nodes",
            "-info",
        ];
        let out = openssl(&args);
        assert!(
            out.status.success(),
            "openssl {args:?} failed:\n{}",
            text(&out)
        );
        // The algorithms go to stderr, the bags to stdout.
        let stderr = String::from_utf8(out.stderr).unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();

        assert!(stderr.contains("MAC: sha1, Iteration 2048"), "{stderr}");
        assert_eq!(
            stderr
                .matches("PKCS7 Encrypted data: pbeWithSHA1And3-KeyTripleDES-CBC, Iteration 2048")
                .count(),
            1,
            "certificate bags not 3DES/2048:\n{stderr}"
        );
        assert_eq!(
            stderr
                .matches("Shrouded Keybag: pbeWithSHA1And3-KeyTripleDES-CBC, Iteration 2048")
                .count(),
            1,
            "key bag not 3DES/2048:\n{stderr}"
        );
        assert_eq!(
            stderr.matches("Certificate bag").count(),
            certs.len(),
            "{stderr}"
        );
        assert_eq!(stderr.matches("Keybag").count(), 1, "{stderr}");

        let bags: Vec<&str> = stdout.split("Bag Attributes").skip(1).collect();
        assert_eq!(bags.len(), certs.len() + 1, "{stdout}");
        let (cert_bags, key_bags): (Vec<&str>, Vec<&str>) = bags
            .iter()
            .partition(|b| b.contains("-----BEGIN CERTIFICATE-----"));
        assert_eq!(cert_bags.len(), certs.len(), "{stdout}");
        assert_eq!(key_bags.len(), 1, "{stdout}");
        assert_eq!(
            key_bags[0].matches("-----BEGIN PRIVATE KEY-----").count(),
            1
        );

        // The certificates, in order.
        for (bag, cert) in cert_bags.iter().zip(certs) {
            let begin = bag.find("-----BEGIN CERTIFICATE-----").unwrap();
            let (label, der) = pem::decode_vec(&bag.as_bytes()[begin..]).unwrap();
            assert_eq!(label, "CERTIFICATE");
            assert_eq!(der.as_slice(), *cert, "{stdout}");
        }

        // friendlyName on the key; localKeyID on the key and the leaf only,
        // the SHA-256 of the leaf.
        let leaf_id = Sha256::digest(certs[0])
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(
            attribute(key_bags[0], "friendlyName:"),
            Some(NAME),
            "{stdout}"
        );
        assert_eq!(
            attribute(key_bags[0], "localKeyID:"),
            Some(leaf_id.as_str()),
            "{stdout}"
        );
        assert_eq!(
            attribute(cert_bags[0], "localKeyID:"),
            Some(leaf_id.as_str()),
            "{stdout}"
        );
        for bag in &cert_bags {
            assert!(attribute(bag, "friendlyName:").is_some(), "{stdout}");
        }
        for bag in &cert_bags[1..] {
            assert_eq!(attribute(bag, "localKeyID:"), None, "{stdout}");
        }

        // The key fits the leaf.
        let out_pem = dir.join("out.pem");
        openssl_ok(&[
            "pkcs12",
            "-in",
            s(&file),
            "-passin",
            &pass,
            "-nodes",
            "-nocerts",
            "-out",
            s(&out_pem),
        ]);
        let key_pub = openssl_ok(&["pkey", "-in", s(&out_pem), "-pubout"]);
        assert_eq!(key_pub, der_cert_pubkey(dir, certs[0]));

        // A wrong passphrase is refused.
        let bad = openssl(&[
            "pkcs12",
            "-in",
            s(&file),
            "-passin",
            &format!("pass:{WRONG}"),
            "-nodes",
            "-info",
        ]);
        assert!(
            !bad.status.success(),
            "wrong passphrase accepted:\n{}",
            text(&bad)
        );

        cert_bags.into_iter().map(str::to_owned).collect()
    }

    #[test]
    fn p12_without_chain_holds_one_key_and_one_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(LeafKey::P256);
        let p12 = p12(&pki.leaf, &[], &pki.leaf_key, PASS, NAME).unwrap();
        let cert_bags = check_p12_in_openssl(dir.path(), &p12, &[&pki.leaf]);
        // p12-keystore names certificate bags after their subject.
        let name = attribute(&cert_bags[0], "friendlyName:").unwrap();
        assert!(name.contains("keypipe test client"), "{name}");
    }

    #[test]
    fn p12_with_chain_holds_leaf_sub_and_root_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for kind in [LeafKey::Rsa2048, LeafKey::P384] {
            let pki = pki(kind);
            let certs: [&[u8]; 3] = [&pki.leaf, &pki.sub, &pki.root];
            let p12 = p12(&pki.leaf, &certs[1..], &pki.leaf_key, PASS, NAME).unwrap();
            check_p12_in_openssl(dir.path(), &p12, &certs);
        }
    }

    /// Checks `pem` in openssl and in Rust; `certs` are the DER
    /// certificates it must hold, in order.
    fn check_pem_bundle(dir: &Path, pem: &str, certs: &[&[u8]]) {
        assert_eq!(
            pem.matches("-----BEGIN CERTIFICATE-----").count(),
            certs.len()
        );
        assert_eq!(
            pem.matches("-----BEGIN ENCRYPTED PRIVATE KEY-----").count(),
            1
        );
        assert!(!pem.contains("-----BEGIN PRIVATE KEY-----"));
        assert!(pem.ends_with("-----END ENCRYPTED PRIVATE KEY-----\n"));

        // The blocks, in order: the certificates as given, then the key.
        let mut rest = pem;
        let mut blocks = Vec::new();
        while !rest.is_empty() {
            let end = rest.find("-----END ").unwrap();
            let end = end + rest[end..].find('\n').unwrap() + 1;
            let (label, der) = pem::decode_vec(&rest.as_bytes()[..end]).unwrap();
            blocks.push((label.to_owned(), der));
            rest = &rest[end..];
        }
        assert_eq!(blocks.len(), certs.len() + 1);
        for ((label, der), cert) in blocks.iter().zip(certs) {
            assert_eq!(label, "CERTIFICATE");
            assert_eq!(der.as_slice(), *cert);
        }

        // The encryption parameters, as promised.
        let (label, epki_der) = blocks.last().unwrap();
        assert_eq!(label, "ENCRYPTED PRIVATE KEY");
        let epki = EncryptedPrivateKeyInfoRef::from_der(epki_der).unwrap();
        let pkcs5::EncryptionScheme::Pbes2(params) = &epki.encryption_algorithm else {
            panic!("not PBES2: {:?}", epki.encryption_algorithm);
        };
        let Kdf::Pbkdf2(kdf) = &params.kdf else {
            panic!("not PBKDF2: {:?}", params.kdf);
        };
        assert_eq!(kdf.prf, Pbkdf2Prf::HmacWithSha256);
        assert_eq!(kdf.iteration_count, 2048);
        assert_eq!(kdf.salt.as_ref().len(), 16);
        assert!(matches!(
            params.encryption,
            EncryptionScheme::Aes256Cbc { .. }
        ));

        // openssl: the first certificate is the leaf and the key decrypts
        // to the leaf's key pair.
        let file = write(dir, "bundle.pem", pem.as_bytes());
        let key_only = write(
            dir,
            "key.pem",
            &pem.as_bytes()[pem.find("-----BEGIN ENCRYPTED PRIVATE KEY-----").unwrap()..],
        );
        let leaf_pub = cert_pubkey(&file);
        assert_eq!(leaf_pub, der_cert_pubkey(dir, certs[0]));
        let pass = format!("pass:{PASS}");
        for input in [&key_only, &file] {
            let key_pub = openssl_ok(&["pkey", "-in", s(input), "-passin", &pass, "-pubout"]);
            assert_eq!(key_pub, leaf_pub, "{input:?}");
            let bad = openssl(&[
                "pkey",
                "-in",
                s(input),
                "-passin",
                &format!("pass:{WRONG}"),
                "-pubout",
            ]);
            assert!(
                !bad.status.success(),
                "wrong passphrase accepted:\n{}",
                text(&bad)
            );
        }

        // The chain in the bundle verifies.
        if certs.len() == 3 {
            let root = write(
                dir,
                "root.pem",
                pem_block("CERTIFICATE", certs[2]).unwrap().as_bytes(),
            );
            let sub = write(
                dir,
                "sub.pem",
                pem_block("CERTIFICATE", certs[1]).unwrap().as_bytes(),
            );
            let leaf = write(
                dir,
                "leaf.pem",
                pem_block("CERTIFICATE", certs[0]).unwrap().as_bytes(),
            );
            let out = openssl_ok(&[
                "verify",
                "-CAfile",
                s(&root),
                "-untrusted",
                s(&sub),
                s(&leaf),
            ]);
            assert!(out.contains(": OK"), "{out}");
        }
    }

    #[test]
    fn pem_bundle_opens_in_openssl() {
        let dir = tempfile::tempdir().unwrap();
        for kind in [LeafKey::P256, LeafKey::P384, LeafKey::Rsa2048] {
            let pki = pki(kind);
            let certs: [&[u8]; 3] = [&pki.leaf, &pki.sub, &pki.root];
            let pem = pem_bundle(&certs, &pki.leaf_key, PASS.as_bytes()).unwrap();
            check_pem_bundle(dir.path(), &pem, &certs);

            let pem = pem_bundle(&certs[..1], &pki.leaf_key, PASS.as_bytes()).unwrap();
            check_pem_bundle(dir.path(), &pem, &certs[..1]);
        }
    }

    #[test]
    fn pem_salt_and_iv_are_fresh_each_time() {
        let pki = pki(LeafKey::P256);
        let certs: [&[u8]; 1] = [&pki.leaf];
        let a = pem_bundle(&certs, &pki.leaf_key, PASS.as_bytes()).unwrap();
        let b = pem_bundle(&certs, &pki.leaf_key, PASS.as_bytes()).unwrap();
        assert_ne!(*a, *b);
    }

    #[test]
    fn outputs_do_not_contain_the_plain_key() {
        use p256::pkcs8::DecodePrivateKey;

        for kind in [LeafKey::P256, LeafKey::Rsa2048] {
            let pki = pki(kind);
            let key_info = PrivateKeyInfoRef::try_from(pki.leaf_key.as_slice()).unwrap();
            // The whole PrivateKeyInfo, its inner private key and (EC) the
            // bare scalar.
            let mut needles: Vec<Zeroizing<Vec<u8>>> = vec![
                pki.leaf_key.clone(),
                Zeroizing::new(key_info.private_key.as_bytes().to_vec()),
            ];
            if let LeafKey::P256 = kind {
                let secret = p256::SecretKey::from_pkcs8_der(&pki.leaf_key).unwrap();
                needles.push(Zeroizing::new(secret.to_bytes().to_vec()));
            }

            let certs: [&[u8]; 3] = [&pki.leaf, &pki.sub, &pki.root];
            let pem = pem_bundle(&certs, &pki.leaf_key, PASS.as_bytes()).unwrap();
            let mut decoded = Vec::new();
            let mut rest = pem.as_str();
            while let Some(end) = rest.find("-----END ") {
                let end = end + rest[end..].find('\n').unwrap() + 1;
                decoded.push(pem::decode_vec(&rest.as_bytes()[..end]).unwrap().1);
                rest = &rest[end..];
            }
            assert_eq!(decoded.len(), 4);

            let p12 = p12(&pki.leaf, &certs[1..], &pki.leaf_key, PASS, NAME).unwrap();
            for needle in &needles {
                assert!(!contains(&p12, needle), "{kind:?}: plain key in the P12");
                assert!(
                    !contains(pem.as_bytes(), needle),
                    "{kind:?}: plain key in the PEM"
                );
                for block in &decoded {
                    assert!(
                        !contains(block, needle),
                        "{kind:?}: plain key in a PEM block"
                    );
                }
            }
        }
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let a = pki(LeafKey::P256);
        let b = pki(LeafKey::P256);
        let c = pki(LeafKey::Rsa2048);
        for (leaf, key) in [
            (&a.leaf, &b.leaf_key),
            (&a.leaf, &c.leaf_key),
            (&c.leaf, &a.leaf_key),
        ] {
            assert!(matches!(
                pem_bundle(&[leaf.as_slice()], key, PASS.as_bytes()),
                Err(PackageError::KeyMismatch)
            ));
            assert!(matches!(
                p12(leaf, &[], key, PASS, NAME),
                Err(PackageError::KeyMismatch)
            ));
        }
    }

    #[test]
    fn malformed_input_is_refused_without_leaking_secrets() {
        let pki = pki(LeafKey::P256);
        let certs: [&[u8]; 2] = [&pki.leaf, &pki.sub];

        // A key that is not PKCS#8 (truncated), and an encrypted one.
        let truncated = &pki.leaf_key[..pki.leaf_key.len() - 1];
        let encrypted_pem = pem_bundle(&certs[..1], &pki.leaf_key, PASS.as_bytes()).unwrap();
        let encrypted = pem::decode_vec(
            &encrypted_pem.as_bytes()[encrypted_pem.find("-----BEGIN ENCRYPTED").unwrap()..],
        )
        .unwrap()
        .1;
        for bad_key in [truncated, encrypted.as_slice(), b"".as_slice()] {
            let errors = [
                pem_bundle(&certs, bad_key, PASS.as_bytes()).unwrap_err(),
                p12(&pki.leaf, &[], bad_key, PASS, NAME).unwrap_err(),
            ];
            for error in errors {
                assert!(matches!(error, PackageError::Key(_)), "{error:?}");
                let shown = format!("{error} {error:?}");
                assert!(!shown.contains(PASS), "{shown}");
                assert!(!contains(
                    shown.as_bytes(),
                    &pki.leaf_key[pki.leaf_key.len() - 8..]
                ));
            }
        }

        // Certificates: none, a broken leaf, a broken chain member.
        assert!(matches!(
            pem_bundle(&[], &pki.leaf_key, PASS.as_bytes()),
            Err(PackageError::Certificate { index: 0, .. })
        ));
        let broken = &pki.sub[..pki.sub.len() - 1];
        let mut trailing = pki.leaf.clone();
        trailing.push(0);
        assert!(matches!(
            pem_bundle(&[trailing.as_slice()], &pki.leaf_key, PASS.as_bytes()),
            Err(PackageError::Certificate { index: 0, .. })
        ));
        assert!(matches!(
            pem_bundle(
                &[pki.leaf.as_slice(), broken],
                &pki.leaf_key,
                PASS.as_bytes()
            ),
            Err(PackageError::Certificate { index: 1, .. })
        ));
        assert!(matches!(
            p12(
                &pki.leaf,
                &[pki.root.as_slice(), broken],
                &pki.leaf_key,
                PASS,
                NAME
            ),
            Err(PackageError::Certificate { index: 2, .. })
        ));
        assert!(matches!(
            p12(broken, &[], &pki.leaf_key, PASS, NAME),
            Err(PackageError::Certificate { index: 0, .. })
        ));
    }

    #[test]
    fn p12_names_and_passphrases_outside_the_bmp_are_refused() {
        let pki = pki(LeafKey::P256);
        for (pass, name) in [(PASS, "key \u{1F511}"), ("pass \u{1F511}", NAME)] {
            let error = p12(&pki.leaf, &[], &pki.leaf_key, pass, name).unwrap_err();
            assert!(matches!(error, PackageError::Encode(_)), "{error:?}");
            assert!(!format!("{error} {error:?}").contains(pass));
        }
    }

    #[test]
    fn p12_reads_back_with_p12_keystore() {
        let pki = pki(LeafKey::P384);
        let chain: [&[u8]; 2] = [&pki.sub, &pki.root];
        let p12 = p12(&pki.leaf, &chain, &pki.leaf_key, PASS, NAME).unwrap();
        let store =
            KeyStore::from_pkcs12(&p12, PASS, p12_keystore::Pkcs12ImportPolicy::Strict).unwrap();
        let (alias, chain) = store.private_key_chain().unwrap();
        assert_eq!(alias, NAME);
        assert_eq!(chain.key().as_der(), pki.leaf_key.as_slice());
        let certs: Vec<&[u8]> = chain.certs().iter().map(Certificate::as_der).collect();
        assert_eq!(certs, [pki.leaf.as_slice(), &pki.sub, &pki.root]);
        assert!(
            KeyStore::from_pkcs12(&p12, WRONG, p12_keystore::Pkcs12ImportPolicy::Strict).is_err()
        );
    }
}
