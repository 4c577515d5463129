//! Whether two nodes may pair: the checks a hello must pass (protocol
//! version, roles, names) and those on both nodes' device parameters
//! (block size, device fingerprint, a new ledger against a used link).

use super::LinkSession;
use super::wire::{Hello, Params, VERSION};

impl LinkSession {
    /// Why this node refuses the peer's `hello`, its own parameters being
    /// `mine`, or `None`.
    pub(super) fn hello_problem(&self, hello: &Hello, mine: &Params) -> Option<String> {
        if hello.version != VERSION {
            Some(format!(
                "link protocol version {} is not this node's ({VERSION}): run the same keypipe on both nodes",
                hello.version
            ))
        } else if hello.role == self.role {
            Some(format!(
                "both {} and {} are configured as {}: one node of a link must be the leader, the other the follower",
                self.me,
                hello.from,
                self.role.as_str()
            ))
        } else if !hello.to.is_empty() && hello.to != self.me {
            Some(format!(
                "{} expects its peer to be {}, but this is {}",
                hello.from, hello.to, self.me
            ))
        } else if let Some(expected) = self.peer_name.as_ref().filter(|e| **e != hello.from) {
            Some(format!(
                "{} expects its peer to be {expected}, not {}",
                self.me, hello.from
            ))
        } else {
            pairing_problem(&self.me, mine, &hello.from, &hello.params)
        }
    }
}

/// Why two nodes cannot pair, or `None`.
pub(super) fn pairing_problem(
    me: &str,
    mine: &Params,
    peer: &str,
    theirs: &Params,
) -> Option<String> {
    if mine.block_size != theirs.block_size {
        return Some(format!(
            "block_size differs: {me} uses {}, {peer} uses {}; both nodes must cut the key into the same blocks",
            mine.block_size, theirs.block_size
        ));
    }
    if mine.fingerprint != theirs.fingerprint {
        return Some(format!(
            "device fingerprints differ between {me} and {peer}: the two nodes are not fed the same key \
             stream (another device secret, another key file, or the same file from another offset)"
        ));
    }
    for (fresh_name, fresh, other_name, other) in
        [(me, mine, peer, theirs), (peer, theirs, me, mine)]
    {
        if fresh.ledger_new && other.paired_before && other.position > 0 {
            return Some(format!(
                "{fresh_name} has no key ledger for its device (a new or lost data directory, or another \
                 host's device), but {other_name}'s ledger shows this link already spent key up to block {}: \
                 starting from block 0 could deliver that key again. If {fresh_name}'s device is really \
                 aligned with {other_name}'s, start {fresh_name} with --reset-ledger {fresh_name}",
                other.position
            ));
        }
    }
    None
}
