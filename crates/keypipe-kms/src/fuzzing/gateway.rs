//! The API-gateway fuzz entry point: the HMAC signature check of the
//! NCP-KMS-compatible API, over a key store of one access key.

use keypipe_core::fuzzing::Input;

use crate::gateway::{self, AuthError, Credentials, KeyInfo};

/// The API-gateway signature check (`gateway::verify`) with a key store
/// of one access key.
///
/// Input: a byte of flags (scheme, which headers are present, whether the
/// signature and timestamp are right), a two-byte clock skew, then
/// length-prefixed method, target, timestamp, access key, API key and
/// signature. Invariants: an accepted request carries a timestamp within
/// 5 minutes, the known access key (and for v1 its API key), and exactly
/// the signature computed over its method and target; a request signed
/// right within the window is accepted; a missing header is named.
pub fn gateway_verify(data: &[u8]) {
    const NOW: u64 = 1_700_000_000_000;
    const AK: &str = "AKFUZZ";
    const SK: &[u8] = b"SKFUZZ";
    const API: &str = "APIFUZZ";
    let mut input = Input::new(data);
    let flags = input.byte();
    let skew = u64::from(input.u16()) * 8;
    let scheme = if flags & 1 == 0 {
        gateway::Scheme::V2
    } else {
        gateway::Scheme::V1
    };
    let method = input.text();
    let target = input.text();
    let timestamp = if flags & 2 == 0 {
        if flags & 4 == 0 {
            (NOW + skew).to_string()
        } else {
            NOW.saturating_sub(skew).to_string()
        }
    } else {
        input.text()
    };
    let access_key = if flags & 8 == 0 {
        AK.into()
    } else {
        input.text()
    };
    let api_key = if flags & 16 == 0 {
        API.into()
    } else {
        input.text()
    };
    let signature = if flags & 32 == 0 {
        gateway::signature(
            scheme,
            SK,
            &method,
            &target,
            &timestamp,
            &access_key,
            &api_key,
        )
    } else {
        input.text()
    };
    let present = input.byte();
    let creds = Credentials {
        timestamp: (present & 1 == 0).then_some(timestamp.as_str()),
        access_key: (present & 2 == 0).then_some(access_key.as_str()),
        signature: (present & 4 == 0).then_some(signature.as_str()),
        api_key: (present & 8 == 0).then_some(api_key.as_str()),
    };
    let result = gateway::verify(scheme, &method, &target, &creds, NOW, |ak, check| {
        if ak != AK {
            return Err(AuthError::UnknownAccessKey);
        }
        check(KeyInfo {
            secret_key: SK,
            api_key: API,
        })
    });
    let in_window = timestamp
        .parse::<u64>()
        .is_ok_and(|ts| ts.abs_diff(NOW) <= 5 * 60 * 1000);
    let v1 = scheme == gateway::Scheme::V1;
    let right = in_window
        && access_key == AK
        && (!v1 || api_key == API)
        && signature
            == gateway::signature(
                scheme,
                SK,
                &method,
                &target,
                &timestamp,
                &access_key,
                &api_key,
            );
    let all_present = present & 7 == 0 && (!v1 || present & 8 == 0);
    match result {
        Ok(()) => assert!(right && all_present, "accepted a request not signed right"),
        Err(AuthError::Missing(name)) => {
            assert!(!all_present, "{name} named missing but present");
        }
        Err(e) => assert!(!(right && all_present), "refused a right request: {e}"),
    }
}
