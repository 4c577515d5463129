//! What push mode needs of the node: each stream's KMS URIs and push
//! target, the indexes its KMS confirmed, whether it is pushed, and the
//! index a restarted pusher resumes at.

use uuid::Uuid;

use super::Node;
use crate::qkd::StreamUris;
use crate::qkd::qos::Qos;
use crate::qkd::stream::{Side, Stream};

impl Node {
    /// The consumer of `ksid` confirmed these wire indexes (a KMS answered
    /// 201): the ledger records them as delivered.
    pub fn confirm(&mut self, ksid: &Uuid, indexes: &[u32]) {
        if let Some(s) = self.streams.get_mut(ksid) {
            for &i in indexes {
                let c = s.absolute(i);
                if s.taken.contains(c) {
                    s.delivered.insert(c);
                }
            }
            self.reservations.touch(*ksid);
        }
    }

    /// Records whether `ksid` is pushed to its KMS (so a restart resumes
    /// pushing).
    pub fn set_pushing(&mut self, ksid: &Uuid, pushing: bool) {
        if let Some(s) = self.streams.get_mut(ksid)
            && s.pushing != pushing
        {
            s.pushing = pushing;
            self.reservations.touch(*ksid);
        }
    }

    /// What this node knows of stream `ksid`'s KMS URIs: opened here, or
    /// announced by the peer (then as the creating KMS gave them).
    pub fn stream_uris(&self, ksid: &Uuid) -> Option<StreamUris> {
        self.streams.get(ksid).map(|s| StreamUris {
            source: s.source.clone(),
            destination: s.destination.clone(),
            created_here: s.created_here,
            open_here: s.local == Side::Open,
        })
    }

    /// The URI each stream open here is pushed to (the source on the
    /// creating node, the destination on the other).
    pub fn target_uris(&self) -> Vec<String> {
        self.streams
            .values()
            .filter(|s| s.local == Side::Open && s.issuer.is_none())
            .map(|s| {
                if s.created_here {
                    s.source.clone()
                } else {
                    s.destination.clone()
                }
            })
            .collect()
    }

    /// Streams open here that were being pushed (after a restart): KSID,
    /// the URI to push to, QoS, and the wire index to resume at.
    pub fn pushing_streams(&self) -> Vec<(Uuid, String, Qos, u32)> {
        self.streams
            .iter()
            .filter(|(_, s)| s.local == Side::Open && s.pushing && !s.failed && s.issuer.is_none())
            .map(|(k, s)| {
                let target = if s.created_here {
                    &s.source
                } else {
                    &s.destination
                };
                (*k, target.clone(), s.qos.clone(), resume_index(s) as u32)
            })
            .collect()
    }
}

/// The wire index a restarted pusher resumes at: the first chunk not
/// confirmed, from the start of the run of confirmed chunks the cursor is
/// in (chunks in between that are gone are skipped as the pusher meets
/// them).
fn resume_index(s: &Stream) -> u64 {
    let mut next = s.cursor;
    for (start, end) in s.delivered.iter() {
        if start <= s.cursor && s.cursor < end {
            next = end;
        }
    }
    if s.delivered.is_empty() { 0 } else { next }
}
