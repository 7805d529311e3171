#!/usr/bin/env bash
# A MongoDB-wire-compatible server for tests and local runs. No MongoDB server package is
# reachable from these machines, so this runs SecantusDB (a MongoDB wire protocol server on
# WiredTiger): the faster `secantusd-rs` if it is on PATH (`apt-get install cmake; cargo install
# secantus-mdb --version 0.5.3-beta.196 --ignore-rust-version --locked`, ~13 minutes), else
# `secantusd-py` from PyPI, installed into a venv.
#
#   scripts/mongodb.sh setup               install SecantusDB into the venv (idempotent, ~15 s)
#   scripts/mongodb.sh start DIR [PORT]    start a server storing its data in DIR, wait until it
#                                          accepts connections, print its URL
#   scripts/mongodb.sh stop DIR            stop the server started from DIR (by its recorded PID)
#   scripts/mongodb.sh url DIR             print the URL of the server running from DIR
#
# PORT defaults to a free one (or the one DIR used before). Environment: SECANTUS_VENV
# (default .test-servers/secantus-venv), SECANTUSD (a server binary to use instead),
# MONGO_SERVER_FLAGS (more server flags, e.g. "--sync-on-commit": SecantusDB fsyncs its log only
# with it, where MongoDB syncs its journal for every write with `j: true`).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${SECANTUS_VENV:-$ROOT/.test-servers/secantus-venv}
PACKAGE="SecantusDB==0.7.0b3"

die() { echo "mongodb.sh: $*" >&2; exit 1; }

setup() {
    if [ -x "$VENV/bin/secantusd-py" ]; then return; fi
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$VENV/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check "$PACKAGE"
}

server() {
    if [ -n "${SECANTUSD:-}" ]; then echo "$SECANTUSD"; return; fi
    if command -v secantusd-rs >/dev/null; then command -v secantusd-rs; return; fi
    setup
    echo "$VENV/bin/secantusd-py"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

url() {
    local dir=$1
    [ -f "$dir/port" ] || die "$dir is not a server started by this script"
    echo "mongodb://127.0.0.1:$(cat "$dir/port")/?directConnection=true"
}

listening() {
    python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2)' "$1" 2>/dev/null
}

start() {
    local dir=$1 port=${2:-} bin pid
    mkdir -p "$dir/data"
    dir=$(cd "$dir" && pwd)
    if [ -z "$port" ]; then
        if [ -f "$dir/port" ]; then port=$(cat "$dir/port"); else port=$(free_port); fi
    fi
    echo "$port" >"$dir/port"
    bin=$(server)
    # setsid: the server outlives this script and is not hit by the caller's terminal signals.
    # shellcheck disable=SC2086 # MONGO_SERVER_FLAGS is a list of server flags
    setsid "$bin" --host 127.0.0.1 --port "$port" --storage-path "$dir/data" --log-level WARNING \
        ${MONGO_SERVER_FLAGS:-} >>"$dir/server.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$dir/server.pid"
    for _ in $(seq 1 300); do
        if listening "$port"; then url "$dir"; return; fi
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$dir/server.log" >&2; die "the server exited"; }
        sleep 0.1
    done
    tail -n 20 "$dir/server.log" >&2
    die "the server did not listen on $port within 30 s"
}

stop() {
    local dir=$1 pid
    [ -f "$dir/server.pid" ] || return 0
    pid=$(cat "$dir/server.pid")
    rm -f "$dir/server.pid"
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
}

case "${1:-}" in
    setup) setup ;;
    start) [ $# -ge 2 ] || die "usage: start DIR [PORT]"; start "$2" "${3:-}" ;;
    stop) [ $# -eq 2 ] || die "usage: stop DIR"; stop "$2" ;;
    url) [ $# -eq 2 ] || die "usage: url DIR"; url "$2" ;;
    *) sed -n '2,16p' "$0" >&2; exit 2 ;;
esac
