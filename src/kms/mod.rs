//! KMS-side services (sans-IO): the NCP KMS, key agreement and login, the
//! Donau, entropy mixing, and the store of key material pushed to this
//! process by a QKD node (ETSI 004 push mode, KMS side).

pub mod agreement;
pub mod donau;
pub mod entropy;
pub mod gateway;
pub mod keys;
pub mod login;
pub mod ncp;
pub mod received;

pub use received::{Received, ReceivedError, ReceivedKeys};
