//! What travels on a link session: the paths and headers of its requests,
//! the JSON of a hello, a welcome and a batch, and the nonces and hex that
//! name a session.

use serde::{Deserialize, Serialize};

use super::LocalParams;
use crate::qkd::link::{LinkMsg, Role};

/// Path of the handshake.
pub const HELLO_PATH: &str = "/api/v1/link/hello";
/// Path of batches.
pub const MESSAGES_PATH: &str = "/api/v1/link/messages";
/// Header carrying the MAC (requests and answers).
pub const MAC_HEADER: &str = "x-keypipe-link-mac";
/// Header naming the session (the sender's nonce).
pub const SESSION_HEADER: &str = "x-keypipe-link-session";
/// Header carrying the batch's sequence number.
pub const SEQ_HEADER: &str = "x-keypipe-link-seq";
/// Protocol version.
pub(super) const VERSION: u32 = 3;

/// The device parameters as they travel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Params {
    pub(super) block_size: usize,
    pub(super) fingerprint: String,
    pub(super) position: u64,
    #[serde(default)]
    pub(super) reserved: u64,
    pub(super) ledger_new: bool,
    pub(super) paired_before: bool,
}

impl Params {
    /// This node's parameters as they travel.
    pub(super) fn of(local: &LocalParams) -> Params {
        Params {
            block_size: local.device.block_size,
            fingerprint: local.device.fingerprint.clone(),
            position: local.device.position,
            reserved: local.device.reserved,
            ledger_new: local.device.ledger_new,
            paired_before: local.paired_before,
        }
    }
}

/// A hello, as it travels.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Hello {
    pub(super) version: u32,
    pub(super) from: String,
    #[serde(default)]
    pub(super) to: String,
    pub(super) role: Role,
    pub(super) incarnation: String,
    pub(super) nonce: String,
    pub(super) params: Params,
}

/// The answer to a hello that opens a session, as it travels.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Welcome {
    pub(super) from: String,
    pub(super) nonce: String,
    pub(super) params: Params,
    pub(super) max_body_bytes: usize,
}

/// A batch of messages, as it travels.
#[derive(Debug, Deserialize)]
pub(super) struct Batch {
    pub(super) msgs: Vec<LinkMsg>,
}

/// A fresh session nonce.
pub(super) fn random_nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    getrandom::fill(&mut n).expect("the OS random source works");
    n
}

/// 32 bytes from 64 hex digits.
pub(super) fn unhex32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// Bytes from an even number of hex digits.
pub(super) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}
