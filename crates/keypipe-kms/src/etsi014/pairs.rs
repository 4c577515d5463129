//! Which directed stream serves which SAEs: one stream per (master SAE,
//! set of slave SAEs), its KSID derived from the names so both nodes agree
//! without talking, and the table from a key id's stream tag back to it.

use std::collections::HashMap;

use uuid::Uuid;

use super::key_id::stream_tag;

const KSID_CONTEXT: &str = "keypipe 2026 etsi014 stream of a master and its slaves";
/// Prefix of the source and destination of a 014 stream.
const SCHEME: &str = "etsi014:";

/// The SAEs one directed stream serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// The stream's KSID.
    pub ksid: Uuid,
    /// The master SAE (its node issues).
    pub master: String,
    /// The slave SAEs, sorted (their node redeems).
    pub slaves: Vec<String>,
}

impl Pair {
    /// The stream of `master` and `slaves` (any order, no duplicates).
    pub fn new(master: &str, slaves: &[&str]) -> Pair {
        let mut slaves: Vec<String> = slaves.iter().map(|s| (*s).to_owned()).collect();
        slaves.sort();
        let mut h = blake3::Hasher::new_derive_key(KSID_CONTEXT);
        for name in std::iter::once(master).chain(slaves.iter().map(String::as_str)) {
            h.update(&(name.len() as u64).to_be_bytes());
            h.update(name.as_bytes());
        }
        let bytes: [u8; 16] = h.finalize().as_bytes()[..16].try_into().expect("16 bytes");
        let ksid = uuid::Builder::from_custom_bytes(bytes).into_uuid();
        Pair {
            ksid,
            master: master.to_owned(),
            slaves,
        }
    }

    /// The stream's source (the master) as announced to the peer node.
    pub fn source(&self) -> String {
        format!("{SCHEME}{}", escape(&self.master))
    }

    /// The stream's destination (the slaves) as announced to the peer node.
    pub fn destination(&self) -> String {
        let slaves: Vec<String> = self.slaves.iter().map(|s| escape(s)).collect();
        format!("{SCHEME}{}", slaves.join(","))
    }

    /// The pair a stream announced as `source` and `destination` describes,
    /// if it is a 014 stream whose KSID matches its names.
    pub fn parse(ksid: Uuid, source: &str, destination: &str) -> Option<Pair> {
        let master = unescape(source.strip_prefix(SCHEME)?)?;
        let slaves = destination
            .strip_prefix(SCHEME)?
            .split(',')
            .map(unescape)
            .collect::<Option<Vec<String>>>()?;
        let names: Vec<&str> = slaves.iter().map(String::as_str).collect();
        let pair = Pair::new(&master, &names);
        (pair.ksid == ksid).then_some(pair)
    }
}

/// Percent-encodes every byte but unreserved ones (so `,` separates).
fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unescape(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The streams known, by the tag their key ids carry.
#[derive(Debug, Default)]
pub struct PairTable {
    by_tag: HashMap<u32, Vec<Pair>>,
}

impl PairTable {
    /// Adds `pair` (again is harmless).
    pub fn insert(&mut self, pair: Pair) {
        let list = self.by_tag.entry(stream_tag(&pair.ksid)).or_default();
        if !list.iter().any(|p| p.ksid == pair.ksid) {
            list.push(pair);
        }
    }

    /// The streams whose key ids carry `tag` (two only by a 2^-30 chance).
    pub fn get(&self, tag: u32) -> &[Pair] {
        self.by_tag.get(&tag).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_nodes_name_a_stream_alike_and_read_it_back() {
        let a = Pair::new("sae,a", &["sae-c", "säe b"]);
        let b = Pair::new("sae,a", &["säe b", "sae-c"]);
        assert_eq!(a, b, "the order of the slaves does not matter");
        assert_eq!(a.ksid.get_version_num(), 8);
        assert_ne!(a.ksid, Pair::new("sae,a", &["sae-c"]).ksid);
        assert_ne!(a.ksid, Pair::new("sae-c", &["sae,a", "säe b"]).ksid);
        // Names are length-prefixed: no two splits of one string collide.
        assert_ne!(Pair::new("ab", &["c"]).ksid, Pair::new("a", &["bc"]).ksid);
        let back = Pair::parse(a.ksid, &a.source(), &a.destination()).unwrap();
        assert_eq!(back, a);
        assert!(Pair::parse(Uuid::new_v4(), &a.source(), &a.destination()).is_none());
        assert!(Pair::parse(a.ksid, "http://x", &a.destination()).is_none());
    }
}
