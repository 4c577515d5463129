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

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn valid_amount() -> impl Strategy<Value = Amount> {
            (
                "[A-Z]{1,11}",
                prop_oneof![Just(0), Just(MAX_VALUE), 0..=MAX_VALUE],
                prop_oneof![Just(0), Just(FRACTION_BASE - 1), 0..FRACTION_BASE],
            )
                .prop_map(|(currency, value, fraction)| Amount {
                    currency,
                    value,
                    fraction,
                })
        }

        /// The documented grammar, checked independently of the parser:
        /// `[A-Z]{1,11}:[0-9]+(\.[0-9]{1,8})?` with VALUE ≤ 2^52.
        fn documented_valid(text: &str) -> bool {
            let Some((cur, num)) = text.split_once(':') else {
                return false;
            };
            let (whole, frac) = match num.split_once('.') {
                Some((w, f)) => (w, Some(f)),
                None => (num, None),
            };
            let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
            let trimmed = whole.trim_start_matches('0');
            (1..=11).contains(&cur.len())
                && cur.chars().all(|c| c.is_ascii_uppercase())
                && digits(whole)
                && (trimmed.len() < 16 || (trimmed.len() == 16 && trimmed <= "4503599627370496"))
                && frac.is_none_or(|f| digits(f) && f.len() <= 8)
        }

        /// Text near the grammar: letters, digits, separators and a few
        /// strays, so that both branches of every check are reached.
        fn near_amount_text() -> impl Strategy<Value = String> {
            (
                prop_oneof![3 => "[A-Z]{1,11}", 1 => "[A-Za-z]{0,13}"],
                prop_oneof![3 => Just(":"), 1 => Just(""), 1 => Just("::"), 1 => Just(" :")],
                prop_oneof![
                    3 => "[0-9]{1,17}",
                    1 => "[0-9]{0,22}",
                    1 => "[0-9+ -]{0,4}",
                    1 => Just("4503599627370496".to_owned()),
                    1 => Just("4503599627370497".to_owned()),
                ],
                prop_oneof![
                    2 => Just(String::new()),
                    2 => "\\.[0-9]{0,10}",
                    1 => "\\.[0-9.e+-]{0,3}",
                ],
            )
                .prop_map(|(c, s, w, f)| format!("{c}{s}{w}{f}"))
        }

        proptest! {
            #[test]
            fn parse_of_format_is_identity(a in valid_amount()) {
                let text = a.to_string();
                prop_assert_eq!(text.parse::<Amount>(), Ok(a));
            }

            #[test]
            fn format_is_canonical_and_trailing_fraction_zeros_parse_the_same(
                a in valid_amount(),
                extra in 0usize..8,
            ) {
                let text = a.to_string();
                // Canonical: no '.' for a zero fraction, no trailing zero.
                match text.split_once('.') {
                    None => prop_assert_eq!(a.fraction, 0),
                    Some((_, f)) => {
                        prop_assert!(
                            a.fraction != 0 && !f.ends_with('0') && f.len() <= 8,
                            "{}",
                            text
                        );
                    }
                }
                // The same amount with its fraction padded by zeros (up
                // to 8 digits) parses to the same amount and formats back.
                let digits = format!("{:08}", a.fraction);
                let kept = digits.trim_end_matches('0').len().max(1);
                let fraction = &digits[..(kept + extra).min(8)];
                let padded = format!("{}:{}.{fraction}", a.currency, a.value);
                let parsed = padded.parse::<Amount>();
                prop_assert_eq!(parsed.as_ref(), Ok(&a), "{}", padded);
                prop_assert_eq!(parsed.unwrap().to_string(), text);
            }

            #[test]
            fn arbitrary_text_never_panics_and_what_is_accepted_is_in_range(
                text in any::<String>(),
            ) {
                if let Ok(a) = text.parse::<Amount>() {
                    prop_assert!(documented_valid(&text), "{}", text);
                    prop_assert!(a.value <= MAX_VALUE && a.fraction < FRACTION_BASE);
                    prop_assert_eq!(a.to_string().parse::<Amount>(), Ok(a));
                }
            }

            #[test]
            fn parse_accepts_exactly_the_documented_grammar(text in near_amount_text()) {
                let parsed = text.parse::<Amount>();
                prop_assert_eq!(
                    parsed.is_ok(),
                    documented_valid(&text),
                    "{:?}: {:?}",
                    text,
                    parsed
                );
                if let Ok(a) = parsed {
                    prop_assert!(a.value <= MAX_VALUE && a.fraction < FRACTION_BASE);
                    prop_assert_eq!(a.to_string().parse::<Amount>(), Ok(a));
                }
            }

            #[test]
            fn values_above_2_pow_52_are_refused(
                cur in "[A-Z]{1,11}",
                value in prop_oneof![Just(MAX_VALUE + 1), Just(u64::MAX), (MAX_VALUE + 1)..],
                fraction in prop_oneof![Just(String::new()), "\\.[0-9]{1,8}"],
            ) {
                let text = format!("{cur}:{value}{fraction}");
                prop_assert!(text.parse::<Amount>().is_err(), "{}", text);
                // Beyond u64 too.
                let text = format!("{cur}:{value}0{fraction}");
                prop_assert!(text.parse::<Amount>().is_err(), "{}", text);
            }

            #[test]
            fn fractions_of_more_than_8_digits_are_refused(
                a in valid_amount(),
                fraction in "[0-9]{9,30}",
            ) {
                let text = format!("{}:{}.{fraction}", a.currency, a.value);
                prop_assert!(text.parse::<Amount>().is_err(), "{}", text);
            }

            #[test]
            fn currencies_other_than_1_to_11_upper_case_letters_are_refused(
                a in valid_amount(),
                cur in prop_oneof![
                    "[A-Z]{12,30}",
                    "[A-Z]{0,5}[a-z0-9_ é][A-Z]{0,5}",
                    Just(String::new()),
                ],
            ) {
                let text = format!("{cur}:{}", a.value);
                prop_assert!(text.parse::<Amount>().is_err(), "{}", text);
                prop_assert!(check_currency(&cur).is_err(), "{}", cur);
            }
        }
    }
}
