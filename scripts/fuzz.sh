#!/usr/bin/env bash
# Builds keypipe's cargo-fuzz (libFuzzer) targets (fuzz/) and runs each one
# for a while, then prints a table: target, executions, executions per
# second, crashes. Exits non-zero when any target crashed.
#
#   scripts/fuzz.sh [SECONDS]      # per target, default 20
#
# Environment:
#   FUZZ_TARGETS="a b"   run only these targets (default: all of them)
#   FUZZ_SANITIZER       none (default: the fuzzed code is safe Rust, and
#                        this is fastest) or address
#   FUZZ_JOBS            build jobs (default: cargo's)
#   FUZZ_PARALLEL        targets fuzzed at once (default: one per core)
#
# Each target runs on a scratch corpus, fuzz/corpus/<target>/ (kept between
# runs, not checked in), seeded from the checked-in fuzz/seeds/<target>/
# (never written to), with its dictionary from fuzz/dict/ if it has one.
# Crash inputs land in fuzz/artifacts/<target>/; the script prints how to
# replay one and how to keep it as a regression (fuzz/regressions/<target>/,
# replayed by `cargo test --test fuzz_regressions`). Logs of the last run
# are in fuzz/target/fuzz-logs/.
#
# Needs the nightly toolchain (installed with rustup when missing) and
# cargo-fuzz (installed into target/tools when not on PATH). No sudo.
set -euo pipefail

run_seconds="${1:-20}"
if ! [[ "$run_seconds" =~ ^[0-9]+$ ]] || [ "$run_seconds" -eq 0 ]; then
    echo "usage: $0 [SECONDS]   (a positive number of seconds per target)" >&2
    exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fuzz_dir="$root/fuzz"
sanitizer="${FUZZ_SANITIZER:-none}"
case "$sanitizer" in
    none | address) ;;
    *)
        echo "FUZZ_SANITIZER must be none or address, not $sanitizer" >&2
        exit 2
        ;;
esac

# --- tools ------------------------------------------------------------------

if ! command -v rustup >/dev/null 2>&1; then
    echo "rustup is needed (for the nightly toolchain)" >&2
    exit 1
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    tools="$root/target/tools"
    if [ ! -x "$tools/bin/cargo-fuzz" ]; then
        echo "installing cargo-fuzz into $tools"
        cargo install cargo-fuzz --locked --root "$tools"
    fi
    export PATH="$tools/bin:$PATH"
fi

# --- targets ----------------------------------------------------------------

