//! NCP KMS (NAVER Cloud KMS REST API 1.0), sans-IO: the service behind
//! `POST /keys/v1|v2/{keyTag}/{action}`, from action, key tag and JSON body
//! to status and JSON body, over master keys from a [`KeySource`].
//! The wire contract and every decision: `docs/ncp-kms.md`.

mod action;
pub mod budget;
pub mod ciphertext;
mod crypto;
mod error;
mod field;
mod reply;
mod request;
mod service;
mod source;

pub use action::Action;
pub use crypto::generate_material;
pub use error::NcpError;
pub use reply::NcpReply;
pub use service::NcpService;
pub use source::KeySource;

#[cfg(test)]
mod tests;
