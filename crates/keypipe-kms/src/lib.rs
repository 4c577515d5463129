//! keypipe's KMS services (sans-IO), over `keypipe-core`, and the store
//! they keep their state in; nothing here is linked into the C library.
//!
//! - [`ncp`]: the NCP-KMS-compatible encryption API; [`gateway`] (its
//!   HMAC authentication), [`replay`] (each signed request once) and
//!   [`keys`] (master and access keys cached from the store);
//! - [`etsi014`]: ETSI GS QKD 014 key delivery;
//! - [`agreement`] and [`login`]: DH/ECDH key agreement, then login with
//!   the password sealed under the agreed key;
//! - [`keytalk`]: KeyTalk certificate enrolment, over [`ca`] (keypipe's
//!   own CA);
//! - [`donau`]: the GNU Taler Donau's published keys;
//! - [`entropy`]: randomness for new key material (the OS generator,
//!   mixed with QKD key when the node has a device);
//! - [`form`] and [`json_escapes`]: URL decoding, and JSON bodies that
//!   carry secrets read without serde's scratch buffer;
//! - [`store`]: SQLite or PostgreSQL, secrets wrapped under the KEK;
//! - `fuzzing` (feature `fuzzing`): the fuzz entry points; and
//!   `test_strategies`: proptest strategies of the unit tests.

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
