//! The service over an in-memory key supply: what each request gets.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::*;

/// Key from a counter: stream `ksid`'s byte at offset `o` is a hash of
/// both, so every key differs and both "nodes" agree.
#[derive(Default)]
struct Fake {
    next: Mutex<HashMap<Uuid, u64>>,
    redeemed: Mutex<HashSet<(Uuid, u64)>>,
    opened: Mutex<Vec<(Uuid, String, String)>>,
    short: std::sync::atomic::AtomicBool,
}

fn byte(ksid: &Uuid, o: u64) -> u8 {
    blake3::hash(&[ksid.as_bytes().as_slice(), &o.to_be_bytes()].concat()).as_bytes()[0]
}

impl KeySupply for Fake {
    fn open(&self, ksid: Uuid, s: &str, d: &str, _issuing: bool) -> Result<(), SupplyError> {
        self.opened.lock().unwrap().push((ksid, s.into(), d.into()));
        Ok(())
    }
    fn issue(&self, ksid: &Uuid, out: &mut [u8], _wait: Duration) -> Result<u64, SupplyError> {
        if self.short.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(SupplyError::Short);
        }
        let mut next = self.next.lock().unwrap();
        let first = *next.get(ksid).unwrap_or(&0);
        for (i, b) in out.iter_mut().enumerate() {
            *b = byte(ksid, first + i as u64);
        }
        next.insert(*ksid, first + out.len() as u64);
        Ok(first)
    }
    fn redeem(&self, spans: &[Span], out: &mut [u8]) -> Result<(), SupplyError> {
        let mut redeemed = self.redeemed.lock().unwrap();
        let next = self.next.lock().unwrap();
        for s in spans {
            let issued = next.get(&s.ksid).copied().unwrap_or(0);
            if s.first + s.len > issued
                || (s.first..s.first + s.len).any(|o| redeemed.contains(&(s.ksid, o)))
            {
                return Err(SupplyError::NotFound);
            }
        }
        let mut at = 0;
        for s in spans {
            for o in s.first..s.first + s.len {
                redeemed.insert((s.ksid, o));
                out[at] = byte(&s.ksid, o);
                at += 1;
            }
        }
        Ok(())
    }
    fn issuable(&self, _ksid: &Uuid) -> u64 {
        4096
    }
    fn capacity(&self) -> u64 {
        1 << 19
    }
    fn streams(&self) -> Vec<(Uuid, String, String)> {
        self.opened.lock().unwrap().clone()
    }
    fn stream_count(&self) -> usize {
        self.opened.lock().unwrap().len()
    }
    fn stream_id(&self, name: &[u8]) -> Uuid {
        let out = blake3::keyed_hash(&[9; 32], name);
        uuid::Builder::from_custom_bytes(out.as_bytes()[..16].try_into().unwrap()).into_uuid()
    }
    fn tag(&self, span: &Span) -> u64 {
        let h = blake3::keyed_hash(
            &[7; 32],
            &[
                span.ksid.as_bytes().as_slice(),
                &span.first.to_be_bytes(),
                &span.len.to_be_bytes(),
            ]
            .concat(),
        );
        u64::from_be_bytes(h.as_bytes()[..8].try_into().unwrap())
    }
}

/// Node A (sae-a) and node B (sae-b, sae-c) over one fake link.
fn nodes() -> (Etsi014, Etsi014) {
    nodes_with(Etsi014Config::default())
}

/// [`nodes`] with the sizes, counts and times of `base`.
fn nodes_with(base: Etsi014Config) -> (Etsi014, Etsi014) {
    let fake = Arc::new(Fake::default());
    let cfg = |kme: &str, peer: &str, saes: &[&str], peer_saes: &[&str]| Etsi014Config {
        kme_id: kme.into(),
        peer_kme_id: peer.into(),
        saes: saes.iter().map(|s| s.to_string()).collect(),
        peer_saes: peer_saes.iter().map(|s| s.to_string()).collect(),
        ..base.clone()
    };
    let a = Etsi014::new(
        cfg("node-a", "node-b", &["sae-a"], &["sae-b", "sae-c"]),
        fake.clone(),
    )
    .unwrap();
    let b = Etsi014::new(
        cfg("node-b", "node-a", &["sae-b", "sae-c"], &["sae-a"]),
        fake,
    )
    .unwrap();
    (a, b)
}

