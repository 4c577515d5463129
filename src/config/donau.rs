//! `[donau]`: what the GNU Taler Donau publishes (currency, base URL, key
//! sizes, donation units), kept with each value's place in the file so a
//! bad value is reported by line.

use serde::Deserialize;
use toml::Spanned;

use crate::kms::donau::amount::check_currency;
use crate::kms::donau::{Amount, Cipher, DonauConfig, UnitConfig};

/// A currency code, checked as it is read (1 to 11 letters `A-Z`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Currency(pub String);

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = String::deserialize(d)?;
        check_currency(&code)
            .map_err(|why| serde::de::Error::custom(format!("invalid currency {code:?}: {why}")))?;
        Ok(Currency(code))
    }
}

/// `[donau]`: what the Donau publishes (served by nodes with `donau`).
/// Fields are kept with their place in the file, for error messages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DonauSettings {
    /// The currency of every donation unit.
    pub currency: Currency,
    /// The legal/financial domain shown to donors.
    pub legal_domain: String,
    /// The Donau's public base URL (`http(s)://…/`).
    pub base_url: Spanned<String>,
    /// Where `keys` is served: `{base_path}keys` (default `/`).
    #[serde(default = "default_base_path")]
    pub base_path: Spanned<String>,
    /// RSA modulus size of new RSA keys (1024 to 8192, multiple of 256).
    #[serde(default = "default_rsa_bits")]
    pub rsa_bits: Spanned<usize>,
    /// Years with a signing key (omitted: the current year at start-up).
    #[serde(default)]
    pub signkey_years: Option<Spanned<Vec<u16>>>,
    /// The donation units.
    pub donation_units: Spanned<Vec<Spanned<DonationUnitSettings>>>,
}

fn default_base_path() -> Spanned<String> {
    Spanned::new(0..0, "/".into())
}

fn default_rsa_bits() -> Spanned<usize> {
    Spanned::new(0..0, 2048)
}

/// Years a Donau key may be for.
const DONAU_YEARS: std::ops::RangeInclusive<u16> = 1970..=9999;

/// One donation unit of `[donau]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DonationUnitSettings {
    /// Its value, e.g. `"EUR:10"`.
    pub value: Amount,
    /// `"RSA"` or `"CS"`.
    pub cipher: Cipher,
    /// Years with a key (omitted: the current year at start-up).
    #[serde(default)]
    pub years: Option<Vec<u16>>,
}

impl DonauSettings {
    /// The service settings (omitted years become the current year).
    pub fn service_config(&self) -> DonauConfig {
        let current = crate::kms::donau::current_year();
        let years = |y: Option<&Vec<u16>>| y.cloned().unwrap_or_else(|| vec![current]);
        DonauConfig {
            currency: self.currency.0.clone(),
            legal_domain: self.legal_domain.clone(),
            base_url: self.base_url.get_ref().clone(),
            units: self
                .donation_units
                .get_ref()
                .iter()
                .map(|u| {
                    let u = u.get_ref();
                    UnitConfig {
                        value: u.value.clone(),
                        cipher: u.cipher,
                        years: years(u.years.as_ref()),
                    }
                })
                .collect(),
            signkey_years: years(self.signkey_years.as_ref().map(Spanned::get_ref)),
            rsa_bits: *self.rsa_bits.get_ref(),
        }
    }

    /// Checks what deserialization could not; `text` is the file, for line
    /// numbers.
    pub(super) fn validate(&self, text: &str) -> Result<(), String> {
        let line = |span: std::ops::Range<usize>| {
            text.get(..span.start)
                .map_or(0, |before| before.matches('\n').count())
                + 1
        };
        let at = |span| format!("line {}: donau.", line(span));
        let bits = *self.rsa_bits.get_ref();
        if !(1024..=8192).contains(&bits) || !bits.is_multiple_of(256) {
            return Err(format!(
                "{}rsa_bits = {bits}: must be 1024 to 8192, a multiple of 256",
                at(self.rsa_bits.span())
            ));
        }
        let path = self.base_path.get_ref();
        if !path.starts_with('/') || !path.ends_with('/') {
            return Err(format!(
                "{}base_path = {path:?}: must start and end with '/'",
                at(self.base_path.span())
            ));
        }
        let url = self.base_url.get_ref();
        if !(url.starts_with("http://") || url.starts_with("https://")) || !url.ends_with('/') {
            return Err(format!(
                "{}base_url = {url:?}: must be an http:// or https:// URL ending in '/'",
                at(self.base_url.span())
            ));
        }
        let years_ok =
            |years: &[u16]| !years.is_empty() && years.iter().all(|y| DONAU_YEARS.contains(y));
        if let Some(years) = &self.signkey_years
            && !years_ok(years.get_ref())
        {
            return Err(format!(
                "{}signkey_years: list 1 or more years from 1970 to 9999 (or omit it)",
                at(years.span())
            ));
        }
        let units = self.donation_units.get_ref();
        if units.is_empty() {
            return Err(format!(
                "{}donation_units: list at least one unit",
                at(self.donation_units.span())
            ));
        }
        let mut seen = Vec::new();
        for unit in units {
            let at = at(unit.span());
            let u = unit.get_ref();
            if u.value.currency != self.currency.0 {
                return Err(format!(
                    "{at}donation_units: unit {} is not in the Donau's currency {}",
                    u.value, self.currency.0
                ));
            }
            if u.years.as_deref().is_some_and(|y| !years_ok(y)) {
                return Err(format!(
                    "{at}donation_units: unit {}: list 1 or more years from 1970 to 9999 (or omit them)",
                    u.value
                ));
            }
            if seen.contains(&(&u.value, u.cipher)) {
                return Err(format!(
                    "{at}donation_units: unit {} with cipher {:?} is listed twice",
                    u.value, u.cipher
                ));
            }
            seen.push((&u.value, u.cipher));
        }
        Ok(())
    }
}
