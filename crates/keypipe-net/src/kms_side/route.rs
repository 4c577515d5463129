//! ETSI GS QKD 004 push mode, KMS side:
//! `POST /api/v1/qkd/etsi004/key-material` stores a pushed chunk for local
//! consumers and answers 201 `{"status":0}`.
//!
//! `metadata.buffer.key_stream_id` is required (the spec requires it when a
//! KMS has several streams; a keypipe KMS may always have several). A body
//! with JSON escapes (`\`) is refused: Base64 and UUIDs never need them,
//! and the JSON parser would copy the key text into a buffer it does not
//! wipe.
//! Answers: 400 (status 3) for a malformed body; 403 for a pusher that is
//! not allowed ([`Pushers`]: the node keeps the chunk and retries, so a
//! configuration being fixed loses nothing); 409 when the index is held
//! with different key, or the stream is another node's (the node drops
//! that chunk for good, so it blocks nothing else); 503 when the store is
//! full (the node keeps the chunk and retries).

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::store::{ReceivedError, ReceivedKeys};
use crate::http::{Method, Reply, Request, Response};
use crate::router::{Handler, Router, json, parse_json};

#[derive(Deserialize)]
struct Push {
    status: u32,
    index: u32,
    key_buffer: Zeroizing<String>,
    metadata: Option<PushMetadata>,
}

#[derive(Deserialize)]
struct PushMetadata {
    buffer: PushBuffer,
}

#[derive(Deserialize)]
struct PushBuffer {
    key_stream_id: Uuid,
}

/// Who may push key material here (security review F6).
#[derive(Debug, Clone, Default)]
pub struct Pushers {
    /// The QKD nodes allowed, by the `CN` of their certificate (`OU=node`).
    /// Empty: only callers on loopback without a certificate (a node
    /// certificate must be listed to be taken).
    pub nodes: Vec<String>,
}

impl Pushers {
    /// Who pushed `req` (the name that binds the stream: the node's
    /// certificate name, or a label no certificate name has), or why it
    /// may not.
    fn pusher<'r>(&self, req: &'r Request) -> Result<&'r str, String> {
        let Some(peer) = req.peer.as_deref() else {
            return Ok(""); // in-process
        };
        match &peer.identity {
            Some(id) if id.role != "node" => Err(format!(
                "the client certificate of {:?} is not a QKD node's (OU=node)",
                id.name
            )),
            // "" and "\0…" are the labels of callers without a certificate.
            Some(id)
                if id.name.is_empty()
                    || id.name.starts_with('\0')
                    || !self.nodes.contains(&id.name) =>
            {
                Err(format!(
                    "QKD node {:?} may not push key here (kms_side.nodes)",
                    id.name
                ))
            }
            Some(id) => Ok(&id.name),
            None if self.nodes.is_empty() && peer.addr.ip().is_loopback() => Ok("\0local"),
            None => Err("a QKD node pushing key needs a client certificate (OU=node)".into()),
        }
    }
}

fn answer(status: u16, message: &str) -> Response {
    json(status, &json!({ "status": 3, "message": message }))
}

fn receive(store: &ReceivedKeys, pushers: &Pushers, req: &Request) -> Response {
    let pusher = match pushers.pusher(req) {
        Ok(p) => p,
        Err(why) => {
            tracing::warn!(peer = ?req.peer.as_ref().map(|p| p.addr), "key-material refused: {why}");
            return answer(403, &why);
        }
    };
    // serde_json copies a string holding escapes into a scratch buffer it
    // frees unwiped; Base64 and UUIDs never need escapes, so refuse them.
    if req.body.contains(&b'\\') {
        return answer(400, "JSON escapes are not accepted in key-material pushes");
    }
    let push: Push = match parse_json(&req.body) {
        Ok(p) => p,
        Err(e) => return answer(400, &e),
    };
    if push.status != 0 {
        return answer(400, "status must be 0 for pushed key material");
    }
    let Some(meta) = push.metadata else {
        return answer(400, "metadata.buffer.key_stream_id is required");
    };
    let mut key = Zeroizing::new(vec![0u8; push.key_buffer.len() / 4 * 3 + 3]);
    let n = match BASE64.decode_slice(push.key_buffer.as_bytes(), &mut key[..]) {
        Ok(n) if n > 0 => n,
        _ => return answer(400, "key_buffer is not non-empty Base64"),
    };
    key.truncate(n);
    match store.insert_from(pusher, meta.buffer.key_stream_id, push.index, key) {
        Ok(_) => json(201, &json!({ "status": 0 })),
        Err(e @ ReceivedError::Conflict) => answer(409, &e.to_string()),
        // 409 like a conflicting index: the pushing node drops the chunk
        // for good, so the stream someone else poisoned blocks nothing.
        Err(e @ ReceivedError::OtherPusher) => answer(409, &e.to_string()),
        Err(e @ ReceivedError::Full) => answer(503, &e.to_string()),
    }
}

