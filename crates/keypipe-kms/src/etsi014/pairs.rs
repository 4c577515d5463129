//! Which directed stream serves which SAEs: one stream per (master SAE,
//! set of slave SAEs), its KSID derived from the names under the link's
//! secret, so both nodes agree without talking and nobody else can name
//! it, and the table from a key id's stream tag back to it.

use std::collections::HashMap;

use uuid::Uuid;

use super::key_id::stream_tag;

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
    /// The stream of `master` and `slaves` (any order, no duplicates);
    /// `ksid_of` makes the KSID from the names (length-prefixed, master
    /// first, slaves sorted).
    pub fn new(master: &str, slaves: &[&str], ksid_of: &dyn Fn(&[u8]) -> Uuid) -> Pair {
        let mut slaves: Vec<String> = slaves.iter().map(|s| (*s).to_owned()).collect();
        slaves.sort();
        let mut name = b"etsi014 stream of a master and its slaves".to_vec();
        for part in std::iter::once(master).chain(slaves.iter().map(String::as_str)) {
            name.extend_from_slice(&(part.len() as u64).to_be_bytes());
            name.extend_from_slice(part.as_bytes());
        }
        let ksid = ksid_of(&name);
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
    pub fn parse(
        ksid: Uuid,
        source: &str,
        destination: &str,
        ksid_of: &dyn Fn(&[u8]) -> Uuid,
    ) -> Option<Pair> {
        let master = unescape(source.strip_prefix(SCHEME)?)?;
        let slaves = destination
            .strip_prefix(SCHEME)?
            .split(',')
            .map(unescape)
            .collect::<Option<Vec<String>>>()?;
        let names: Vec<&str> = slaves.iter().map(String::as_str).collect();
        let pair = Pair::new(&master, &names, ksid_of);
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

    /// Multicast streams (more than one slave) of `master`.
    pub fn multicast_of(&self, master: &str) -> usize {
        self.by_tag
            .values()
            .flatten()
            .filter(|p| p.master == master && p.slaves.len() > 1)
            .count()
    }

    /// The streams whose key ids carry `tag` (a few: it has 16 bits).
    pub fn get(&self, tag: u32) -> &[Pair] {
        self.by_tag.get(&tag).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A keyed KSID as the engine makes it.
    fn keyed(key: u8) -> impl Fn(&[u8]) -> Uuid {
        move |name| {
            let out = blake3::keyed_hash(&[key; 32], name);
            uuid::Builder::from_custom_bytes(out.as_bytes()[..16].try_into().unwrap()).into_uuid()
        }
    }

    #[test]
    fn both_nodes_name_a_stream_alike_and_read_it_back() {
        let k = keyed(1);
        let a = Pair::new("sae,a", &["sae-c", "säe b"], &k);
        let b = Pair::new("sae,a", &["säe b", "sae-c"], &k);
        assert_eq!(a, b, "the order of the slaves does not matter");
        assert_eq!(a.ksid.get_version_num(), 8);
        assert_ne!(a.ksid, Pair::new("sae,a", &["sae-c"], &k).ksid);
        assert_ne!(a.ksid, Pair::new("sae-c", &["sae,a", "säe b"], &k).ksid);
        assert_ne!(
            a.ksid,
            Pair::new("sae,a", &["sae-c", "säe b"], &keyed(2)).ksid,
            "another link"
        );
        // Names are length-prefixed: no two splits of one string collide.
        assert_ne!(
            Pair::new("ab", &["c"], &k).ksid,
            Pair::new("a", &["bc"], &k).ksid
        );
        let back = Pair::parse(a.ksid, &a.source(), &a.destination(), &k).unwrap();
        assert_eq!(back, a);
        assert!(Pair::parse(Uuid::new_v4(), &a.source(), &a.destination(), &k).is_none());
        assert!(Pair::parse(a.ksid, "http://x", &a.destination(), &k).is_none());
    }
}
