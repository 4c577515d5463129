#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests and load scripts: Debian's
# `postgresql` server binaries (installed by scripts/test-deps.sh), a data
# directory of its own, reachable only through a Unix socket in that
# directory (no TCP port, so nothing else on the machine can reach it and
# no port can clash), trust authentication as user `postgres`.
#
#   scripts/pg.sh start [DIR]   start (a new cluster when DIR has none);
#                               prints the connection string
#   scripts/pg.sh ensure [DIR]  start unless already running; prints it
#   scripts/pg.sh url [DIR]     prints it
#   scripts/pg.sh stop [DIR]    stop the cluster (the files stay)
#   scripts/pg.sh restart [DIR] fast restart (clients are disconnected)
#
# DIR defaults to target/pg. The server refuses to run as root: when root
# runs this, the cluster runs as the `postgres` system user.
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-ensure}
dir=$(realpath -m "${2:-target/pg}")
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$bin" ] || [ ! -x "$bin/pg_ctl" ]; then
    echo "pg.sh: PostgreSQL server binaries not found; run scripts/test-deps.sh" >&2
    exit 1
fi
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}
url() {
    echo "host=$dir user=postgres dbname=postgres"
}
running() {
    [ -f "$dir/data/postmaster.pid" ] && as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1
}
start() {
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$dir"
    fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust \
            --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
            { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 9>&- \
        -o "-c listen_addresses='' -c unix_socket_directories='$dir' \
            -c max_connections=200 -c fsync=on" start >/dev/null ||
        { tail -20 "$dir/server.log" >&2; exit 1; }
}
# One caller at a time (parallel tests may all ask for the cluster).
mkdir -p "$(dirname "$dir")"
exec 9>"$dir.lock"
flock 9
case "$cmd" in
    start) running || start; url ;;
    ensure) running || start; url ;;
    url) url ;;
    stop) if running; then as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null; fi ;;
    restart) as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -m fast -w restart >/dev/null 9>&- ;;
    *) echo "usage: scripts/pg.sh start|ensure|url|stop|restart [DIR]" >&2; exit 2 ;;
esac
