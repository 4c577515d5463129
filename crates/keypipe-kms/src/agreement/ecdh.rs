//! ECDH over P-256 and P-384 (RustCrypto `p256`, `p384`): fresh key pairs,
//! point validation, the shared secret (the x-coordinate, SP 800-56A).

use p256::pkcs8::EncodePublicKey;
use zeroize::Zeroizing;

/// One of the two curves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// NIST P-256.
    P256,
    /// NIST P-384.
    P384,
}

/// A validated peer point.
#[derive(Debug, Clone)]
pub enum PeerPoint {
    /// On P-256.
    P256(p256::PublicKey),
    /// On P-384.
    P384(p384::PublicKey),
}

/// An ephemeral private key (the `SecretKey`s zeroize on drop).
pub enum PrivateKey {
    /// On P-256.
    P256(p256::SecretKey),
    /// On P-384.
    P384(p384::SecretKey),
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ecdh::PrivateKey(<redacted>)")
    }
}

/// Why a point was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EcKeyError {
    /// Not on the curve, the identity, or a malformed encoding.
    #[error("is not a valid point of the curve (off the curve, the identity, or malformed)")]
    Invalid,
}

impl Curve {
    /// Length of an uncompressed SEC1 point: 65 or 97.
    pub fn point_len(self) -> usize {
        match self {
            Curve::P256 => 65,
            Curve::P384 => 97,
        }
    }

    /// A fresh key pair from the OS random source; the public key as an
    /// uncompressed SEC1 point.
    pub fn generate(self) -> Result<(PrivateKey, PeerPoint), getrandom::Error> {
        let mut bytes = Zeroizing::new([0u8; 48]);
        loop {
            let n = match self {
                Curve::P256 => 32,
                Curve::P384 => 48,
            };
            getrandom::fill(&mut bytes[..n])?;
            // Rejection sampling: zero or ≥ n is refused, draw again.
            match self {
                Curve::P256 => {
                    if let Ok(k) = p256::SecretKey::from_slice(&bytes[..n]) {
                        let public = PeerPoint::P256(k.public_key());
                        return Ok((PrivateKey::P256(k), public));
                    }
                }
                Curve::P384 => {
                    if let Ok(k) = p384::SecretKey::from_slice(&bytes[..n]) {
                        let public = PeerPoint::P384(k.public_key());
                        return Ok((PrivateKey::P384(k), public));
                    }
                }
            }
        }
    }

    /// Parses and validates an uncompressed SEC1 point (`04 ‖ X ‖ Y`).
    pub fn point_from_sec1(self, bytes: &[u8]) -> Result<PeerPoint, EcKeyError> {
        if bytes.len() != self.point_len() || bytes[0] != 0x04 {
            return Err(EcKeyError::Invalid);
        }
        Ok(match self {
            Curve::P256 => PeerPoint::P256(
                p256::PublicKey::from_sec1_bytes(bytes).map_err(|_| EcKeyError::Invalid)?,
            ),
            Curve::P384 => PeerPoint::P384(
                p384::PublicKey::from_sec1_bytes(bytes).map_err(|_| EcKeyError::Invalid)?,
            ),
        })
    }
}

impl PeerPoint {
    /// The point's curve.
    pub fn curve(&self) -> Curve {
        match self {
            PeerPoint::P256(_) => Curve::P256,
            PeerPoint::P384(_) => Curve::P384,
        }
    }

    /// The uncompressed SEC1 encoding.
    pub fn to_sec1(&self) -> Vec<u8> {
        match self {
            PeerPoint::P256(k) => k.to_sec1_bytes().into_vec(),
            PeerPoint::P384(k) => k.to_sec1_bytes().into_vec(),
        }
    }

    /// The SubjectPublicKeyInfo DER encoding (id-ecPublicKey, named curve).
    pub fn to_spki(&self) -> Vec<u8> {
        let doc = match self {
            PeerPoint::P256(k) => k.to_public_key_der(),
            PeerPoint::P384(k) => k.to_public_key_der(),
        };
        doc.expect("a valid point always encodes")
            .as_bytes()
            .to_vec()
    }
}

impl PrivateKey {
    /// The shared secret with `peer` (its x-coordinate, 32 or 48 bytes);
    /// `None` when `peer` is on the other curve.
    pub fn agree(&self, peer: &PeerPoint) -> Option<Zeroizing<Vec<u8>>> {
        match (self, peer) {
            (PrivateKey::P256(k), PeerPoint::P256(p)) => Some(Zeroizing::new(
                k.diffie_hellman(p).raw_secret_bytes().to_vec(),
            )),
            (PrivateKey::P384(k), PeerPoint::P384(p)) => Some(Zeroizing::new(
                k.diffie_hellman(p).raw_secret_bytes().to_vec(),
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_agree_and_encodings_round_trip() {
        for curve in [Curve::P256, Curve::P384] {
            let (a, pa) = curve.generate().unwrap();
            let (b, pb) = curve.generate().unwrap();
            assert_eq!(*a.agree(&pb).unwrap(), *b.agree(&pa).unwrap());
            let sec1 = pa.to_sec1();
            assert_eq!(sec1.len(), curve.point_len());
            assert_eq!(curve.point_from_sec1(&sec1).unwrap().to_sec1(), sec1);
            assert_eq!(pa.to_spki()[pa.to_spki().len() - sec1.len()..], sec1[..]);
        }
    }

    #[test]
    fn bad_points_are_refused() {
        for curve in [Curve::P256, Curve::P384] {
            let (_, p) = curve.generate().unwrap();
            let mut off = p.to_sec1();
            *off.last_mut().unwrap() ^= 1; // y no longer matches x
            assert!(curve.point_from_sec1(&off).is_err());
            let zeros = vec![0u8; curve.point_len()];
            assert!(curve.point_from_sec1(&zeros).is_err());
            let mut compressed = vec![0x02];
            compressed.extend_from_slice(&p.to_sec1()[1..curve.point_len() / 2 + 1]);
            assert!(curve.point_from_sec1(&compressed).is_err());
        }
        let (k, _) = Curve::P256.generate().unwrap();
        let (_, other) = Curve::P384.generate().unwrap();
        assert!(k.agree(&other).is_none());
    }
}
