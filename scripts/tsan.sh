#!/usr/bin/env bash
# ThreadSanitizer over the threaded key code: all of keypipe-core's unit
# and integration tests (the key arena's free list and the lock-free ring
# in `key::`, the device poller that fills the ring, the engine with its
# poller, link and ledger threads, shutdown), the C handles' call
# accounting (keypipe-ffi `handle::`) and the C ABI's key path
# (keypipe-ffi `tests/key_path.rs`: an engine pair, callers on several
# threads, a shutdown racing a blocked call).
#
# std is rebuilt with the sanitizer (-Zbuild-std), so its atomics, locks
# and thread joins are seen too. TSAN_OPTIONS=halt_on_error=1 makes the
# first race fail the run. Builds go to target/tsan (their own flags;
# the normal target/ stays untouched).
#
# Usage: scripts/tsan.sh [extra args for the test harness]
# Env: TSAN_TOOLCHAIN (default nightly), TSAN_OPTIONS (default below).
set -euo pipefail
cd "$(dirname "$0")/.."

toolchain=${TSAN_TOOLCHAIN:-nightly}
if ! rustup component list --toolchain "$toolchain" --installed 2>/dev/null | grep -q '^rust-src'; then
    echo "tsan.sh: installing rust-src for $toolchain" >&2
    rustup component add --toolchain "$toolchain" rust-src
fi

target=$(rustc "+$toolchain" -vV | sed -n 's/^host: //p')
export RUSTFLAGS="${RUSTFLAGS:-} -Zsanitizer=thread"
export RUSTDOCFLAGS="${RUSTDOCFLAGS:-} -Zsanitizer=thread"
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1 second_deadlock_stack=1}
export CARGO_TARGET_DIR=${TSAN_TARGET_DIR:-target/tsan}
echo "tsan.sh: $(rustc "+$toolchain" --version), target $target, TSAN_OPTIONS=$TSAN_OPTIONS"

cargo_tsan() {
    cargo "+$toolchain" test -Zbuild-std --target "$target" "$@"
}

. scripts/steps.sh
steps_start tsan cargo_tsan
step "core (key::, device::poller, engine, ...)" -p keypipe-core --lib --tests -- "$@"
step "ffi handle::" -p keypipe-ffi --lib -- handle:: "$@"
step "ffi key_path" -p keypipe-ffi --test key_path -- "$@"
steps_end "times include the build"