/// Adds the key-material route, storing into `store` what `pushers` may push.
pub fn key_material_route(router: &mut Router, store: Arc<ReceivedKeys>, pushers: Pushers) {
    let handler: Handler = Arc::new(move |req| Reply::Now(receive(&store, &pushers, &req)));
    router.route(Method::Post, "/api/v1/qkd/etsi004/key-material", handler);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::Pushers;
    use crate::http::{Limits, Parsed, Peer, Request, parse};
    use crate::tls::PeerIdentity;

    fn push_from(addr: &str, name: Option<&str>) -> Request {
        let Ok(Parsed::Complete(mut req, _)) = parse(
            b"POST /key-material HTTP/1.1\r\nHost: kms\r\nContent-Length: 0\r\n\r\n",
            &Limits::default(),
        ) else {
            panic!("a whole request")
        };
        req.peer = Some(Arc::new(Peer {
            addr: addr.parse().unwrap(),
            tls: name.is_some(),
            identity: name.map(|n| PeerIdentity {
                name: n.into(),
                role: "node".into(),
                serial: "01".into(),
                spki_sha256: [0; 32],
            }),
        }));
        req
    }

    #[test]
    fn a_certificate_never_takes_the_label_of_a_caller_without_one() {
        let open = Pushers::default();
        let local = push_from("127.0.0.1:9", None);
        let label = open.pusher(&local).unwrap();
        assert!(open.pusher(&push_from("10.0.0.1:9", None)).is_err());
        // Even listed, a certificate named like those labels is refused.
        for name in ["", label] {
            let listed = Pushers {
                nodes: vec![name.to_owned()],
            };
            assert!(listed.pusher(&push_from("10.0.0.1:9", Some(name))).is_err());
        }
        let listed = Pushers {
            nodes: vec!["node-a".into()],
        };
        let from_a = push_from("10.0.0.1:9", Some("node-a"));
        assert_eq!(listed.pusher(&from_a), Ok("node-a"));
        assert!(
            listed
                .pusher(&push_from("10.0.0.1:9", Some("node-b")))
                .is_err()
        );
    }

    /// Property tests of `key_buffer`: what `receive` stores is exactly the
    /// pushed bytes, and only non-empty canonical standard Base64 is taken.
    mod key_buffer_properties {
        use base64::Engine as _;
        use base64::engine::general_purpose::STANDARD as BASE64;
        use proptest::prelude::*;
        use uuid::Uuid;

        use super::super::{Pushers, receive};
        use crate::http::{Limits, Parsed, Request, parse};
        use crate::kms_side::store::ReceivedKeys;

        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

        /// `encode` of some bytes, kept as is or with one character
        /// replaced, inserted or removed: canonical text and its nearest
        /// non-canonical neighbours.
        fn near_canonical(encode: fn(&[u8]) -> String) -> impl Strategy<Value = String> {
            (
                proptest::collection::vec(any::<u8>(), 0..40),
                0..4u8,
                any::<prop::sample::Index>(),
                prop::sample::select(
                    &['A', 'Q', 'g', 'w', 'B', '+', '/', '=', '-', '_', ' ', '.'][..],
                ),
            )
                .prop_map(move |(bytes, op, at, c)| {
                    let mut chars: Vec<char> = encode(&bytes).chars().collect();
                    match op {
                        1 if !chars.is_empty() => {
                            let i = at.index(chars.len());
                            chars[i] = c;
                        }
                        2 => chars.insert(at.index(chars.len() + 1), c),
                        3 if !chars.is_empty() => {
                            chars.remove(at.index(chars.len()));
                        }
                        _ => {}
                    }
                    chars.into_iter().collect()
                })
        }

        /// An in-process push (no peer) of `key_buffer` as chunk `index`.
        fn push(ksid: Uuid, index: u32, key_buffer: &str) -> Request {
            let Ok(Parsed::Complete(mut req, _)) = parse(
                b"POST /key-material HTTP/1.1\r\nHost: kms\r\nContent-Length: 0\r\n\r\n",
                &Limits::default(),
            ) else {
                panic!("a whole request")
            };
            let body = serde_json::json!({
                "status": 0,
                "index": index,
                "key_buffer": key_buffer,
                "metadata": { "buffer": { "key_stream_id": ksid } },
            });
            req.body = zeroize::Zeroizing::new(body.to_string().into_bytes());
            req
        }

        /// The same text made non-canonical: padding dropped, non-zero
        /// unused bits, whitespace inside, or the URL-safe alphabet.
        fn spoil(good: &str, mutation: u8, at: usize) -> Option<String> {
            let pad = good.len() - good.trim_end_matches('=').len();
            match mutation {
                0 => (pad > 0).then(|| good.trim_end_matches('=').to_owned()),
                1 => (pad > 0).then(|| {
                    let mut chars = good.as_bytes().to_vec();
                    let last = good.len() - pad - 1;
                    let v = ALPHABET.iter().position(|&c| c == chars[last]).unwrap();
                    chars[last] = ALPHABET[v | 1];
                    String::from_utf8(chars).unwrap()
                }),
                2 => {
                    let i = at % (good.len() + 1);
                    // A space: JSON would escape any other whitespace.
                    Some(format!("{} {}", &good[..i], &good[i..]))
                }
                _ => good
                    .contains(['+', '/'])
                    .then(|| good.replace('+', "-").replace('/', "_")),
            }
        }

        proptest! {
            #[test]
            fn pushed_key_buffer_is_stored_byte_for_byte(
                key in proptest::collection::vec(any::<u8>(), 1..300),
                ksid in any::<u128>().prop_map(Uuid::from_u128),
                index in any::<u32>(),
            ) {
                let store = ReceivedKeys::new(64 << 10).unwrap();
                let req = push(ksid, index, &BASE64.encode(&key));
                let reply = receive(&store, &Pushers::default(), &req);
                prop_assert_eq!(reply.status, 201);
                let taken = store.take(&ksid, index);
                prop_assert_eq!(taken.as_deref(), Some(&key[..]));
            }

            #[test]
            fn non_canonical_or_empty_key_buffer_is_refused_and_nothing_stored(
                key in proptest::collection::vec(any::<u8>(), 1..300),
                mutation in 0..5u8,
                at in any::<usize>(),
            ) {
                let bad = if mutation == 4 {
                    String::new()
                } else {
                    let bad = spoil(&BASE64.encode(&key), mutation, at);
                    prop_assume!(bad.is_some());
                    bad.unwrap()
                };
                let ksid = Uuid::from_u128(1);
                let store = ReceivedKeys::new(64 << 10).unwrap();
                let reply = receive(&store, &Pushers::default(), &push(ksid, 0, &bad));
                prop_assert_eq!(reply.status, 400, "{:?}", bad);
                prop_assert!(String::from_utf8_lossy(&reply.body).contains("key_buffer"));
                prop_assert_eq!(store.stats().0, 0);
            }

            #[test]
            fn whatever_key_buffer_is_taken_is_its_canonical_encoding(
                text in prop_oneof![
                    2 => near_canonical(|b| BASE64.encode(b)),
                    1 => "[A-Za-z0-9+/]{0,12}={0,3}",
                    1 => "[A-Za-z0-9+/=_ -]{0,16}",
                ],
            ) {
                let ksid = Uuid::from_u128(1);
                let store = ReceivedKeys::new(64 << 10).unwrap();
                let reply = receive(&store, &Pushers::default(), &push(ksid, 0, &text));
                match reply.status {
                    201 => {
                        let key = store.take(&ksid, 0).unwrap();
                        prop_assert!(!key.is_empty());
                        prop_assert_eq!(BASE64.encode(&key[..]), text);
                    }
                    status => {
                        prop_assert_eq!(status, 400);
                        prop_assert_eq!(store.stats().0, 0);
                    }
                }
            }
        }
    }
}
