//! Finite-field Diffie-Hellman over the RFC 7919 groups ffdhe2048 and
//! ffdhe3072 (generator 2, safe primes p = 2q + 1), with `crypto-bigint`'s
//! constant-time Montgomery exponentiation.
//!
//! - Private exponents are short, as RFC 7919 §5.2 and SP 800-56A rev. 3
//!   §5.6.1.1.1 allow for safe-prime groups: 256 random bits for
//!   ffdhe2048 (112-bit strength, at least 225 bits asked) and 320 for
//!   ffdhe3072 (128-bit strength, at least 275 asked). The exponentiation
//!   runs over all of those bits whatever their value.
//! - A peer's `y` must satisfy `1 < y < p − 1` and `y^q = 1 (mod p)`, i.e.
//!   lie in the prime-order subgroup. For a safe prime that is, by Euler's
//!   criterion, the Legendre symbol `(y | p) = 1`, which is computed here
//!   (`y` is public, so variable time is fine) instead of a full-length
//!   exponentiation; a test checks both agree.
//! - The shared secret `Z` is `y^x mod p`, big-endian, padded to the length
//!   of `p` (SP 800-56A).

use crypto_bigint::modular::{FixedMontyForm, FixedMontyParams};
use crypto_bigint::{JacobiSymbol, Odd, U2048, U3072, Uint};
use zeroize::{Zeroize, Zeroizing};

/// ffdhe2048's prime (RFC 7919 appendix A.1).
const P2048_HEX: &str = concat!(
    "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695",
    "A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A",
    "D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935",
    "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A",
    "BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4",
    "AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61",
    "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005",
    "C58EF1837D1683B2C6F34A26C1B2EFFA886B423861285C97FFFFFFFFFFFFFFFF",
);

/// ffdhe3072's prime (RFC 7919 appendix A.2).
const P3072_HEX: &str = concat!(
    "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695",
    "A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A",
    "D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935",
    "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A",
    "BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4",
    "AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61",
    "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005",
    "C58EF1837D1683B2C6F34A26C1B2EFFA886B4238611FCFDCDE355B3B6519035B",
    "BC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91C",
    "AEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF",
    "5CAE82AB9C9DF69EE86D2BC522363A0DABC521979B0DEADA1DBF9A42D5C4484E",
    "0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B66C62E37FFFFFFFFFFFFFFFF",
);

/// Limbs of the private exponent (320 bits on 64-bit targets; the
/// exponent bits used are the group's `exp_bits`).
type Exponent = Uint<{ 320 / crypto_bigint::Limb::BITS as usize }>;

/// One of the two groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// ffdhe2048.
    Ffdhe2048,
    /// ffdhe3072.
    Ffdhe3072,
}

/// Why a peer's `y` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DhKeyError {
    /// More bytes than the prime has.
    #[error("is longer than the group's prime")]
    TooLong,
    /// `y ≤ 1` or `y ≥ p − 1`.
    #[error("is out of range (it must satisfy 1 < y < p-1)")]
    OutOfRange,
    /// `y^q ≠ 1 (mod p)`.
    #[error("is not in the prime-order subgroup (y^q mod p != 1)")]
    NotInSubgroup,
}

/// A private exponent (zeroized on drop) and its group.
pub struct PrivateKey {
    group: Group,
    x: Zeroizing<Exponent>,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateKey")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl Group {
    /// Bytes of the prime (and of `y` and `Z`): 256 or 384.
    pub fn byte_len(self) -> usize {
        match self {
            Group::Ffdhe2048 => 256,
            Group::Ffdhe3072 => 384,
        }
    }

