#!/usr/bin/env bash
# Load test of keypipe's HTTP server against the baseline.
#
# Builds keypipe and the load generator (release), starts `keypipe serve`
# with its embedded defaults (node A on http://127.0.0.1:7004, node B on
# http://127.0.0.1:7005), waits until GET /healthz answers 200 on both (up to
# 30 s), runs every scenario (`load all`: healthz and cycle at 64 and 256
# connections, push with 32 B and 1024 B chunks) and prints the tables, then
# stops the server with SIGTERM and waits for it. The server never stays
# behind, whatever happens. Then `load restart` times kill -9 to the first
# pushed chunk on two processes of its own. Extra arguments go to `load all`, e.g.
#   scripts/load.sh --secs 2 --push-secs 3 --threads 2
# The server's output goes to target/load-keypipe.log.
set -euo pipefail
cd "$(dirname "$0")/.."

A_HOST=127.0.0.1 A_PORT=7004
B_HOST=127.0.0.1 B_PORT=7005
LOG=target/load-keypipe.log

cargo build --release --bin keypipe --example load

server=""
# Sends SIGTERM to the server and waits for it (SIGKILL after 10 s).
stop_server() {
    local pid=$server rc=0
    [[ -n $pid ]] || return 0
    server=""
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "load.sh: keypipe still running 10 s after SIGTERM, killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || rc=$?
    return "$rc"
}
trap 'stop_server || true' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# True when GET /healthz on $1:$2 answers 200.
healthy() {
    (
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf 'GET /healthz HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n\r\n' "$1" "$2" >&3
        IFS= read -r -t 2 line <&3 || exit 1
        [[ $line == "HTTP/1.1 200"* ]]
    ) 2>/dev/null
}

for hp in "$A_HOST $A_PORT" "$B_HOST $B_PORT"; do
    # shellcheck disable=SC2086
    if healthy $hp; then
        echo "load.sh: something already answers on ${hp/ /:}; stop it first" >&2
        exit 1
    fi
done

# A fresh store with one AES256 key and one access key for the NCP scenario.
DATA=target/load-data
rm -rf "$DATA"
json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
key=$(target/release/keypipe kms --data-dir "$DATA" create-key --name load --type AES256)
access=$(target/release/keypipe kms --data-dir "$DATA" create-access-key)
KEY_TAG=$(json_field keyTag <<<"$key")
ACCESS_KEY=$(json_field access_key <<<"$access")
SECRET_KEY=$(json_field secret_key <<<"$access")

target/release/keypipe serve --data-dir "$DATA" >"$LOG" 2>&1 &
server=$!

deadline=$((SECONDS + 30))
until healthy "$A_HOST" "$A_PORT" && healthy "$B_HOST" "$B_PORT"; do
    if ! kill -0 "$server" 2>/dev/null; then
        echo "load.sh: keypipe exited before it was healthy; its output:" >&2
        cat "$LOG" >&2
        exit 1
    fi
    if ((SECONDS >= deadline)); then
        echo "load.sh: /healthz not 200 on both nodes after 30 s; see $LOG" >&2
        exit 1
    fi
    sleep 0.2
done

rc=0
target/release/examples/load all --a "http://$A_HOST:$A_PORT" --b "http://$B_HOST:$B_PORT" "$@" || rc=$?
target/release/examples/load agreement --url "http://$A_HOST:$A_PORT" --secs 5 || rc=$?
target/release/examples/load keys --url "http://$A_HOST:$A_PORT" --secs 5 || rc=$?
for conns in 64 256; do
    target/release/examples/load ncp --url "http://$A_HOST:$A_PORT" --conns "$conns" --secs 5 \
        --key-tag "$KEY_TAG" --access-key "$ACCESS_KEY" --secret-key "$SECRET_KEY" | tail -n 1 || rc=$?
done

# Two processes of their own (free ports), killed with SIGKILL and
# restarted: restart to the first pushed chunk.
target/release/examples/load restart --bin target/release/keypipe --rounds 12 || rc=$?

if stop_server; then
    echo "load.sh: keypipe stopped"
else
    s=$?
    echo "load.sh: keypipe exited with status $s after SIGTERM; see $LOG" >&2
    ((rc != 0)) || rc=$s
fi
exit "$rc"
