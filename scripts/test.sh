#!/usr/bin/env bash
# The whole test suite (the README's test command): installs what the
# tests need when missing (scripts/test-deps.sh), then `cargo test` over
# every crate of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-deps.sh
cargo test "$@"
