//! Who may use a node's ETSI 004 QKD side, and for which KMS URIs
//! (security review F3): a stream is pushed only to a URI of the KMS that
//! opened it, and only that KMS may get-key or close it.
//!
//! - **The caller.** Over TLS, the client certificate: a KMS's (`OU=kms`),
//!   named by its `CN`. Without a certificate, only a caller on loopback
//!   (a local process), which is then known by the URIs it names.
//! - **With `[[node.kms]]`** (name, uris, max_streams): a KMS with a
//!   certificate must be listed; a URI this node pushes to must be one of
//!   the caller's own (a local caller may name any listed URI, being known
//!   by it); each KMS has at most `max_streams` streams open here.
//! - **Without `[[node.kms]]`** (the quick start): only callers on loopback
//!   without a certificate, and streams are pushed only to loopback URIs.
//! - Never to the peer node's listener, nor to this node's own unless it
//!   serves the KMS side itself (no request loops, no link lane abuse).

use std::net::SocketAddr;

use crate::config::KmsEntrySettings;
use crate::http::{Origin, Request};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A KMS, by its certificate's name.
    Kms(String),
    /// A process on this host, without a certificate.
    Local,
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    uris: Vec<String>,
    max_streams: usize,
}

/// The access rules of one node's ETSI 004 QKD side.
#[derive(Debug, Clone)]
pub struct KmsAccess {
    node: String,
    entries: Vec<Entry>,
    forbidden: Vec<SocketAddr>,
}

/// `uri` in one spelling ([`Origin::canonical`]).
fn normalize(uri: &str) -> Option<String> {
    Origin::parse(uri).ok().map(|o| o.canonical())
}

impl KmsAccess {
    /// The rules of node `node`: its `[[node.kms]]` table, and the
    /// addresses no stream may be pushed to.
    pub fn new(node: &str, table: &[KmsEntrySettings], forbidden: Vec<SocketAddr>) -> Self {
        let entries = table
            .iter()
            .map(|k| Entry {
                name: k.name.clone(),
                uris: k.uris.iter().filter_map(|u| normalize(u)).collect(),
                max_streams: k.max_streams,
            })
            .collect();
        KmsAccess {
            node: node.to_owned(),
            entries,
            forbidden,
        }
    }

    /// Who sent `req`, or why it may not call at all.
    pub fn caller(&self, req: &Request) -> Result<Caller, String> {
        let Some(peer) = req.peer.as_deref() else {
            return Ok(Caller::Local);
        };
        match &peer.identity {
            Some(id) if id.role != "kms" => Err(format!(
                "the client certificate of {:?} is not a KMS's (OU=kms, not {:?})",
                id.name, id.role
            )),
            Some(id) if !self.entries.iter().any(|e| e.name == id.name) => Err(format!(
                "KMS {:?} is not registered on node {} ([[node.kms]])",
                id.name, self.node
            )),
            Some(id) => Ok(Caller::Kms(id.name.clone())),
            None if peer.addr.ip().is_loopback() => Ok(Caller::Local),
            None => Err(format!(
                "a KMS on another host needs a client certificate (OU=kms) to use node {}",
                self.node
            )),
        }
    }

    fn owner(&self, uri: &str) -> Option<&Entry> {
        let uri = normalize(uri)?;
        self.entries.iter().find(|e| e.uris.contains(&uri))
    }

    /// May `caller` have this node push a new stream to `uri` (parsed and
    /// resolved as `origin`), given the URIs of the streams open here?
    pub fn allow_target(
        &self,
        caller: &Caller,
        uri: &str,
        origin: &Origin,
        open_targets: &[String],
    ) -> Result<(), String> {
        if origin.addr.is_some_and(|a| self.forbidden.contains(&a)) {
            return Err(format!(
                "{uri} is a QKD node's listener, not a KMS: refused"
            ));
        }
        if self.entries.is_empty() {
            return match origin.is_loopback() {
                true => Ok(()),
                false => Err(format!(
                    "{uri}: node {} has no [[node.kms]], so it pushes only to loopback URIs",
                    self.node
                )),
            };
        }
        let entry = self.allow_stream(caller, uri)?;
        let open = open_targets
            .iter()
            .filter(|t| self.owner(t).is_some_and(|o| o.name == entry.name))
            .count();
        if open >= entry.max_streams {
            return Err(format!(
                "KMS {:?} has {open} streams open on node {} (max_streams {}): close one first",
                entry.name, self.node, entry.max_streams
            ));
        }
        Ok(())
    }

