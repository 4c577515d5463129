#!/usr/bin/env bash
# Checks the minimum supported Rust version, `rust-version` in Cargo.toml:
#   1. no package of the dependency graph declares a newer rust-version
#      (a dependency update that raises it fails here, not at a user's);
#   2. the workspace builds with that toolchain: when the toolchain in use
#      is that version the CI build already is the MSRV build; otherwise
#      `cargo +VERSION check` (the toolchain installed with rustup when
#      missing), in target/msrv.
# Clippy's `incompatible_msrv` lint (on in CI) flags standard-library
# items newer than rust-version in our own code.
set -euo pipefail
cd "$(dirname "$0")/.."

# Prints the workspace's rust-version after checking the graph against it.
msrv=$(cargo metadata --format-version 1 --locked | python3 -c '
import json, sys

def version(s):
    parts = [int(x) for x in s.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))

m = json.load(sys.stdin)
own = {p["rust_version"] for p in m["packages"] if p["id"] in m["workspace_members"]}
if len(own) != 1 or None in own:
    sys.exit("msrv: the workspace crates must share one rust-version, found %s" % sorted(map(str, own)))
msrv = own.pop()
bad = ["%s %s needs Rust %s" % (p["name"], p["version"], p["rust_version"])
       for p in m["packages"]
       if p["rust_version"] and version(p["rust_version"]) > version(msrv)]
if bad:
    sys.exit("msrv: rust-version %s is not true; these need more:\n  %s" % (msrv, "\n  ".join(bad)))
print(msrv)
')
echo "msrv: no dependency needs more than Rust $msrv"

current=$(rustc --version | awk '{print $2}')
want=$msrv
[[ $want == *.*.* ]] || want="$want.0"
# A patch release of the declared minor version counts as that version.
if [[ ${current%.*} == "${want%.*}" ]]; then
    echo "msrv: the toolchain in use is Rust $current, the declared minimum: the CI build is the MSRV build"
    exit 0
fi
command -v rustup >/dev/null || {
    echo "msrv: building with Rust $want needs rustup (Rust $current is in use)" >&2
    exit 1
}
if ! rustup run "$want" rustc --version >/dev/null 2>&1; then
    echo "msrv: installing Rust $want"
    rustup toolchain install "$want" --profile minimal
fi
CARGO_TARGET_DIR=target/msrv cargo "+$want" check --workspace --all-targets --locked
echo "msrv: the workspace builds with Rust $want"
