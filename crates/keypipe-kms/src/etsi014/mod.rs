//! ETSI GS QKD 014 key delivery (sans-IO): `status`, `enc_keys` and
//! `dec_keys` of one KME (a node), over directed key streams of the QKD
//! link between this node and its peer (see [`supply`]).
//!
//! Each (master SAE, set of slave SAEs) is served by its own stream, which
//! the master's node issues and the slaves' node redeems, so each
//! direction of a pair has its own key and `enc_keys` never waits for the
//! peer node. A `key_ID` names the key's place in its stream ([`key_id`]),
//! never its bytes. Answers are exact or refused, never partial; every
//! refusal is a JSON `{"message"}` with 400, 401 or 503 (the messages the
//! standard fixes are used where it fixes one).

pub mod answer;
pub mod config;
pub mod copies;
pub mod key_id;
pub mod pairs;
pub mod request;
pub mod supply;

use std::borrow::Cow;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use uuid::Uuid;
use zeroize::Zeroizing;

pub use config::Etsi014Config;
use copies::{Copies, Source};
use pairs::{Pair, PairTable};
pub use request::KeyRequest;
use supply::{KeySupply, Span, SupplyError};

/// `one or more keys specified are not found on KME` (normative).
pub const NOT_FOUND: &str = "one or more keys specified are not found on KME";

/// Multicast slave sets one master may use (each is a stream of the link,
/// kept for good: key ids never repeat).
pub const MAX_MULTICAST_SETS: usize = 16;

/// A refused request: its HTTP status (the service answers 400, 401 or
/// 503; the HTTP adapter also 405) and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status.
    pub status: u16,
    /// What went wrong (never key material).
    pub message: Cow<'static, str>,
}

impl Refusal {
    /// A 400.
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal {
            status: 400,
            message: message.into(),
        }
    }

    fn unauthorized(message: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal {
            status: 401,
            message: message.into(),
        }
    }

    fn unavailable(message: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal {
            status: 503,
            message: message.into(),
        }
    }

    /// The JSON body `{"message": …}`.
    pub fn body(&self) -> Vec<u8> {
        answer::error(&self.message)
    }
}

/// An answer: 200 with its JSON body (a key container holds key: the
/// caller wipes it once sent), or a refusal.
pub type Answer = Result<Vec<u8>, Refusal>;

/// The `enc_keys` wait ran out (or was zero) before key was there; nothing
/// was taken. Ask again with a longer wait, or answer `refusal`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Short(pub Refusal);

/// A checked `enc_keys` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncRequest {
    /// The stream that serves it.
    pair: Pair,
    /// Keys.
    number: u64,
    /// Bytes per key.
    len: u64,
}

/// One node's 014 service.
pub struct Etsi014 {
    config: Etsi014Config,
    supply: Arc<dyn KeySupply>,
    pairs: RwLock<PairTable>,
    copies: Mutex<Copies>,
    /// How many directed streams the engine knew when the table last
    /// learnt them.
    learnt: Mutex<usize>,
}

impl std::fmt::Debug for Etsi014 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etsi014")
            .field("kme_id", &self.config.kme_id)
            .finish_non_exhaustive()
    }
}

impl Etsi014 {
    /// The service `config` describes over `supply`. Opens the stream of
    /// every (local master, remote slave) pair, and knows the streams of
    /// every (remote master, local slave) pair, so unicast needs no set-up
    /// at request time.
    pub fn new(config: Etsi014Config, supply: Arc<dyn KeySupply>) -> Result<Etsi014, String> {
        config.validate()?;
        let service = Etsi014 {
            copies: Mutex::new(Copies::new(config.copies_ttl, config.max_copies)),
            config,
            supply,
            pairs: RwLock::new(PairTable::default()),
            learnt: Mutex::new(0),
        };
        for master in &service.config.saes {
            for slave in &service.config.peer_saes {
                let pair = service.pair(master, &[slave]);
                if let Err(e) = service.open(&pair) {
                    tracing::warn!(message = %e.message, master, slave, "etsi014: stream not opened yet");
                }
            }
        }
        for master in &service.config.peer_saes {
            for slave in &service.config.saes {
                service.known(service.pair(master, &[slave]));
            }
        }
        Ok(service)
    }

