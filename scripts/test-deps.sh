#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, when it is
# missing (Debian packages; needs root): a C and C++ compiler with the
# sanitizer runtimes and make, pkg-config, readelf, valgrind, openssl and
# curl (TLS peers of the tests), Python 3 with venv, and the PostgreSQL
# server (scripts/pg.sh runs a throwaway cluster of it for the store's
# PostgreSQL tests). The tests install the rest themselves (pytest goes into a
# fresh virtual environment).
set -euo pipefail
missing=()
command -v make >/dev/null 2>&1 || missing+=(build-essential)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v readelf >/dev/null 2>&1 || missing+=(binutils)
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing+=(postgresql)
command -v pg_dump >/dev/null 2>&1 || missing+=(postgresql-client)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}" >&2
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
