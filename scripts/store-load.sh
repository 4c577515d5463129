#!/usr/bin/env bash
# The store's load figures, in one run: NCP encrypt of 1 KiB (req/s, 64
# connections) on one process over SQLite, one process over PostgreSQL,
# and two processes over the same PostgreSQL (32 connections each, run at
# the same time, summed); then the store bench (key creations per second
# and an uncached key read on each backend: `cargo bench --bench store`).
# PostgreSQL is a throwaway cluster of scripts/pg.sh in a temporary
# directory, stopped at the end. Extra arguments go to each `load ncp`
# run, e.g. scripts/store-load.sh --secs 3
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/load-common.sh
cargo build --release --bin keypipe --example load
bin=target/release/keypipe
load=target/release/examples/load
pgdir=$work/pg
chmod 711 "$work"   # the cluster runs as user postgres when root runs this
cluster=$(scripts/pg.sh start "$pgdir")
stop_pg() { scripts/pg.sh stop "$pgdir" || true; cleanup; }
trap stop_pg EXIT
psql "$cluster" -qc "CREATE DATABASE keypipe_load" >/dev/null
pg_url="host=$pgdir user=postgres dbname=keypipe_load"

json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
# serve DATA_DIR PORT [URL]: an NCP-only process (2 workers) on PORT.
serve() {
    local config=$work/$2.toml
    if [ -n "${3:-}" ]; then printf '[store]\nurl = "%s"\n' "$3" >"$config"; else : >"$config"; fi
    printf '[[node]]\nname = "kms"\nlisten = "127.0.0.1:%s"\nworkers = 2\nserve = ["ncp-kms"]\n' "$2" >>"$config"
    "$bin" serve --config "$config" --data-dir "$1" >"$work/$2.log" 2>&1 &
    server="$server $!"
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$2/healthz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "store-load.sh: the server on $2 did not start:" >&2
    cat "$work/$2.log" >&2
    exit 1
}
# keys DATA_DIR [URL]: "TAG ACCESS SECRET" of a new key and access key.
keys() {
    local url=()
    [ -n "${2:-}" ] && url=(--store-url "$2")
    local key access
    key=$("$bin" kms --data-dir "$1" "${url[@]}" create-key --name load --type AES256)
    access=$("$bin" kms --data-dir "$1" "${url[@]}" create-access-key --grant '*:*')
    echo "$(json_field keyTag <<<"$key") $(json_field access_key <<<"$access") $(json_field secret_key <<<"$access")"
}
ncp() { # PORT CONNS TAG ACCESS SECRET [extra…]
    local port=$1 conns=$2 tag=$3 ak=$4 sk=$5
    shift 5
    "$load" ncp --url "http://127.0.0.1:$port" --conns "$conns" --secs 5 \
        --key-tag "$tag" --access-key "$ak" --secret-key "$sk" "$@" | tail -n 1
}

echo "== NCP encrypt 1 KiB, SQLite, one process"
read -r tag ak sk < <(keys "$work/sqlite")
p1=$(port)
serve "$work/sqlite" "$p1"
ncp "$p1" 64 "$tag" "$ak" "$sk" "$@"

echo "== NCP encrypt 1 KiB, PostgreSQL, one process"
read -r tag ak sk < <(keys "$work/pg-site" "$pg_url")
p2=$(port)
serve "$work/pg-site" "$p2" "$pg_url"
ncp "$p2" 64 "$tag" "$ak" "$sk" "$@"

echo "== NCP encrypt 1 KiB, PostgreSQL, two processes at once (32 connections each)"
p3=$(port)
serve "$work/pg-site" "$p3" "$pg_url"
ncp "$p2" 32 "$tag" "$ak" "$sk" "$@" >"$work/a.txt" &
a=$!
ncp "$p3" 32 "$tag" "$ak" "$sk" "$@" >"$work/b.txt" &
b=$!
wait "$a" "$b"
cat "$work/a.txt" "$work/b.txt"

echo "== store operations (criterion, same run)"
KEYPIPE_TEST_PG="$cluster" cargo bench --bench store -- --noplot 2>&1 |
    grep -E "^store/|thrpt|time:" || true