    /// The stream of `master` and `slaves` on this link.
    fn pair(&self, master: &str, slaves: &[&str]) -> Pair {
        Pair::new(master, slaves, &|name| self.supply.stream_id(name))
    }

    /// The configuration.
    pub fn config(&self) -> &Etsi014Config {
        &self.config
    }

    fn known(&self, pair: Pair) {
        self.pairs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pair);
    }

    /// Opens `pair`'s stream as its issuer, once.
    fn open(&self, pair: &Pair) -> Result<(), Refusal> {
        let tag = key_id::stream_tag(&pair.ksid);
        {
            let table = self.pairs.read().unwrap_or_else(PoisonError::into_inner);
            if table.get(tag).iter().any(|p| p.ksid == pair.ksid) {
                return Ok(());
            }
            if pair.slaves.len() > 1 && table.multicast_of(&pair.master) >= MAX_MULTICAST_SETS {
                return Err(Refusal::unavailable(format!(
                    "key data access error: a master may use at most {MAX_MULTICAST_SETS} sets of \
                     additional_slave_SAE_IDs"
                )));
            }
        }
        self.supply
            .open(pair.ksid, &pair.source(), &pair.destination(), true)
            .map_err(supply_refusal)?;
        self.known(pair.clone());
        Ok(())
    }

    /// The caller, which must be an SAE attached to this KME.
    fn caller<'a>(&self, caller: Option<&'a str>) -> Result<&'a str, Refusal> {
        match caller {
            Some(c) if self.config.saes.iter().any(|s| s == c) => Ok(c),
            Some(c) => Err(Refusal::unauthorized(format!(
                "SAE {c:?} is not attached to KME {:?}",
                self.config.kme_id
            ))),
            None => Err(Refusal::unauthorized(
                "a client certificate of an SAE (OU=sae, CN=SAE ID) is required",
            )),
        }
    }

    /// Checks that `other` (named in the path or the request as `what`)
    /// is an SAE of the peer KME, other than the caller.
    fn remote(&self, what: &str, other: &str, caller: &str) -> Result<(), Refusal> {
        if let Some(why) = config::sae_id_problem(other) {
            return Err(Refusal::bad_request(format!("{what} {why}")));
        }
        if other == caller {
            return Err(Refusal::bad_request(format!(
                "{what} is the caller's own SAE ID"
            )));
        }
        if self.config.peer_saes.iter().any(|s| s == other) {
            return Ok(());
        }
        let shown: String = other.chars().take(64).collect();
        Err(Refusal::bad_request(
            if self.config.saes.iter().any(|s| s == other) {
                format!(
                    "{what} {shown:?} is attached to this KME: keypipe serves key between SAEs of \
                     the two nodes of a link"
                )
            } else {
                format!(
                    "{what} {shown:?} is not an SAE of KME {:?}",
                    self.config.peer_kme_id
                )
            },
        ))
    }

    /// `GET /api/v1/keys/{slave_SAE_ID}/status`.
    pub fn status(&self, caller: Option<&str>, slave: &str) -> Answer {
        let master = self.caller(caller)?;
        self.remote("slave_SAE_ID", slave, master)?;
        let pair = self.pair(master, &[slave]);
        let key_bytes = u64::from(self.config.key_size / 8);
        let stored = self.supply.issuable(&pair.ksid) / key_bytes;
        let max_count = self.supply.capacity() / key_bytes;
        Ok(answer::status(
            &self.config,
            master,
            slave,
            stored,
            max_count,
            max_sae_ids(&self.config),
        ))
    }

    /// Checks an `enc_keys` request of `caller` for `slave`.
    pub fn enc_request(
        &self,
        caller: Option<&str>,
        slave: &str,
        req: &KeyRequest,
    ) -> Result<EncRequest, Refusal> {
        let master = self.caller(caller)?;
        self.remote("slave_SAE_ID", slave, master)?;
        let c = &self.config;
        let number = req.number.unwrap_or(1);
        if number == 0 || number > u64::from(c.max_key_per_request) {
            return Err(Refusal::bad_request(format!(
                "number must be 1 to max_key_per_request ({})",
                c.max_key_per_request
            )));
        }
        let size = req.size.unwrap_or(u64::from(c.key_size));
        if !size.is_multiple_of(8) {
            return Err(Refusal::bad_request(request::SIZE_MULTIPLE));
        }
        if size < u64::from(c.min_key_size) || size > u64::from(c.max_key_size) {
            return Err(Refusal::bad_request(format!(
                "size must be from min_key_size ({}) to max_key_size ({}) bits",
                c.min_key_size, c.max_key_size
            )));
        }
        let mut slaves = vec![slave];
        if let Some(extra) = &req.additional {
            if extra.is_empty() {
                return Err(Refusal::bad_request(
                    "additional_slave_SAE_IDs is empty: leave it out for one slave",
                ));
            }
            let most = max_sae_ids(c);
            if extra.len() as u64 > u64::from(most) {
                return Err(Refusal::bad_request(format!(
                    "additional_slave_SAE_IDs: at most max_SAE_ID_count ({most})"
                )));
            }
            for id in extra {
                self.remote("additional_slave_SAE_IDs entry", id, master)?;
                if slaves.contains(&id.as_str()) {
                    return Err(Refusal::bad_request(
                        "additional_slave_SAE_IDs repeats an SAE (or names the slave)",
                    ));
                }
                slaves.push(id);
            }
        }
        Ok(EncRequest {
            pair: self.pair(master, &slaves),
            number,
            len: size / 8,
        })
    }

    /// `enc_keys`: issues `req.number` keys, waiting at most `wait` for
    /// key. `Err(Short)` when the wait ran out with nothing taken.
    pub fn enc_keys(&self, req: &EncRequest, wait: Duration) -> Result<Answer, Short> {
        if let Err(e) = self.open(&req.pair) {
            return Ok(Err(e));
        }
        let total = req.number * req.len;
        let mut buf = Zeroizing::new(vec![0u8; total as usize]);
        let first = match self.supply.issue(&req.pair.ksid, &mut buf, wait) {
            Ok(first) => first,
            Err(SupplyError::Short) => {
                return Err(Short(Refusal::unavailable(
                    "key data access error: not enough key is available now; try again shortly",
                )));
            }
            Err(e) => return Ok(Err(supply_refusal(e))),
        };
        if first + total > key_id::MAX_OFFSET {
            return Ok(Err(Refusal::unavailable(
                "key data access error: this pair's key stream is exhausted",
            )));
        }
        let ids: Vec<Uuid> = (0..req.number)
            .map(|i| self.id_of(req.pair.ksid, first + i * req.len, req.len))
            .collect();
        let keys = ids
            .iter()
            .zip(buf.chunks(req.len as usize))
            .map(|(id, k)| (*id, k));
        Ok(Ok(answer::key_container(keys)))
    }

    fn id_of(&self, ksid: Uuid, first: u64, len: u64) -> Uuid {
        let span = Span { ksid, first, len };
        key_id::encode(&span, self.supply.tag(&span))
    }

    /// The stream and span key id `id` names for `master`'s keys, checked
    /// against its keyed tag.
    fn resolve(&self, id: &Uuid, master: &str) -> Option<(Pair, Span)> {
        let (tag, first, len, mac) = key_id::decode(id)?;
        let lookup = |table: &PairTable| {
            table.get(tag).iter().find_map(|p| {
                let span = Span {
                    ksid: p.ksid,
                    first,
                    len,
                };
                (p.master == master && key_id::mac_matches(mac, self.supply.tag(&span)))
                    .then(|| (p.clone(), span))
            })
        };
        if let Some(found) = lookup(&self.pairs.read().unwrap_or_else(PoisonError::into_inner)) {
            return Some(found);
        }
        // A multicast stream the peer opened since: learn the streams, only
        // when there are new ones (made-up ids cost a count, no more).
        {
            let mut learnt = self.learnt.lock().unwrap_or_else(PoisonError::into_inner);
            let now = self.supply.stream_count();
            if now == *learnt {
                return None;
            }
            *learnt = now;
        }
        for (ksid, source, destination) in self.supply.streams() {
            if let Some(pair) =
                Pair::parse(ksid, &source, &destination, &|n| self.supply.stream_id(n))
            {
                self.known(pair);
            }
        }
        lookup(&self.pairs.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// `dec_keys`: the keys `ids` of `master`, for the calling slave; all
    /// or none, each once per slave.
    pub fn dec_keys(&self, caller: Option<&str>, master: &str, ids: &[Uuid]) -> Answer {
        let slave = self.caller(caller)?;
        self.remote("master_SAE_ID", master, slave)?;
        if ids.len() as u64 > u64::from(self.config.max_key_per_request) {
            return Err(Refusal::bad_request(format!(
                "at most max_key_per_request ({}) key_IDs per request",
                self.config.max_key_per_request
            )));
        }
        let mut resolved = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            if ids[..i].contains(id) {
                return Err(Refusal::bad_request(format!("key_ID {id} is named twice")));
            }
            let Some((pair, span)) = self.resolve(id, master) else {
                return Err(Refusal::bad_request(NOT_FOUND));
            };
            if !pair.slaves.iter().any(|s| s == slave) {
                return Err(Refusal::unauthorized(format!(
                    "SAE {slave:?} was not named as a slave of key {id}"
                )));
            }
            resolved.push((*id, pair, span));
        }
        let now = Instant::now();
        let mut copies = self.copies.lock().unwrap_or_else(PoisonError::into_inner);
        copies.purge(now);
        let mut from_engine = Vec::new();
        let mut sources = Vec::with_capacity(resolved.len());
        for (id, _, span) in &resolved {
            let source = copies.source(id, slave, now);
            match source {
                Source::Engine => from_engine.push(*span),
                Source::Copy => {}
                Source::Gone => return Err(Refusal::bad_request(NOT_FOUND)),
            }
            sources.push(source);
        }
        let total: u64 = from_engine.iter().map(|s| s.len).sum();
        let mut engine_keys = Zeroizing::new(vec![0u8; total as usize]);
        self.supply
            .redeem(&from_engine, &mut engine_keys)
            .map_err(supply_refusal)?;
        // Everything is in hand. The copies owed to this caller are taken
        // before new ones are left (leaving may evict the oldest).
        let mut keys: Vec<(Uuid, Option<Zeroizing<Vec<u8>>>)> = resolved
            .iter()
            .zip(&sources)
            .map(|((id, _, _), source)| {
                let copy = (*source == Source::Copy).then(|| copies.take(id, slave));
                (*id, copy.flatten())
            })
            .collect();
        let mut at = 0usize;
        for (((id, pair, span), source), (_, key)) in resolved.iter().zip(&sources).zip(&mut keys) {
            if *source != Source::Engine {
                continue;
            }
            let fresh = Zeroizing::new(engine_keys[at..at + span.len as usize].to_vec());
            at += span.len as usize;
            let others: Vec<String> = pair
                .slaves
                .iter()
                .filter(|s| s.as_str() != slave)
                .cloned()
                .collect();
            if !others.is_empty() {
                // Multicast: the other slaves find their copy here.
                copies.put(*id, &fresh, others, now);
            }
            *key = Some(fresh);
        }
        drop(copies);
        // Under the copies lock, each source checked above is there.
        let keys: Vec<(Uuid, Zeroizing<Vec<u8>>)> = keys
            .into_iter()
            .map(|(id, k)| (id, k.expect("every key is in hand")))
            .collect();
        Ok(answer::key_container(
            keys.iter().map(|(id, k)| (*id, k.as_slice())),
        ))
    }
}

/// The `max_SAE_ID_count` this node offers: as configured, and no more
/// than the peer node has SAEs beside the slave.
fn max_sae_ids(c: &Etsi014Config) -> u32 {
    c.max_sae_id_count
        .min(c.peer_saes.len().saturating_sub(1) as u32)
}

fn supply_refusal(e: SupplyError) -> Refusal {
    match e {
        SupplyError::NotFound => Refusal::bad_request(NOT_FOUND),
        SupplyError::Short => Refusal::unavailable(
            "key data access error: not enough key is available now; try again shortly",
        ),
        SupplyError::NoLink => Refusal::unavailable(
            "key data access error: the QKD link to the peer KME is down; try again later",
        ),
        SupplyError::Unusable(why) => Refusal::unavailable(format!("key data access error: {why}")),
    }
}

#[cfg(test)]
mod tests;
