#!/usr/bin/env bash
# A throwaway PostgreSQL server for the response-store test.
#   scripts/postgres-test.sh start DIR   prints the server's URL (installs Debian's postgresql
#                                        first when it is missing and we are root with apt-get)
#   scripts/postgres-test.sh stop DIR    stops it and removes DIR
# PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user.
# Exits 3 with a reason on stderr when no server can be had here (the caller skips the test).
set -euo pipefail
cmd="${1:?start or stop}"
dir="${2:?a folder for the cluster}"

pg_bin() {
    local d
    d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    [ -n "$d" ] && [ -x "$d/pg_ctl" ] && echo "$d"
}

as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
start)
    if ! bin="$(pg_bin)"; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "installing Debian's postgresql" >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2 ||
                { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2; }
        fi
        bin="$(pg_bin)" || { echo "no PostgreSQL here (not root, or no apt-get)" >&2; exit 3; }
    fi
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
        echo "no postgres user to run the server as" >&2
        exit 3
    fi
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    as_owner "$bin/initdb" -D "$dir/data" -A trust -U wick >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; exit 1; }
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >&2 ||
        { cat "$dir/server.log" >&2; exit 1; }
    echo "postgres://wick@127.0.0.1:$port/postgres"
    ;;
stop)
    if bin="$(pg_bin)" && [ -d "$dir/data" ]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
    fi
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
