#!/usr/bin/env bash
# Makes everything two keypipe nodes on two hosts need, with TLS
# everywhere: keypipe's CA and certificates (for both nodes and their
# KMSes), the secrets both nodes share, and node-a.toml / node-b.toml.
#
#   examples/config/two-hosts/setup.sh OUT [KEYPIPE]
#
# Environment (defaults in brackets): NODE_A_HOST [node-a.example],
# NODE_B_HOST [node-b.example], PORT_A [7443], PORT_B [7443],
# KMS_A_URI [https://kms-a.example:9443], KMS_B_URI [https://kms-b.example:9443].
# Then copy OUT to both hosts (each needs its node's key files; the CA
# data OUT/ca-data stays with whoever administers the CA) and run
#   keypipe serve --config OUT/node-a.toml     (host A)
#   keypipe serve --config OUT/node-b.toml     (host B)
set -euo pipefail
out=${1:?usage: setup.sh OUT [KEYPIPE]}
keypipe=${2:-keypipe}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
a_host=${NODE_A_HOST:-node-a.example}
b_host=${NODE_B_HOST:-node-b.example}
port_a=${PORT_A:-7443}
port_b=${PORT_B:-7443}
kms_a=${KMS_A_URI:-https://kms-a.example:9443}
kms_b=${KMS_B_URI:-https://kms-b.example:9443}
pki=$out/pki
ca() { "$keypipe" ca --data-dir "$out/ca-data" "$@" >/dev/null; }

ca init --out "$pki"
ca issue-server node-a --san "DNS:$a_host,DNS:localhost,IP:127.0.0.1" --out "$pki"
ca issue-server node-b --san "DNS:$b_host,DNS:localhost,IP:127.0.0.1" --out "$pki"
for name in node-a node-b; do ca issue-client "$name" --role node --out "$pki/client"; done
for name in kms-a kms-b; do ca issue-client "$name" --role kms --out "$pki/client"; done

hex32() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }
device=$(hex32)
link=$(hex32)
render() { # NAME ROLE HOST PORT PEER PEER_HOST PEER_PORT KMS KMS_URI
    mkdir -p "$out/$1-data"
    sed -e "s|@NAME@|$1|g" -e "s|@ROLE@|$2|g" -e "s|@HOST@|$3|g" -e "s|@PORT@|$4|g" \
        -e "s|@PEER@|$5|g" -e "s|@PEER_HOST@|$6|g" -e "s|@PEER_PORT@|$7|g" \
        -e "s|@KMS@|$8|g" -e "s|@KMS_URI@|$9|g" -e "s|@PKI@|$pki|g" -e "s|@DATA@|$out/$1-data|g" \
        -e "s|@DEVICE_SECRET@|$device|g" -e "s|@LINK_SECRET@|$link|g" \
        "$here/node.toml.in" > "$out/$1.toml"
    chmod 600 "$out/$1.toml"
}
render node-a leader "$a_host" "$port_a" node-b "$b_host" "$port_b" kms-a "$kms_a"
render node-b follower "$b_host" "$port_b" node-a "$a_host" "$port_a" kms-b "$kms_b"
echo "wrote $out/node-a.toml, $out/node-b.toml and the certificates in $pki"
