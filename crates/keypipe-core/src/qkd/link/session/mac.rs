//! The link's MACs: HMAC-SHA256 under a direction key over a domain tag
//! and length-prefixed fields, the direction keys themselves, and what a
//! hello, a batch and an answer each bind.

use hmac::{KeyInit, Mac};
use zeroize::Zeroizing;

use super::wire::unhex;
use crate::qkd::link::Role;

pub(super) type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The key of messages sent by the node of role `from` on a link keyed by
/// `secret`: each direction has its own, so a node's own messages
/// reflected back never verify.
pub(super) fn direction_key(secret: &[u8; 32], from: Role) -> Zeroizing<[u8; 32]> {
    let context = match from {
        Role::Leader => "keypipe link-sync v2 from leader",
        Role::Follower => "keypipe link-sync v2 from follower",
    };
    Zeroizing::new(blake3::derive_key(context, &secret[..]))
}

/// The MAC input, field by field (lengths first, so fields never run into
/// each other).
fn mac_of(key: &[u8; 32], fields: &[&[u8]]) -> HmacSha256 {
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(&key[..]).expect("HMAC takes any key length");
    mac.update(b"keypipe-link-v2");
    for f in fields {
        mac.update(&(f.len() as u64).to_be_bytes());
        mac.update(f);
    }
    mac
}

/// The MAC of a hello with `body`.
pub(super) fn hello(key: &[u8; 32], body: &[u8]) -> HmacSha256 {
    mac_of(key, &[b"hello", body])
}

/// True when the MAC header `header` (hex) is the MAC `mac` makes; `mac`
/// is only computed for a header that reads as hex.
pub(super) fn verifies(header: Option<&[u8]>, mac: impl FnOnce() -> HmacSha256) -> bool {
    header
        .and_then(|m| std::str::from_utf8(m).ok())
        .and_then(unhex)
        .is_some_and(|m| mac().verify_slice(&m).is_ok())
}

/// What a batch or an answer binds besides the two node names and the
/// body: its kind, both nonces of its session, and its sequence number.
pub(super) struct MacScope<'a> {
    /// `batch`, `welcome` or `unknown-session`.
    pub(super) kind: &'a [u8],
    /// The sending node's nonce (it names the session).
    pub(super) nonce_s: &'a [u8; 32],
    /// The receiving node's nonce (for an unknown session: the MAC of the
    /// request answered).
    pub(super) nonce_r: &'a [u8; 32],
    /// The batch's sequence number (0 for a welcome).
    pub(super) seq: u64,
}

impl MacScope<'_> {
    /// The MAC of a request of node `from` to node `to` with `body`.
    pub(super) fn request(&self, key: &[u8; 32], from: &str, to: &str, body: &[u8]) -> HmacSha256 {
        mac_of(
            key,
            &[
                self.kind,
                from.as_bytes(),
                to.as_bytes(),
                self.nonce_s,
                self.nonce_r,
                &self.seq.to_be_bytes(),
                body,
            ],
        )
    }

    /// The MAC of an answer of node `from` to node `to` with `status` and
    /// `body`.
    pub(super) fn answer(
        &self,
        key: &[u8; 32],
        from: &str,
        to: &str,
        status: u16,
        body: &[u8],
    ) -> HmacSha256 {
        mac_of(
            key,
            &[
                self.kind,
                from.as_bytes(),
                to.as_bytes(),
                self.nonce_s,
                self.nonce_r,
                &self.seq.to_be_bytes(),
                &status.to_be_bytes(),
                body,
            ],
        )
    }
}
