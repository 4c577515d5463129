//! Fuzz entry point of the ETSI 004 KMS side: pushes from fuzzer-chosen
//! pushers through the router into a fresh store, checked against an
//! independent reading of each body and the pusher rules.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use keypipe_core::fuzzing::Input;
use uuid::Uuid;

use crate::http::{Limits, Parsed, Peer, Reply, Service, parse};
use crate::kms_side::{Pushers, ReceivedKeys, key_material_route};
use crate::metrics::RequestMetrics;
use crate::router::Router;
use crate::tls::PeerIdentity;

/// The pushing peers a fuzzer byte picks, and whether the pusher rules
/// must let it push with `nodes` = `["node-a"]` (`listed`) or empty.
fn pusher_peer(choice: u8, listed: bool) -> (Option<Arc<Peer>>, Option<String>) {
    let peer = |addr: &str, identity: Option<(&str, &str)>| {
        Some(Arc::new(Peer {
            addr: addr.parse::<SocketAddr>().expect("a literal address"),
            tls: identity.is_some(),
            identity: identity.map(|(name, role)| PeerIdentity {
                name: name.into(),
                role: role.into(),
                serial: "01".into(),
                spki_sha256: [0; 32],
            }),
        }))
    };
    match choice % 6 {
        0 => (None, Some(String::new())),
        1 => (
            peer("127.0.0.1:9", None),
            (!listed).then(|| "\0local".into()),
        ),
        2 => (peer("10.0.0.1:9", None), None),
        3 => (
            peer("10.0.0.1:9", Some(("node-a", "node"))),
            listed.then(|| "node-a".into()),
        ),
        4 => (peer("10.0.0.1:9", Some(("node-b", "node"))), None),
        _ => (peer("10.0.0.1:9", Some(("node-a", "kms"))), None),
    }
}

/// What an independent reading of a push body (`serde_json::Value`, all
/// escapes resolved) says it holds: the stream, the index and the key,
/// when it is a valid push. The route may refuse more (escapes, duplicate
/// fields), never accept more.
fn read_push(body: &[u8]) -> Option<(Uuid, u32, Vec<u8>)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if v.get("status")?.as_u64()? != 0 {
        return None;
    }
    let index = u32::try_from(v.get("index")?.as_u64()?).ok()?;
    let key = BASE64.decode(v.get("key_buffer")?.as_str()?).ok()?;
    let ksid = Uuid::parse_str(v["metadata"]["buffer"]["key_stream_id"].as_str()?).ok()?;
    (!key.is_empty()).then_some((ksid, index, key))
}

/// The ETSI 004 KMS side's `POST /api/v1/qkd/etsi004/key-material`
/// (`kms_side::route`), through the router as the server calls it, into a
/// fresh store: a sequence of pushes from fuzzer-chosen pushers.
///
/// Input: one byte choosing the pusher rules, then per push (at most 8):
/// a byte choosing the pusher, a byte choosing a raw body (length-prefixed
/// bytes) or a push built from the next bytes (status, stream, index, key,
/// optional fuzzer bytes spliced in). Invariants: every answer is 201, 400,
/// 403, 409 or 503 with a JSON body; a push is stored only from a pusher
/// the rules allow, and only as an independent reading of its body says
/// (stream, index, Base64-decoded key); a stream's key comes from its first
/// pusher only; an index held is never overwritten with other key; what is
/// stored is what consumers take out.
pub fn etsi004_kms_push(data: &[u8]) {
    let mut input = Input::new(data);
    let listed = input.bool();
    let pushers = Pushers {
        nodes: if listed {
            vec!["node-a".into()]
        } else {
            Vec::new()
        },
    };
    // Room for 8 pushes of at most 255 bytes (a bigger store costs a
    // bigger locked heap per input).
    let store = Arc::new(ReceivedKeys::new(16 << 10).expect("a small locked key store"));
    let mut router = Router::new(Arc::new(RequestMetrics::default()));
    key_material_route(&mut router, Arc::clone(&store), pushers);
    // (stream, index) -> key, and stream -> pusher, as accepted so far.
    let mut held: HashMap<(Uuid, u32), Vec<u8>> = HashMap::new();
    let mut owner: HashMap<Uuid, String> = HashMap::new();
    for _ in 0..8 {
        if input.is_empty() {
            break;
        }
        let (peer, allowed_as) = pusher_peer(input.byte(), listed);
        let body = if input.bool() {
            input.chunk().to_vec()
        } else {
            let status = input.byte() % 3;
            let ksid = Uuid::from_u128(0x5ca1ab1e + u128::from(input.byte() % 3));
            let index = input.byte() % 4;
            let key = BASE64.encode(input.chunk());
            let mut body = format!(
                r#"{{"status":{status},"index":{index},"key_buffer":"{key}","metadata":{{"buffer":{{"key_stream_id":"{ksid}"}}}}}}"#
            )
            .into_bytes();
            let junk = input.chunk();
            if !junk.is_empty() {
                let at = usize::from(input.byte()) % (body.len() + 1);
                body.splice(at..at, junk.iter().copied());
            }
            body
        };
        let mut raw = format!(
            "POST /api/v1/qkd/etsi004/key-material HTTP/1.1\r\nHost: kms\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(&body);
        let Ok(Parsed::Complete(mut req, _)) = parse(&raw, &Limits::default()) else {
            panic!("a well-formed push request does not parse");
        };
        req.peer = peer;
        let Reply::Now(resp) = router.call(req) else {
            panic!("the key-material route answers at once");
        };
        let answer: serde_json::Value =
            serde_json::from_slice(&resp.body).expect("the answer is JSON");
        match resp.status {
            201 => {
                assert_eq!(answer["status"], 0);
                let pusher = allowed_as.expect("stored from a pusher the rules refuse");
                let (ksid, index, key) = read_push(&body).expect("stored a push that is not valid");
                let first = owner.entry(ksid).or_insert_with(|| pusher.clone());
                assert_eq!(*first, pusher, "a stream took key from a second pusher");
                if let Some(before) = held.insert((ksid, index), key.clone()) {
                    assert_eq!(before, key, "an index held was overwritten");
                }
            }
            403 => assert!(allowed_as.is_none(), "an allowed pusher was refused"),
            400 | 409 | 503 => assert_eq!(answer["status"], 3),
            other => panic!("key-material answered {other}"),
        }
    }
    for ((ksid, index), key) in held {
        let taken = store.take(&ksid, index).expect("an accepted push is held");
        assert_eq!(&taken[..], &key[..], "held key differs");
    }
}
