//! Fuzz entry point of the TLS layer: the identity read from a client
//! certificate's DER ([`PeerIdentity::from_der`]).

use crate::tls::PeerIdentity;

/// `PeerIdentity::from_der`: the identity read from a client certificate
/// (after the TLS layer verified it).
///
/// Input: certificate DER. Invariants: the serial is lower-case hex.
pub fn tls_identity(data: &[u8]) {
    if let Some(id) = PeerIdentity::from_der(data) {
        assert!(
            id.serial
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert!(id.serial.len().is_multiple_of(2));
    }
}