    /// The prime, big-endian, `byte_len()` bytes.
    pub fn prime_be(self) -> &'static [u8] {
        &self.encoded().0
    }

    /// The subgroup order `q = (p − 1) / 2`, minimal big-endian.
    pub fn q_be(self) -> &'static [u8] {
        &self.encoded().1
    }

    /// `p` and `q` as bytes, made once.
    fn encoded(self) -> &'static (Vec<u8>, Vec<u8>) {
        fn encode<const L: usize>(p: &Odd<Uint<L>>) -> (Vec<u8>, Vec<u8>) {
            let q = p.as_ref().shr_vartime(1).to_be_bytes();
            let q = q.as_ref();
            let zeros = q.iter().take_while(|&&b| b == 0).count();
            (
                p.as_ref().to_be_bytes().as_ref().to_vec(),
                q[zeros..].to_vec(),
            )
        }
        static P2048: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
        static P3072: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
        match self {
            Group::Ffdhe2048 => P2048.get_or_init(|| encode(p2048())),
            Group::Ffdhe3072 => P3072.get_or_init(|| encode(p3072())),
        }
    }

    /// Private exponent bits.
    fn exp_bits(self) -> u32 {
        match self {
            Group::Ffdhe2048 => 256,
            Group::Ffdhe3072 => 320,
        }
    }

    /// A fresh private exponent from the OS random source, and its public
    /// value `2^x mod p` (`len()` bytes).
    pub fn generate(self) -> Result<(PrivateKey, Vec<u8>), getrandom::Error> {
        let mut bytes = Zeroizing::new([0u8; Exponent::BYTES]);
        let used = self.exp_bits() as usize / 8;
        let x = loop {
            getrandom::fill(&mut bytes[Exponent::BYTES - used..])?;
            let x = Zeroizing::new(Exponent::from_be_slice(&bytes[..]));
            if !bool::from(x.is_zero()) {
                break x;
            }
        };
        let key = PrivateKey { group: self, x };
        let y = key.power_of(&two(self));
        Ok((key, y.to_vec()))
    }

    /// Checks a peer's public value (big-endian, at most `len()` bytes).
    pub fn validate(self, y: &[u8]) -> Result<(), DhKeyError> {
        if y.len() > self.byte_len() {
            return Err(DhKeyError::TooLong);
        }
        match self {
            Group::Ffdhe2048 => validate_in(p2048(), y),
            Group::Ffdhe3072 => validate_in(p3072(), y),
        }
    }
}

impl PrivateKey {
    /// `Z = y^x mod p`, padded to the prime's length. `y` must have passed
    /// [`Group::validate`].
    pub fn agree(&self, y: &[u8]) -> Zeroizing<Vec<u8>> {
        self.power_of(y)
    }

    /// `base^x mod p`, `len()` bytes; `base` big-endian, at most `len()`.
    fn power_of(&self, base: &[u8]) -> Zeroizing<Vec<u8>> {
        let bits = self.group.exp_bits();
        match self.group {
            Group::Ffdhe2048 => pow_in(p2048(), base, &self.x, bits),
            Group::Ffdhe3072 => pow_in(p3072(), base, &self.x, bits),
        }
    }
}

fn p2048() -> &'static Odd<U2048> {
    static P: std::sync::OnceLock<Odd<U2048>> = std::sync::OnceLock::new();
    P.get_or_init(|| Odd::new(U2048::from_be_hex(P2048_HEX)).expect("the prime is odd"))
}

fn p3072() -> &'static Odd<U3072> {
    static P: std::sync::OnceLock<Odd<U3072>> = std::sync::OnceLock::new();
    P.get_or_init(|| Odd::new(U3072::from_be_hex(P3072_HEX)).expect("the prime is odd"))
}

/// The generator, 2, as `len()` big-endian bytes.
fn two(group: Group) -> Vec<u8> {
    let mut g = vec![0u8; group.byte_len()];
    g[group.byte_len() - 1] = 2;
    g
}

/// `bytes` (at most the width of `Uint<L>`) as a number.
fn to_uint<const L: usize>(bytes: &[u8]) -> Uint<L> {
    let mut padded = Zeroizing::new(vec![0u8; Uint::<L>::BYTES]);
    padded[Uint::<L>::BYTES - bytes.len()..].copy_from_slice(bytes);
    Uint::from_be_slice(&padded)
}

fn validate_in<const L: usize>(p: &Odd<Uint<L>>, y: &[u8]) -> Result<(), DhKeyError> {
    let y = to_uint::<L>(y);
    let p_minus_1 = p.as_ref().wrapping_sub(&Uint::ONE);
    if y <= Uint::ONE || y >= p_minus_1 {
        return Err(DhKeyError::OutOfRange);
    }
    // Euler's criterion: y^q = (y | p) mod p for p = 2q + 1 prime.
    match y.jacobi_symbol_vartime(p) {
        JacobiSymbol::One => Ok(()),
        _ => Err(DhKeyError::NotInSubgroup),
    }
}