    /// May `caller` get-key or close a stream this node pushes to
    /// `target`? The KMS that owns `target`, when allowed.
    fn allow_stream(&self, caller: &Caller, target: &str) -> Result<&Entry, String> {
        let owner = self.owner(target).ok_or_else(|| {
            format!(
                "{target} is not the URI of any KMS registered on node {} ([[node.kms]])",
                self.node
            )
        })?;
        match caller {
            Caller::Kms(name) if name != &owner.name => Err(format!(
                "{target} belongs to KMS {:?}, not to {name:?}",
                owner.name
            )),
            _ => Ok(owner),
        }
    }

    /// A first check, before any DNS: with `[[node.kms]]`, one of the two
    /// URIs must be the caller's (or, for a local caller, some KMS's).
    pub fn may_name(&self, caller: &Caller, source: &str, destination: &str) -> Result<(), String> {
        if self.entries.is_empty() {
            return Ok(());
        }
        let owns = |uri: &str| {
            self.owner(uri).is_some_and(|o| match caller {
                Caller::Kms(name) => &o.name == name,
                Caller::Local => true,
            })
        };
        if owns(source) || owns(destination) {
            Ok(())
        } else {
            Err(format!(
                "neither {source} nor {destination} is a URI of this caller's KMS on node {}",
                self.node
            ))
        }
    }

    /// May `caller` get-key or close the stream this node pushes to
    /// `target`?
    pub fn allow_existing(&self, caller: &Caller, target: &str) -> Result<(), String> {
        if self.entries.is_empty() {
            return Ok(()); // the quick start: loopback only, by construction
        }
        self.allow_stream(caller, target).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> KmsAccess {
        let entry = |name: &str, uri: &str| KmsEntrySettings {
            name: name.into(),
            uris: vec![uri.into()],
            insecure_plaintext: false,
            max_streams: 1,
        };
        KmsAccess::new(
            "a",
            &[
                entry("kms-a", "https://KMS-A.example:8443/"),
                entry("kms-b", "https://kms-b.example"),
            ],
            vec!["10.0.0.2:7005".parse().unwrap()],
        )
    }

    fn origin(uri: &str) -> Origin {
        Origin::parse(uri).unwrap()
    }

    #[test]
    fn each_kms_pushes_only_to_its_own_uris_within_its_cap() {
        let t = table();
        let a = Caller::Kms("kms-a".into());
        let uri = "https://kms-a.example:8443";
        assert!(t.allow_target(&a, uri, &origin(uri), &[]).is_ok());
        let err = t
            .allow_target(
                &a,
                "https://kms-b.example",
                &origin("https://kms-b.example"),
                &[],
            )
            .unwrap_err();
        assert!(err.contains("belongs to KMS \"kms-b\""), "{err}");
        let err = t
            .allow_target(
                &a,
                "https://evil.example",
                &origin("https://evil.example"),
                &[],
            )
            .unwrap_err();
        assert!(err.contains("not the URI of any KMS"), "{err}");
        let err = t
            .allow_target(
                &a,
                uri,
                &origin(uri),
                &["https://kms-a.example:8443".into()],
            )
            .unwrap_err();
        assert!(err.contains("max_streams"), "{err}");
        let peer = "http://10.0.0.2:7005";
        assert!(
            t.allow_target(&a, peer, &origin(peer), &[])
                .unwrap_err()
                .contains("QKD node")
        );
        assert!(t.allow_existing(&a, uri).is_ok());
        assert!(t.allow_existing(&Caller::Kms("kms-b".into()), uri).is_err());
        assert!(
            t.allow_existing(&Caller::Local, uri).is_ok(),
            "known by its URI"
        );
    }

    #[test]
    fn without_a_table_only_loopback_uris() {
        let t = KmsAccess::new("a", &[], vec![]);
        let local = "http://127.0.0.1:9000";
        assert!(
            t.allow_target(&Caller::Local, local, &origin(local), &[])
                .is_ok()
        );
        let far = "http://10.1.2.3:9000";
        assert!(
            t.allow_target(&Caller::Local, far, &origin(far), &[])
                .unwrap_err()
                .contains("loopback")
        );
    }
}
