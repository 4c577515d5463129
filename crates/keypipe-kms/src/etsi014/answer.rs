//! The JSON answers: the key container, the status, and the error body.
//! A key container is written once into a buffer of its exact size (no
//! copy of a key is left behind by a growing buffer); the HTTP layer wipes
//! it once sent.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;
use uuid::Uuid;

use super::config::Etsi014Config;

/// `{"keys":[{"key_ID":…,"key":…},…]}` for `keys` (id, key bytes).
pub fn key_container<'a>(keys: impl Iterator<Item = (Uuid, &'a [u8])> + Clone) -> Vec<u8> {
    const OPEN: &[u8] = b"{\"keys\":[";
    const ID: &[u8] = b"{\"key_ID\":\"";
    const KEY: &[u8] = b"\",\"key\":\"";
    const CLOSE_KEY: &[u8] = b"\"}";
    const CLOSE: &[u8] = b"]}";
    let (n, entries) = keys.clone().fold((0usize, 0usize), |(n, size), (_, k)| {
        let entry = ID.len() + 36 + KEY.len() + k.len().div_ceil(3) * 4 + CLOSE_KEY.len();
        (n + 1, size + entry)
    });
    let size = OPEN.len() + CLOSE.len() + entries + n.saturating_sub(1);
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(OPEN);
    let mut id_text = Uuid::encode_buffer();
    for (i, (id, key)) in keys.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(ID);
        out.extend_from_slice(id.hyphenated().encode_lower(&mut id_text).as_bytes());
        out.extend_from_slice(KEY);
        let at = out.len();
        out.resize(at + key.len().div_ceil(3) * 4, 0);
        let written = STANDARD
            .encode_slice(key, &mut out[at..])
            .expect("sized exactly");
        debug_assert_eq!(at + written, out.len());
        out.extend_from_slice(CLOSE_KEY);
    }
    out.extend_from_slice(CLOSE);
    debug_assert_eq!(out.len(), size);
    out
}

/// The status of the link from `master` to `slave` (table 9).
pub fn status(
    config: &Etsi014Config,
    master: &str,
    slave: &str,
    stored: u64,
    max_count: u64,
    max_sae_ids: u32,
) -> Vec<u8> {
    json!({
        "source_KME_ID": config.kme_id,
        "target_KME_ID": config.peer_kme_id,
        "master_SAE_ID": master,
        "slave_SAE_ID": slave,
        "key_size": config.key_size,
        "stored_key_count": stored.min(max_count),
        "max_key_count": max_count,
        "max_key_per_request": config.max_key_per_request,
        "max_key_size": config.max_key_size,
        "min_key_size": config.min_key_size,
        "max_SAE_ID_count": max_sae_ids,
    })
    .to_string()
    .into_bytes()
}

/// `{"message": …}` (no `details`: see the docs).
pub fn error(message: &str) -> Vec<u8> {
    json!({ "message": message }).to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_container_is_exact_json() {
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        let keys = [(a, &[1u8, 2, 3, 4][..]), (b, &[0xff; 32][..])];
        let body = key_container(keys.iter().copied());
        assert_eq!(body.len(), body.capacity(), "no growth, no stray copy");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["keys"][0]["key_ID"], a.to_string());
        assert_eq!(v["keys"][0]["key"], "AQIDBA==");
        assert_eq!(
            STANDARD
                .decode(v["keys"][1]["key"].as_str().unwrap())
                .unwrap(),
            [0xff; 32]
        );
        assert_eq!(key_container([].iter().copied()), b"{\"keys\":[]}");
    }
}
