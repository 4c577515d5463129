#!/usr/bin/env bash
# TLS against plaintext, in the same run, on one keypipe process:
#   - TLS handshakes/s (P-256 server certificate), full and resumed
#     (openssl s_time, one client process);
#   - GET /healthz, keep-alive, on a TLS listener and a plain one;
#   - pushes of one stream to KMS sides over https (mutual TLS) and over
#     http, 32 B and 1 KiB chunks (chunks/s received, from /metrics);
#   - NCP encrypt of 1 KiB, each request signed anew, TLS and plain.
# Each pair alternates ROUNDS times (default 3). Prints one line per run
# and the TLS/plain ratios. Usage: scripts/tls-load.sh [ROUNDS] [SECS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-4}
cargo build --release --bin keypipe --example load -q
bin=target/release/keypipe
load=target/release/examples/load
source scripts/load-common.sh

make_pki "$work/data"
for n in node-a node-b; do ca issue-client "$n" --role node --out "$pki/client"; done
ca issue-client ops --role kms --out "$pki/client"

declare -A P
for n in plain tls a b kpa kpb kta ktb; do P[$n]=$(port); done
tls_server="[node.tls]
cert = \"$pki/localhost.crt\"
key = \"$pki/localhost.key\""
kms_tls="$tls_server
client_ca = \"$pki/ca.crt\"
client_auth = \"required\"
[node.kms_side]
received_capacity_bytes = 8589934592
nodes = [\"node-a\", \"node-b\"]"
kms_plain="[node.kms_side]
received_capacity_bytes = 8589934592"
secret() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }
dev=$(secret); link=$(secret)
engine() { # ROLE PEER_PORT PEER_NAME CLIENT
    printf '[node.engine]\nrole = "%s"\n[node.engine.device]\ndriver = "simulated"\nlink_secret = "%s"\n' "$1" "$dev"
    printf '[node.engine.tls]\nca = "%s"\ncert = "%s"\nkey = "%s"\n' "$pki/ca.crt" "$pki/client/$4.crt" "$pki/client/$4.key"
    printf '[node.engine.link]\npeer = "http://127.0.0.1:%s"\nsecret = "%s"\npeer_name = "%s"\n' "$2" "$link" "$3"
}
cat > "$work/bench.toml" <<TOML
pool_threads = 2
[[node]]
name = "api-plain"
listen = "127.0.0.1:${P[plain]}"
serve = ["ncp-kms"]
[[node]]
name = "api-tls"
listen = "127.0.0.1:${P[tls]}"
serve = ["ncp-kms"]
$tls_server
[[node]]
name = "node-a"
listen = "127.0.0.1:${P[a]}"
serve = ["etsi004-qkd"]
$(engine leader "${P[b]}" node-b node-a)
[[node]]
name = "node-b"
listen = "127.0.0.1:${P[b]}"
serve = ["etsi004-qkd"]
$(engine follower "${P[a]}" node-a node-b)
[[node]]
name = "kms-plain-a"
listen = "127.0.0.1:${P[kpa]}"
serve = ["etsi004-kms"]
$kms_plain
[[node]]
name = "kms-plain-b"
listen = "127.0.0.1:${P[kpb]}"
serve = ["etsi004-kms"]
$kms_plain
[[node]]
name = "kms-tls-a"
listen = "127.0.0.1:${P[kta]}"
serve = ["etsi004-kms"]
$kms_tls
[[node]]
name = "kms-tls-b"
listen = "127.0.0.1:${P[ktb]}"
serve = ["etsi004-kms"]
$kms_tls
TOML
"$bin" serve --config "$work/bench.toml" --data-dir "$work/data" > "$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:${P[a]}/healthz" >/dev/null && curl -sf "http://127.0.0.1:${P[b]}/healthz" >/dev/null && break
    sleep 0.2
done

key=$("$bin" kms --data-dir "$work/data" create-key --name bench --type AES256 | sed 's/.*"keyTag":"\([0-9a-f]*\)".*/\1/')
ak=$("$bin" kms --data-dir "$work/data" create-access-key --grant "$key:encrypt")
access=$(echo "$ak" | sed 's/.*"access_key":"\([A-Z0-9]*\)".*/\1/')
secretkey=$(echo "$ak" | sed 's/.*"secret_key":"\([A-Za-z0-9]*\)".*/\1/')
export LOAD_CA=$pki/ca.crt

