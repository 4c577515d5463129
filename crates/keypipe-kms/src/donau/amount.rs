//! Taler amounts: `CUR:VALUE[.FRACTION]`, with CUR 1 to 11 letters `A-Z`,
//! VALUE at most 2^52 and FRACTION 1 to 8 digits (units of 10^-8).
//!
//! Parsing is strict about the form (`EUR:1.` and `EUR:1.000000001` are
//! refused) but accepts trailing zeros in the fraction (`EUR:1.50`), which
//! formatting drops: the canonical text has no trailing zeros and no
//! fraction part when it is zero (`EUR:10`, `EUR:0.5`).

use std::fmt;
use std::str::FromStr;

/// Largest VALUE.
pub const MAX_VALUE: u64 = 1 << 52;
/// Fraction units per unit.
pub const FRACTION_BASE: u32 = 100_000_000;
/// Longest currency code.
const MAX_CURRENCY: usize = 11;

/// An amount of a currency.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Amount {
    /// The currency code (upper case).
    pub currency: String,
    /// Whole units.
    pub value: u64,
    /// Fraction, in units of 10^-8.
    pub fraction: u32,
}

/// Why an amount text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid amount {text:?}: {why}")]
pub struct AmountError {
    text: String,
    why: &'static str,
}

/// Checks a currency code: 1 to 11 letters `A-Z`.
pub fn check_currency(code: &str) -> Result<(), &'static str> {
    if code.is_empty() || code.len() > MAX_CURRENCY || !code.bytes().all(|b| b.is_ascii_uppercase())
    {
        return Err("the currency must be 1 to 11 upper-case letters A-Z");
    }
    Ok(())
}

impl FromStr for Amount {
    type Err = AmountError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |why| AmountError {
            text: text.chars().take(64).collect(),
            why,
        };
        let (currency, number) = text.split_once(':').ok_or_else(|| err("no ':'"))?;
        check_currency(currency).map_err(err)?;
        let (whole, fraction) = match number.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (number, None),
        };
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("the value must be decimal digits"));
        }
        let value: u64 = whole.parse().map_err(|_| err("the value is above 2^52"))?;
        if value > MAX_VALUE {
            return Err(err("the value is above 2^52"));
        }
        let fraction = match fraction {
            None => 0,
            Some(f) if f.is_empty() || f.len() > 8 || !f.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(err("the fraction must be 1 to 8 decimal digits"));
            }
            Some(f) => {
                let digits: u32 = f.parse().map_err(|_| err("bad fraction"))?;
                digits * 10u32.pow(8 - f.len() as u32)
            }
        };
        Ok(Amount {
            currency: currency.to_owned(),
            value,
            fraction,
        })
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.currency, self.value)?;
        if self.fraction > 0 {
            let digits = format!("{:08}", self.fraction);
            write!(f, ".{}", digits.trim_end_matches('0'))?;
        }
        Ok(())
    }
}

impl<'de> serde::Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip() {
        for text in [
            "EUR:10",
            "EUR:0.5",
            "EUR:1.01",
            "KUDOS:0.00000001",
            "A:0",
            "ABCDEFGHIJK:4503599627370496",
        ] {
            let a: Amount = text.parse().unwrap();
            assert_eq!(a.to_string(), text);
        }
        let a: Amount = "EUR:1.01".parse().unwrap();
        assert_eq!((a.value, a.fraction), (1, 1_000_000));
        assert_eq!("EUR:1.50".parse::<Amount>().unwrap().to_string(), "EUR:1.5");
        assert_eq!("EUR:2.0".parse::<Amount>().unwrap().to_string(), "EUR:2");
    }

    #[test]
    fn malformed_amounts_are_refused() {
        for text in [
            "EUR:1.",
            "EUR:1.000000001",
            "eur:1",
            "Eur:1",
            "ABCDEFGHIJKL:1",
            ":1",
            "EUR:4503599627370497",
            "EUR:99999999999999999999999",
            "EUR",
            "EUR:",
            "EUR:.5",
            "EUR:-1",
            "EUR:1.-5",
            "EUR:1e3",
            "EUR: 1",
        ] {
            let e = text.parse::<Amount>().unwrap_err();
            assert!(e.to_string().contains("invalid amount"), "{text}: {e}");
        }
    }
}