fn keys(body: &[u8]) -> Vec<(Uuid, String)> {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["key_ID"].as_str().unwrap().parse().unwrap(),
                k["key"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn enc(a: &Etsi014, caller: &str, slave: &str, req: KeyRequest) -> Answer {
    let r = a.enc_request(Some(caller), slave, &req)?;
    a.enc_keys(&r, Duration::ZERO).map_err(|s| s.0)?
}

#[test]
fn keys_issued_on_one_node_are_redeemed_once_on_the_other() {
    let (a, b) = nodes();
    let got = keys(
        &enc(
            &a,
            "sae-a",
            "sae-b",
            KeyRequest {
                number: Some(3),
                size: Some(512),
                ..Default::default()
            },
        )
        .unwrap(),
    );
    assert_eq!(got.len(), 3);
    assert!(
        got.iter()
            .all(|(id, k)| id.get_version_num() == 8 && k.len() == 88)
    );
    let ids: Vec<Uuid> = got.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        keys(&b.dec_keys(Some("sae-b"), "sae-a", &ids).unwrap()),
        got
    );
    let again = b.dec_keys(Some("sae-b"), "sae-a", &ids[..1]).unwrap_err();
    assert_eq!((again.status, again.message.as_ref()), (400, NOT_FOUND));
    // A third SAE may not have them; nor may the master's own node.
    let other = enc(&a, "sae-a", "sae-b", KeyRequest::default()).unwrap();
    let id = keys(&other)[0].0;
    assert_eq!(
        b.dec_keys(Some("sae-c"), "sae-a", &[id])
            .unwrap_err()
            .status,
        401
    );
    assert_eq!(
        b.dec_keys(Some("sae-x"), "sae-a", &[id])
            .unwrap_err()
            .status,
        401
    );
    assert_eq!(b.dec_keys(None, "sae-a", &[id]).unwrap_err().status, 401);
    assert_eq!(
        a.dec_keys(Some("sae-a"), "sae-b", &[id])
            .unwrap_err()
            .status,
        400
    );
    // Unknown and forged ids are not found; the real one still is there.
    let mut forged = id.as_u128();
    forged ^= 1;
    for bad in [Uuid::new_v4(), Uuid::from_u128(forged)] {
        let e = b.dec_keys(Some("sae-b"), "sae-a", &[bad, id]).unwrap_err();
        assert_eq!((e.status, e.message.as_ref()), (400, NOT_FOUND));
    }
    assert_eq!(
        keys(&b.dec_keys(Some("sae-b"), "sae-a", &[id]).unwrap()),
        keys(&other)
    );
}

#[test]
fn multicast_gives_each_slave_its_copy_once() {
    let (a, b) = nodes();
    let req = KeyRequest {
        number: Some(2),
        additional: Some(vec!["sae-c".into()]),
        ..Default::default()
    };
    let got = keys(&enc(&a, "sae-a", "sae-b", req).unwrap());
    let ids: Vec<Uuid> = got.iter().map(|(id, _)| *id).collect();
    for slave in ["sae-c", "sae-b"] {
        assert_eq!(
            keys(&b.dec_keys(Some(slave), "sae-a", &ids).unwrap()),
            got,
            "{slave}"
        );
        assert_eq!(
            b.dec_keys(Some(slave), "sae-a", &ids).unwrap_err().status,
            400,
            "{slave} twice"
        );
    }
    assert!(
        b.copies.lock().unwrap().is_empty(),
        "no copy outlives its last slave"
    );
}

#[test]
fn a_slave_taking_its_copy_and_a_fresh_key_at_once_gets_both() {
    // One copy held at most: leaving the fresh key's copy for sae-b would
    // evict the copy owed to sae-c, were it not taken first.
    let (a, b) = nodes_with(Etsi014Config {
        max_copies: 1,
        ..Etsi014Config::default()
    });
    let multi = || KeyRequest {
        additional: Some(vec!["sae-c".into()]),
        ..Default::default()
    };
    let first = keys(&enc(&a, "sae-a", "sae-b", multi()).unwrap());
    let second = keys(&enc(&a, "sae-a", "sae-b", multi()).unwrap());
    assert_eq!(
        keys(&b.dec_keys(Some("sae-b"), "sae-a", &[first[0].0]).unwrap()),
        first
    );
    let both = [second[0].0, first[0].0];
    let got = keys(&b.dec_keys(Some("sae-c"), "sae-a", &both).unwrap());
    assert_eq!(got, [second[0].clone(), first[0].clone()]);
}

#[test]
fn bad_requests_get_the_standard_messages() {
    let (a, _) = nodes();
    let r = |number: Option<u64>, size: Option<u64>, additional: Option<Vec<&str>>| KeyRequest {
        number,
        size,
        additional: additional.map(|v| v.into_iter().map(String::from).collect()),
    };
    for (req, slave, message) in [
        (r(None, Some(100), None), "sae-b", request::SIZE_MULTIPLE),
        (
            r(None, Some(0), None),
            "sae-b",
            "size must be from min_key_size (64) to max_key_size (4096) bits",
        ),
        (
            r(None, Some(8192), None),
            "sae-b",
            "size must be from min_key_size (64) to max_key_size (4096) bits",
        ),
        (
            r(Some(0), None, None),
            "sae-b",
            "number must be 1 to max_key_per_request (128)",
        ),
        (
            r(Some(129), None, None),
            "sae-b",
            "number must be 1 to max_key_per_request (128)",
        ),
        (
            r(None, None, Some(vec![])),
            "sae-b",
            "additional_slave_SAE_IDs is empty: leave it out for one slave",
        ),
        (
            r(None, None, Some(vec!["sae-b"])),
            "sae-b",
            "additional_slave_SAE_IDs repeats an SAE (or names the slave)",
        ),
        (
            r(None, None, Some(vec!["sae-c", "sae-c"])),
            "sae-b",
            "additional_slave_SAE_IDs: at most max_SAE_ID_count (1)",
        ),
        (
            r(None, None, Some(vec![" "])),
            "sae-b",
            "additional_slave_SAE_IDs entry is empty or blank",
        ),
        (r(None, None, None), " ", "slave_SAE_ID is empty or blank"),
        (
            r(None, None, None),
            "sae-a",
            "slave_SAE_ID is the caller's own SAE ID",
        ),
        (
            r(None, None, None),
            "nobody",
            "slave_SAE_ID \"nobody\" is not an SAE of KME \"node-b\"",
        ),
    ] {
        let e = enc(&a, "sae-a", slave, req.clone()).unwrap_err();
        assert_eq!(
            (e.status, e.message.as_ref()),
            (400, message),
            "{req:?} {slave}"
        );
    }
    let e = enc(&a, "sae-b", "sae-c", KeyRequest::default()).unwrap_err();
    assert_eq!(e.status, 401, "an SAE of the other node cannot call here");
}

#[test]
fn status_matches_the_defaults_and_short_key_is_a_503() {
    let (a, _) = nodes();
    let v: Value = serde_json::from_slice(&a.status(Some("sae-a"), "sae-b").unwrap()).unwrap();
    assert_eq!(v["source_KME_ID"], "node-a");
    assert_eq!(v["target_KME_ID"], "node-b");
    assert_eq!(v["master_SAE_ID"], "sae-a");
    assert_eq!(v["slave_SAE_ID"], "sae-b");
    assert_eq!(v["key_size"], 256);
    assert_eq!(v["stored_key_count"], 128, "4096 bytes of 32");
    assert_eq!(v["max_key_count"], 16384);
    assert_eq!(v["max_SAE_ID_count"], 1);
    let one = keys(&enc(&a, "sae-a", "sae-b", KeyRequest::default()).unwrap());
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].1.len(), 44, "256 bits in base64");
}

#[test]
fn short_key_takes_nothing_and_is_a_503() {
    let fake = Arc::new(Fake::default());
    let cfg = Etsi014Config {
        kme_id: "node-a".into(),
        peer_kme_id: "node-b".into(),
        saes: vec!["sae-a".into()],
        peer_saes: vec!["sae-b".into()],
        ..Etsi014Config::default()
    };
    let a = Etsi014::new(cfg, fake.clone()).unwrap();
    fake.short.store(true, std::sync::atomic::Ordering::Relaxed);
    let req = a
        .enc_request(Some("sae-a"), "sae-b", &KeyRequest::default())
        .unwrap();
    let Short(refusal) = a.enc_keys(&req, Duration::ZERO).unwrap_err();
    assert_eq!(refusal.status, 503);
    let body: Value = serde_json::from_slice(&refusal.body()).unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("key data access error")
    );
    assert!(body.get("details").is_none());
    assert!(fake.next.lock().unwrap().is_empty(), "nothing issued");
}
