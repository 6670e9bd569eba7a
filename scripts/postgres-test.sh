#!/usr/bin/env bash
# The response store on a real PostgreSQL server. Installs Debian's postgresql when it is
# missing (as root with apt-get), starts a throwaway cluster on a free port, runs the store's
# contract test against it (`postgres_store_keeps_the_contract`) and, when WICK_BIN and
# WICK_TEST_MODEL_SMOLLM2 are set, the SDK test of `wick serve --responses-store postgres://...`
# (tests/python/test_responses.py -k postgres), then stops the server and removes the cluster,
# on failure too. No server to be had here is a failure, not a skip.
#   scripts/postgres-test.sh             all of the above
#   scripts/postgres-test.sh start DIR   only start a cluster in DIR; prints its URL
#   scripts/postgres-test.sh stop DIR    stop it and remove DIR
# PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user.
set -euo pipefail
cd "$(dirname "$0")/.."

pg_bin() {
    local d
    d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    [ -n "$d" ] && [ -x "$d/pg_ctl" ] && echo "$d"
}

as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

apt_install() {
    local log
    log="$(mktemp)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "$@" >"$log" 2>&1; then
        apt-get update -q >>"$log" 2>&1 && apt-get install -y -q --no-install-recommends "$@" >>"$log" 2>&1 ||
            { tail -30 "$log" >&2; rm -f "$log"; return 1; }
    fi
    rm -f "$log"
}

start() {
    local dir="$1" bin port
    if ! bin="$(pg_bin)"; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "installing Debian's postgresql" >&2
            apt_install postgresql
        fi
        bin="$(pg_bin)" || { echo "no PostgreSQL here (not root, or no apt-get)" >&2; return 1; }
    fi
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
        echo "no postgres user to run the server as" >&2
        return 1
    fi
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
    as_owner "$bin/initdb" -D "$dir/data" -A trust -U wick >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; return 1; }
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null ||
        { cat "$dir/server.log" >&2; return 1; }
    echo "postgres://wick@127.0.0.1:$port/postgres"
}

stop() {
    local dir="$1" bin
    if bin="$(pg_bin)" && [ -d "$dir/data" ]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
    fi
    rm -rf "$dir"
}

case "${1:-all}" in
start) start "${2:?a folder for the cluster}" ;;
stop) stop "${2:?a folder for the cluster}" ;;
all)
    dir="$(mktemp -d -u /tmp/wick-pg.XXXXXX)"
    trap 'stop "$dir"' EXIT
    WICK_TEST_POSTGRES_URL="$(start "$dir")"
    export WICK_TEST_POSTGRES_URL
    echo "PostgreSQL up at $WICK_TEST_POSTGRES_URL"
    log="$(mktemp /tmp/wick-pg-test.XXXXXX.log)"
    if ! cargo test --workspace --locked --lib postgres_store_keeps_the_contract >"$log" 2>&1; then
        tail -60 "$log"
        echo "the PostgreSQL store contract failed"
        exit 1
    fi
    grep -q "postgres_store_keeps_the_contract ... ok" "$log" ||
        { tail -30 "$log"; echo "the PostgreSQL store contract did not run"; exit 1; }
    echo "store contract on PostgreSQL: ok"
    rm -f "$log"
    if [ -n "${WICK_BIN:-}" ] && [ -n "${WICK_TEST_MODEL_SMOLLM2:-}" ]; then
        python3 -m pytest tests/python/test_responses.py -q -k postgres
    else
        echo "WICK_BIN or WICK_TEST_MODEL_SMOLLM2 unset: only the store contract ran, not the server test"
    fi
    ;;
*)
    echo "usage: $0 [start DIR | stop DIR]" >&2
    exit 2
    ;;
esac
