#!/usr/bin/env bash
# The API docs of every library of the workspace (`cargo doc --no-deps`,
# `--lib`: the `keypipe` binary and the C library share a name),
# with every rustdoc warning an error: broken or private intra-doc links,
# bad code blocks, unclosed HTML. Extra arguments go to `cargo doc`.
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTDOCFLAGS="${RUSTDOCFLAGS:-} -D warnings" cargo doc --workspace --no-deps --lib "$@"
