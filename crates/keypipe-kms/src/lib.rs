//! keypipe's KMS services (sans-IO): the NCP KMS, key agreement and login,
//! the Donau, entropy mixing, keypipe's CA, and the store they keep their
//! state in.
//!
//! Nothing here is linked into the C library.

pub mod agreement;
pub mod ca;
pub mod donau;
pub mod entropy;
pub mod etsi014;
pub mod form;
/// Fuzz entry points, for `fuzz/` and the fuzz regression tests.
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod gateway;
pub mod json_escapes;
pub mod keys;
pub mod keytalk;
pub mod login;
pub mod ncp;
pub mod replay;
pub mod store;
#[cfg(test)]
mod test_strategies;
