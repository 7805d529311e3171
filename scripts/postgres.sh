#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests and local runs (no Docker needed): PostgreSQL's own
# binaries, a data directory of your choice, listening on 127.0.0.1 only.
#
#   scripts/postgres.sh start DIR [PORT]   initdb DIR if new, start the server, wait until it
#                                          accepts connections, print its URL (database `arbor`)
#   scripts/postgres.sh stop DIR           stop the server started from DIR (fast shutdown)
#   scripts/postgres.sh url DIR            print the URL of the server running from DIR
#
# PORT defaults to a free one (or the one DIR used before). Extra server settings go in
# PG_SERVER_SETTINGS, e.g. "-c fsync=off" for throwaway test clusters. As root, the server runs
# as the `postgres` user (initdb refuses root); DIR's parent must be traversable by it.
# PG_BIN overrides where the binaries are (default: /usr/lib/postgresql/<newest>/bin, else PATH).
set -euo pipefail

die() { echo "postgres.sh: $*" >&2; exit 1; }

pg_bin() {
    if [ -n "${PG_BIN:-}" ]; then echo "$PG_BIN"; return; fi
    local newest
    newest=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$newest" ]; then echo "$newest"; return; fi
    dirname "$(command -v pg_ctl || die "no PostgreSQL binaries found (install postgresql)")"
}

BIN=$(pg_bin)

# Runs a PostgreSQL binary as the cluster's owner.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

url() {
    local dir=$1
    [ -f "$dir/port" ] || die "$dir is not a cluster started by this script"
    echo "postgres://postgres@127.0.0.1:$(cat "$dir/port")/arbor"
}

start() {
    local dir=$1 port=${2:-}
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ "$(id -u)" = 0 ]; then
        chmod a+x "$(dirname "$dir")"
        chown postgres: "$dir"
    fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_owner "$BIN/initdb" --pgdata="$dir/data" --username=postgres --auth=trust \
            --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
            || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    fi
    if [ -z "$port" ]; then
        if [ -f "$dir/port" ]; then port=$(cat "$dir/port"); else port=$(free_port); fi
    fi
    if as_owner "$BIN/pg_ctl" --pgdata="$dir/data" status >/dev/null 2>&1; then
        url "$dir"  # already running
        return
    fi
    as_owner sh -c "echo $port > '$dir/port'"
    # shellcheck disable=SC2086 # PG_SERVER_SETTINGS is a list of server flags
    as_owner "$BIN/pg_ctl" --pgdata="$dir/data" --log="$dir/server.log" --wait --timeout=60 \
        -o "-h 127.0.0.1 -p $port -k $dir -c max_connections=300 ${PG_SERVER_SETTINGS:-}" \
        start >/dev/null || { tail -n 20 "$dir/server.log" >&2; die "the server did not start"; }
    if ! as_owner "$BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'arbor'" | grep -q 1; then
        as_owner "$BIN/createdb" -h 127.0.0.1 -p "$port" -U postgres arbor
    fi
    url "$dir"
}

stop() {
    local dir=$1
    [ -f "$dir/data/postmaster.pid" ] || return 0
    as_owner "$BIN/pg_ctl" --pgdata="$dir/data" --mode=fast --wait stop >/dev/null
}

case "${1:-}" in
    start) [ $# -ge 2 ] || die "usage: start DIR [PORT]"; start "$2" "${3:-}" ;;
    stop) [ $# -eq 2 ] || die "usage: stop DIR"; stop "$2" ;;
    url) [ $# -eq 2 ] || die "usage: url DIR"; url "$2" ;;
    *) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
