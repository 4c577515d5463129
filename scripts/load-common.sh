# Sourced by the load scripts (from the repository root): $work, a
# temporary directory removed on exit after the server whose pid is in
# $server is stopped; port, a free loopback port.
work=$(mktemp -d)
server=""
cleanup() {
    [[ -n $server ]] && kill -TERM "$server" 2>/dev/null && wait "$server" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
