#!/usr/bin/env bash
# KeyTalk enrolment load, in one run on one keypipe process (TLS, the
# shipped defaults but pool_threads = 4 on this 2-core machine):
#   1. /healthz p99 on the node's plain listener with no load (baseline);
#   2. full P-256 enrolments (hello → handshake → auth-requirements →
#      authentication (Argon2id) → cert P12), keep-alive;
#   3. the same with a new TLS connection per request (the C++ client);
#   4. CSR signings (RSA-2048 CSR made by the client), keep-alive;
#   5. RSA-2048 keys made by the server, keep-alive, while /healthz is
#      probed every 5 ms: its p99 against the baseline.
# Usage: scripts/keytalk-load.sh [SECS] [CLIENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
clients=${2:-16}
cargo build --release --bin keypipe --example keytalk_load -q
bin=target/release/keypipe
load=target/release/examples/keytalk_load
source scripts/load-common.sh
main=$(port); rcdp=$(port); plain=$(port)
cat > "$work/kt.toml" <<TOML
pool_threads = 4
[keytalk]
max_queued = 256
[[keytalk.service]]
name = "DEMO"
[keytalk.service.cert]
key_type = "p256"
[keytalk.service.cert.subject]
cn = "\$(USER)"
o = "keypipe demo"
ou = "\$(SERVICE)"
[[keytalk.service]]
name = "RSA"
[keytalk.service.cert]
key_type = "rsa2048"
[[node]]
name = "kt"
listen = "127.0.0.1:$main"
serve = ["keytalk"]
[node.keytalk]
listen = "127.0.0.1:$rcdp"
ca_listen = "127.0.0.1:$plain"
TOML
for i in $(seq 0 $((clients - 1))); do
    echo 'correct horse' | "$bin" user add --data-dir "$work/data" --domain keytalk --name "alice$i" --service DEMO --service RSA >/dev/null
done
KEYPIPE_LOG=warn "$bin" serve --config "$work/kt.toml" --data-dir "$work/data" >/dev/null &
server=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$plain/ca/1.0.0/primary" -o "$work/ca.pem" && break; sleep 0.1; done
common=(--rcdp "127.0.0.1:$rcdp" --ca "$work/ca.pem" --user alice --users "$clients" --password 'correct horse' --secs "$secs")
echo "== baseline: /healthz alone"
"$load" "${common[@]}" --clients 0 --healthz "127.0.0.1:$main" | tee "$work/base"
echo "== P-256, server keygen, keep-alive"
"$load" "${common[@]}" --clients "$clients" | tee "$work/ka"
echo "== P-256, server keygen, new TLS connection per request"
"$load" "${common[@]}" --clients "$clients" --new-connections | tee "$work/nc"
echo "== CSR signing (RSA-2048 CSR), keep-alive"
"$load" "${common[@]}" --clients "$clients" --csr | tee "$work/csr"
echo "== RSA-2048 server keygen, keep-alive, /healthz probed"
"$load" "${common[@]}" --clients "$clients" --service RSA --healthz "127.0.0.1:$main" | tee "$work/rsa"
rate() { awk '{print $2}' "$1"; }
hp99() { sed -n 's/.*healthz p50 [0-9.]* ms p99 \([0-9.]*\) ms.*/\1/p' "$1"; }
python3 - "$(rate "$work/ka")" "$(rate "$work/nc")" "$(rate "$work/csr")" "$(rate "$work/rsa")" "$(hp99 "$work/base")" "$(hp99 "$work/rsa")" <<'PY'
import sys
ka, nc, csr, rsa, h0, h1 = map(float, sys.argv[1:])
print(f"ratios: new-connection/keep-alive {nc/ka:.2f}, csr/keygen {csr/ka:.2f}, rsa2048/p256 {rsa/ka:.2f}, "
      f"healthz p99 under RSA burst/idle {h1/h0:.2f} ({h1:.2f} ms vs {h0:.2f} ms)")
PY
