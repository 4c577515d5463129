#!/usr/bin/env bash
# The whole test suite (the README's test command): installs what the
# tests need when missing (scripts/test-deps.sh), then `cargo test` over
# every crate of the workspace, with a throwaway PostgreSQL cluster
# (scripts/pg.sh, a new one in target/pg each run) for the store's
# PostgreSQL tests, stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-deps.sh
# A new cluster each run: the tests' databases do not pile up.
scripts/pg.sh stop
rm -rf target/pg
KEYPIPE_TEST_PG=$(scripts/pg.sh ensure)
export KEYPIPE_TEST_PG
trap 'scripts/pg.sh stop' EXIT
cargo test "$@"
