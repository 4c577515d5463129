//! The ETSI GS QKD 014 fuzz entry point: request parsing and `key_ID`
//! decoding read from the same bytes.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::etsi014::key_id;
use crate::etsi014::request as etsi014_req;
use crate::etsi014::supply::Span;

/// ETSI GS QKD 014 request parsing (`etsi014::request`) and `key_ID`
/// decoding (`etsi014::key_id`): the same bytes are read as a GET query
/// (key request, key ids), as a POST body (key request, key ids), as a
/// path segment, and as key ids (the first 16 bytes, and the text).
///
/// Input: the bytes. Invariants: refusals are 400s with a JSON body; an
/// accepted request written out again (query or JSON) parses to the same;
/// every version-8 id decodes and encodes back to itself.
pub fn etsi014_request(data: &[u8]) {
    use etsi014_req as r;
    let text = String::from_utf8_lossy(data);
    let refused = |e: &crate::etsi014::Refusal| {
        assert_eq!(e.status, 400);
        serde_json::from_slice::<Value>(&e.body()).expect("a refusal's body is JSON");
    };
    match r::key_request_from_query(Some(&text)) {
        Ok(req) => {
            assert!(req.additional.is_none(), "a query has no additional ids");
            let mut q = Vec::new();
            if let Some(n) = req.number {
                q.push(format!("number={n}"));
            }
            if let Some(s) = req.size {
                q.push(format!("size={s}"));
            }
            let again = r::key_request_from_query(Some(&q.join("&")));
            assert_eq!(again.as_ref(), Ok(&req), "query round trip");
        }
        Err(e) => refused(&e),
    }
    match r::key_request_from_body(data) {
        Ok(req) => {
            let body = json!({
                "number": req.number,
                "size": req.size,
                "additional_slave_SAE_IDs": req.additional,
            });
            let again = r::key_request_from_body(body.to_string().as_bytes());
            assert_eq!(again.as_ref(), Ok(&req), "body round trip");
        }
        Err(e) => refused(&e),
    }
    match r::key_ids_from_query(Some(&text)) {
        Ok(ids) => {
            assert!(!ids.is_empty());
            let q: Vec<String> = ids.iter().map(|id| format!("key_ID={id}")).collect();
            assert_eq!(r::key_ids_from_query(Some(&q.join("&"))), Ok(ids));
        }
        Err(e) => refused(&e),
    }
    match r::key_ids_from_body(data) {
        Ok(ids) => {
            assert!(!ids.is_empty());
            let items: Vec<Value> = ids
                .iter()
                .map(|id| json!({ "key_ID": id.to_string() }))
                .collect();
            let body = json!({ "key_IDs": items }).to_string();
            assert_eq!(r::key_ids_from_body(body.as_bytes()), Ok(ids));
        }
        Err(e) => refused(&e),
    }
    let segment = r::percent_decode(&text);
    assert!(segment.len() <= 3 * text.len(), "decoding grew the text");
    let mut ids = Vec::new();
    if let Some(bytes) = data.get(..16) {
        ids.push(Uuid::from_slice(bytes).expect("16 bytes"));
    }
    if let Ok(id) = Uuid::try_parse(text.trim()) {
        ids.push(id);
    }
    for id in ids {
        let Some((tag, first, len, mac)) = key_id::decode(&id) else {
            assert!(
                id.get_version_num() != 8 || id.get_variant() != uuid::Variant::RFC4122,
                "a version-8 RFC id is ours"
            );
            continue;
        };
        assert!((1..=key_id::MAX_KEY_BYTES).contains(&len));
        assert!(first <= key_id::MAX_OFFSET);
        let span = Span {
            ksid: Uuid::from_u128(u128::from(tag) << 112),
            first,
            len,
        };
        assert_eq!(key_id::stream_tag(&span.ksid), tag);
        assert_eq!(key_id::encode(&span, mac), id, "key_ID decode/encode");
        assert!(key_id::mac_matches(mac, mac));
    }
}