# Metric M of the listener on PORT (SCHEME: its KMS-side listeners over
# TLS ask for a client certificate).
metric() { # SCHEME PORT M
    curl -s --cacert "$pki/ca.crt" --cert "$pki/client/ops.crt" --key "$pki/client/ops.key" \
        "$1://localhost:$2/metrics" | awk -v m="$3" 'index($1, m "{") == 1 {print $2}'
}
# Chunks/s pushed to KMS sides KA and KB (over SCHEME), chunk size CHUNK.
push_rate() { # SCHEME KA KB CHUNK
    local src="$1://localhost:$2" dst="$1://localhost:$3" q="{\"key_chunk_size\":$4,\"timeout\":5000}"
    local ksid
    ksid=$(curl -s -X POST "http://127.0.0.1:${P[a]}/api/v1/kms/etsi004/open-connect" \
        -d "{\"source\":\"$src\",\"destination\":\"$dst\",\"key_stream_id\":null,\"qos\":$q}" |
        sed 's/.*"key_stream_id":"\([^"]*\)".*/\1/')
    curl -s -X POST "http://127.0.0.1:${P[b]}/api/v1/kms/etsi004/open-connect" \
        -d "{\"source\":\"$src\",\"destination\":\"$dst\",\"key_stream_id\":\"$ksid\",\"qos\":$q}" >/dev/null
    for n in a b; do
        curl -s -X GET "http://127.0.0.1:${P[$n]}/api/v1/kms/etsi004/get-key" -d "{\"key_stream_id\":\"$ksid\"}" >/dev/null
    done
    sleep 1
    local m1 m2
    m1=$(metric "$1" "$2" keypipe_kms_received_chunks_total)
    sleep "$secs"
    m2=$(metric "$1" "$2" keypipe_kms_received_chunks_total)
    for n in a b; do
        curl -s -X PUT "http://127.0.0.1:${P[$n]}/api/v1/kms/etsi004/close" -d "{\"key_stream_id\":\"$ksid\"}" >/dev/null
    done
    python3 -c "print(round(($m2 - $m1) / $secs))"
}
# The req/s column of the load tool's row starting with NAME (counted from
# the right: rate, Mbit/s, p50, p99, errors, then "-" or "N %").
rate_of() { awk -v name="$1" 'index($0, name) == 1 { print ($NF == "%") ? $(NF-6) : $(NF-5); exit }'; }

# Handshakes/s of 4 openssl s_time clients at once (MODE -new: full,
# -reuse: resumed), over the wall time they took.
handshakes() {
    local start end n=0 f
    start=$(date +%s.%N)
    for i in 1 2 3 4; do
        openssl s_time -connect "127.0.0.1:${P[tls]}" "$1" -time "$secs" -CAfile "$pki/ca.crt" \
            > "$work/st$i" 2>/dev/null &
    done
    wait $(jobs -p | grep -v "^$server$") 2>/dev/null || true
    end=$(date +%s.%N)
    for f in "$work"/st?; do
        n=$(( n + $(awk '/real seconds/ {print $1; exit}' "$f") ))
    done
    python3 -c "print(round($n / ($end - $start)))"
}
declare -A sum cnt
record() { sum[$1]=$(python3 -c "print(${sum[$1]:-0} + $2)"); cnt[$1]=$(( ${cnt[$1]:-0} + 1 )); printf '%-34s %12s\n' "$1" "$2"; }
for r in $(seq "$rounds"); do
    echo "--- round $r"
    record "handshakes/s full (P-256)" "$(handshakes -new)"
    record "handshakes/s resumed" "$(handshakes -reuse)"
    out=$("$load" healthz --url "https://localhost:${P[tls]}" --against "http://127.0.0.1:${P[plain]}" --secs "$secs" --conns 64)
    record "healthz TLS req/s" "$(echo "$out" | rate_of "healthz https://")"
    record "healthz plain req/s" "$(echo "$out" | rate_of "healthz http://")"
    for chunk in 32 1024; do
        record "push TLS $chunk B chunks/s" "$(push_rate https "${P[kta]}" "${P[ktb]}" "$chunk")"
        record "push plain $chunk B chunks/s" "$(push_rate http "${P[kpa]}" "${P[kpb]}" "$chunk")"
    done
    for scheme in https http; do
        p=${P[tls]}; [[ $scheme == http ]] && p=${P[plain]}
        host=localhost; [[ $scheme == http ]] && host=127.0.0.1
        out=$("$load" ncp --url "$scheme://$host:$p" --key-tag "$key" --access-key "$access" --secret-key "$secretkey" --secs "$secs" --conns 64)
        name="ncp $scheme req/s"
        record "$name" "$(echo "$out" | rate_of "ncp encrypt 1 KiB")"
    done
done
echo "--- medians are not computed; means over $rounds rounds, and TLS/plain"
mean() { python3 -c "print(round(${sum[$1]} / ${cnt[$1]}))"; }
ratio() { python3 -c "print(round(${sum[$1]} / ${sum[$2]}, 2))"; }
printf '%-34s %12s\n' "handshakes/s full (P-256)" "$(mean "handshakes/s full (P-256)")"
printf '%-34s %12s\n' "handshakes/s resumed" "$(mean "handshakes/s resumed")"
for pair in "healthz TLS req/s|healthz plain req/s" "push TLS 32 B chunks/s|push plain 32 B chunks/s" \
            "push TLS 1024 B chunks/s|push plain 1024 B chunks/s" "ncp https req/s|ncp http req/s"; do
    t=${pair%|*}; p=${pair#*|}
    printf '%-34s %12s  plain %10s  ratio %s\n' "$t" "$(mean "$t")" "$(mean "$p")" "$(ratio "$t" "$p")"
done
