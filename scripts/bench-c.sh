#!/usr/bin/env bash
# kp_get_key keys/s from C (one thread, 32 B and 1 KiB chunks), against the
# release library of this tree and, when given, a baseline library built
# from another commit, alternating: scripts/bench-c.sh [BASELINE_LIBDIR] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p keypipe-ffi -q
out=$(mktemp -d)
build() { cc -std=c11 -O2 -Iinclude -Iexamples/c examples/c/bench_get_key.c -o "$2" "$1/libkeypipe.a" -lpthread -ldl -lm; }
build target/release "$out/new"
[ -n "${1:-}" ] && build "$1" "$out/base"
for round in $(seq "${2:-3}"); do
    for chunk in 32 1024; do
        [ -n "${1:-}" ] && echo "baseline: $("$out/base" $chunk 2)"
        echo "this tree: $("$out/new" $chunk 2)"
    done
done
rm -rf "$out"