all_targets=()
for f in "$fuzz_dir"/fuzz_targets/*.rs; do
    all_targets+=("$(basename "$f" .rs)")
done
if [ -n "${FUZZ_TARGETS:-}" ]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
    for t in "${targets[@]}"; do
        if [ ! -f "$fuzz_dir/fuzz_targets/$t.rs" ]; then
            echo "unknown fuzz target $t (targets: ${all_targets[*]})" >&2
            exit 2
        fi
    done
else
    targets=("${all_targets[@]}")
fi

# Longest input per target, and its dictionary.
max_len() {
    case "$1" in
        http_*) echo 65536 ;;
        link_session | keytalk_csr | agreement_*) echo 8192 ;;
        *) echo 4096 ;;
    esac
}
dictionary() {
    case "$1" in
        http_* | client_answer) echo http ;;
        origin_parse) echo url ;;
        etsi004_kms_push | etsi004_qkd_request) echo etsi004 ;;
        etsi014_request) echo etsi014 ;;
        ncp_*) echo ncp ;;
        agreement_request | login_request) echo agreement ;;
        keytalk_form) echo keytalk ;;
        keytalk_csr) echo csr ;;
        donau_amount) echo donau ;;
        link_session) echo link ;;
        *) echo "" ;;
    esac
}

# Crash inputs libFuzzer saved in a directory (not its slow-unit files).
count_artifacts() {
    find "$1" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' \
        -o -name 'oom-*' \) | wc -l
}

# -O: optimized; -a: debug assertions and overflow checks (a wrapped
# length is a bug the fuzzer should see).
fuzz_flags=(-O -a -s "$sanitizer" --fuzz-dir "$fuzz_dir")
build_flags=("${fuzz_flags[@]}")
if [ -n "${FUZZ_JOBS:-}" ]; then
    build_flags+=(--jobs "$FUZZ_JOBS")
fi

cd "$root"
echo "building ${#targets[@]} fuzz target(s) (sanitizer: $sanitizer)"
build_start=$(date +%s)
if [ -n "${FUZZ_TARGETS:-}" ]; then
    for t in "${targets[@]}"; do
        cargo +nightly fuzz build "${build_flags[@]}" "$t"
    done
else
    cargo +nightly fuzz build "${build_flags[@]}"
fi
echo "build took $(($(date +%s) - build_start)) s"

# --- runs -------------------------------------------------------------------

log_dir="$fuzz_dir/target/fuzz-logs"
mkdir -p "$log_dir"
# One target's run; writes its table row to $log_dir/$t.row and, when it
# crashed, $log_dir/$t.crashed.
run_target() {
    local t="$1"
    local corpus="$fuzz_dir/corpus/$t"
    local artifacts="$fuzz_dir/artifacts/$t"
    local seeds="$fuzz_dir/seeds/$t"
    mkdir -p "$corpus" "$artifacts"
    rm -f "$log_dir/$t.crashed"
    local before
    before=$(count_artifacts "$artifacts")
    local args=(
        -max_total_time="$run_seconds"
        -max_len="$(max_len "$t")"
        -timeout=30
        -print_final_stats=1
        -artifact_prefix="$artifacts/"
    )
    local dict
    dict="$(dictionary "$t")"
    if [ -n "$dict" ]; then
        args+=(-dict="$fuzz_dir/dict/$dict.dict")
    fi
    local corpora=("$corpus")
    if [ -d "$seeds" ]; then
        corpora+=("$seeds") # read only: libFuzzer writes to the first one
    fi
    local log="$log_dir/$t.log"
    echo "fuzzing $t for ${run_seconds} s"
    local rc=0
    cargo +nightly fuzz run "${fuzz_flags[@]}" "$t" "${corpora[@]}" -- "${args[@]}" >"$log" 2>&1 || rc=$?
    # Executions and speed: libFuzzer's last words, else its last status line.
    local runs secs rate
    runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
    secs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\2/p' "$log" | tail -n 1)
    if [ -z "$runs" ]; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)
    fi
    if [ -z "$runs" ]; then
        runs=$(sed -n 's/^#\([0-9][0-9]*\)[[:space:]].*/\1/p' "$log" | tail -n 1)
    fi
    rate=$(sed -n 's/^stat::average_exec_per_sec: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)
    if [ -z "$rate" ] && [ -n "$runs" ] && [ -n "${secs:-}" ] && [ "${secs:-0}" -gt 0 ]; then
        rate=$((runs / secs))
    fi
    if [ -z "$rate" ]; then
        rate=$(sed -n 's/.*exec\/s: \([0-9]*\).*/\1/p' "$log" | tail -n 1)
    fi
    local after crashes
    after=$(count_artifacts "$artifacts")
    crashes=$((after - before))
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes=1 # failed without an artifact (see its log)
    fi
    if [ "$crashes" -gt 0 ]; then
        touch "$log_dir/$t.crashed"
    fi
    printf '%-22s %12s %10s %8s\n' "$t" "${runs:-?}" "${rate:-?}" "$crashes" >"$log_dir/$t.row"
}

# FUZZ_PARALLEL targets at a time (default: one per core).
parallel="${FUZZ_PARALLEL:-$(nproc)}"
for t in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$parallel" ]; do
        wait -n || true
    done
    run_target "$t" &
done
wait
rows=()
crashed=()
for t in "${targets[@]}"; do
    rows+=("$(cat "$log_dir/$t.row" 2>/dev/null || printf '%-22s %12s %10s %8s' "$t" '?' '?' 1)")
    if [ -e "$log_dir/$t.crashed" ] || [ ! -e "$log_dir/$t.row" ]; then
        crashed+=("$t")
    fi
done

echo
printf '%-22s %12s %10s %8s\n' target execs execs/s crashes
printf '%-22s %12s %10s %8s\n' ---------------------- ------------ ---------- --------
for row in "${rows[@]}"; do
    echo "$row"
done

if [ "${#crashed[@]}" -eq 0 ]; then
    exit 0
fi
echo
for t in "${crashed[@]}"; do
    echo "$t crashed; log: fuzz/target/fuzz-logs/$t.log"
    grep -m 3 -E "panicked at|^thread '|ERROR: libFuzzer" "$log_dir/$t.log" | sed 's/^/    /' || true
    newest=$(find "$fuzz_dir/artifacts/$t" -type f \( -name 'crash-*' -o -name 'leak-*' \
        -o -name 'timeout-*' -o -name 'oom-*' \) -printf '%T@ %f\n' | sort -n | tail -n 1 | cut -d' ' -f2)
    if [ -n "$newest" ]; then
        echo "  replay:  cargo +nightly fuzz run -O -a -s $sanitizer $t fuzz/artifacts/$t/$newest"
        echo "  keep it as a regression (replayed by cargo test --test fuzz_regressions $t):"
        echo "           cp fuzz/artifacts/$t/$newest fuzz/regressions/$t/"
    fi
done
exit 1
