#!/usr/bin/env bash
# The dependency policy of deny.toml: licences, bans (duplicate versions,
# wildcards) and sources, with cargo-deny (installed from crates.io, a
# pinned version, when missing). RustSec advisories are checked too when
# a copy of the advisory database is on the machine (cargo-deny keeps it
# in $CARGO_HOME/advisory-dbs; `cargo deny fetch` gets it where GitHub is
# reachable); without one that check is skipped and says so.
set -euo pipefail
cd "$(dirname "$0")/.."

version=0.20.2
if [[ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $version" ]]; then
    echo "deny: installing cargo-deny $version"
    # A debug build: about a minute to build instead of four, and the
    # check still takes seconds.
    cargo install cargo-deny --locked --debug --version "$version"
fi
checks=(licenses bans sources)
db="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
if compgen -G "$db/*/crates" >/dev/null; then
    checks+=(advisories)
else
    echo "deny: no RustSec database in $db: advisories not checked"
fi
cargo deny --offline check "${checks[@]}"