fn pow_in<const L: usize>(
    p: &Odd<Uint<L>>,
    base: &[u8],
    x: &Exponent,
    bits: u32,
) -> Zeroizing<Vec<u8>> {
    let params = FixedMontyParams::new_vartime(*p);
    let base = FixedMontyForm::new(&to_uint::<L>(base), &params);
    let mut power = base.pow_bounded_exp(x, bits);
    let mut z = power.retrieve();
    let mut encoded = z.to_be_bytes();
    let out = Zeroizing::new(encoded.as_ref().to_vec());
    power.zeroize();
    z.zeroize();
    encoded.zeroize();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q_of<const L: usize>(p: &Odd<Uint<L>>) -> Uint<L> {
        p.as_ref().shr_vartime(1)
    }

    /// `y^q mod p` the long way, for checking the Legendre shortcut.
    fn euler<const L: usize>(p: &Odd<Uint<L>>, y: &[u8]) -> bool {
        let params = FixedMontyParams::new_vartime(*p);
        let y = FixedMontyForm::new(&to_uint::<L>(y), &params);
        y.pow_vartime(&q_of(p)).retrieve() == Uint::ONE
    }

    #[test]
    fn primes_are_the_rfc_7919_ones() {
        // Shape of RFC 7919 primes: 64 one bits at both ends.
        for group in [Group::Ffdhe2048, Group::Ffdhe3072] {
            let p = group.prime_be();
            assert_eq!(p.len(), group.byte_len());
            // q = (p - 1) / 2: one bit shorter, its top byte 0x7f.
            assert_eq!(group.q_be().len(), group.byte_len());
            assert_eq!(group.q_be()[0], 0x7f);
            assert!(p[..8].iter().chain(&p[p.len() - 8..]).all(|&b| b == 0xff));
        }
        assert_eq!(p2048().as_ref().bit_width(), 2048);
        assert_eq!(p3072().as_ref().bit_width(), 3072);
    }

    #[test]
    fn both_sides_agree_and_public_values_validate() {
        for group in [Group::Ffdhe2048, Group::Ffdhe3072] {
            let (a, ya) = group.generate().unwrap();
            let (b, yb) = group.generate().unwrap();
            assert_eq!(ya.len(), group.byte_len());
            group.validate(&ya).unwrap();
            group.validate(&yb).unwrap();
            assert_eq!(*a.agree(&yb), *b.agree(&ya));
            assert_ne!(ya, yb);
            // 2 is a quadratic residue mod these primes (p = 7 mod 8), so
            // every 2^x lies in the subgroup: the check agrees with Euler.
            let ok = match group {
                Group::Ffdhe2048 => euler(p2048(), &ya),
                Group::Ffdhe3072 => euler(p3072(), &ya),
            };
            assert!(ok);
        }
    }

    #[test]
    fn legendre_check_matches_y_to_the_q() {
        // Small values both inside and outside the subgroup.
        for v in 2u32..40 {
            let y = v.to_be_bytes();
            let expected = euler(p2048(), &y);
            assert_eq!(Group::Ffdhe2048.validate(&y).is_ok(), expected, "y = {v}");
            let expected = euler(p3072(), &y);
            assert_eq!(Group::Ffdhe3072.validate(&y).is_ok(), expected, "y = {v}");
        }
        // p - 2 is -2 mod p; -1 is a non-residue (p = 3 mod 4), so -2 is not.
        let mut p_minus_2 = Group::Ffdhe2048.prime_be().to_vec();
        *p_minus_2.last_mut().unwrap() -= 2;
        assert!(!euler(p2048(), &p_minus_2));
        assert_eq!(
            Group::Ffdhe2048.validate(&p_minus_2),
            Err(DhKeyError::NotInSubgroup)
        );
    }

    #[test]
    fn out_of_range_values_are_refused() {
        for group in [Group::Ffdhe2048, Group::Ffdhe3072] {
            let p = group.prime_be().to_vec();
            let mut p_minus_1 = p.clone();
            *p_minus_1.last_mut().unwrap() -= 1;
            for y in [vec![0u8], vec![1u8], vec![], p_minus_1, p.clone()] {
                assert_eq!(group.validate(&y), Err(DhKeyError::OutOfRange));
            }
            let all_ones = vec![0xffu8; group.byte_len()];
            assert_eq!(group.validate(&all_ones), Err(DhKeyError::OutOfRange));
            let mut long = vec![0u8];
            long.extend_from_slice(&p);
            assert_eq!(group.validate(&long), Err(DhKeyError::TooLong));
        }
    }
}
