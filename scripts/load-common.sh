# Sourced by the load scripts (from the repository root): $work, a
# temporary directory removed on exit after the servers whose pids are in
# $server (one, or several separated by spaces) are stopped; port, a free
# loopback port.
work=$(mktemp -d)
server=""
cleanup() {
    local pid
    for pid in $server; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in $server; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# make_pki DATA_DIR: keypipe's CA, its store in DATA_DIR, files in
# $pki ($work/pki): ca.crt, and localhost.crt/.key (DNS:localhost,
# IP:127.0.0.1); then `ca ARGS…` runs `keypipe ca` ($bin) on that store.
make_pki() {
    ca_data=$1
    pki=$work/pki
    ca init --out "$pki"
    ca issue-server localhost --san DNS:localhost,IP:127.0.0.1 --out "$pki"
}
ca() { "$bin" ca --data-dir "$ca_data" "$@" >/dev/null; }
