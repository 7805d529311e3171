#!/usr/bin/env bash
# Instructions Arbor executes per read_path request, counted by valgrind's callgrind (Debian:
# valgrind): deterministic where timings on this VM move by ±20% between minutes, so it shows
# a change of 1% in the work a read does. It does not see cache misses or the kernel.
#
#   bench/tools/read_instructions.sh [BIN_DIR] [SECONDS]
#
# BIN_DIR holds release builds of `arbor` and `arbor-bench` (default target/release). Arbor runs
# under callgrind on SQLite with 200 chats of 10 pairs; wrk reads random chats' 20-message pages
# over 8 connections for SECONDS (default 10) after a 3 s warm-up, with counting on only for
# those SECONDS. Prints requests, instructions and instructions per request; the callgrind
# profile is left in ${TMPDIR:-/tmp}/callgrind.read.out for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-target/release}
SECONDS_COUNTED=${2:-10}
command -v valgrind >/dev/null || { echo "needs valgrind (Debian: apt-get install valgrind)" >&2; exit 1; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/arbor-instr.XXXXXX")
VG=""
cleanup() {
    [ -z "$VG" ] || { kill "$VG" 2>/dev/null || true; wait "$VG" 2>/dev/null || true; }
    rm -rf "$WORK"
}
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$WORK/config.toml" <<TOML
[server]
port = $PORT
workers = 2
[storage]
data_dir = "$WORK/data"
ack_mode = "durable"
[auth]
bcrypt_cost = 4
[log]
level = "warn"
TOML
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/cg.out" \
    "$BIN/arbor" --config "$WORK/config.toml" > "$WORK/arbor.log" 2>&1 &
VG=$!
for _ in $(seq 300); do
    curl -fsS "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1 && break
    sleep 0.5
done
"$BIN/arbor-bench" seed --base "http://127.0.0.1:$PORT" --chats 200 --pairs 10 \
    --concurrency 16 --out "$WORK/state.txt" >/dev/null
export BENCH_LUA_DIR=$PWD/bench/lua BENCH_THREADS=2 BENCH_STATE=$WORK/state.txt BENCH_SCENARIO=read_path
wrk -t2 -c8 -d3s -s bench/lua/scenario.lua "http://127.0.0.1:$PORT" >/dev/null 2>&1
callgrind_control -i on "$VG" >/dev/null 2>&1
callgrind_control -z "$VG" >/dev/null 2>&1
line=$(wrk -t2 -c8 -d"${SECONDS_COUNTED}s" -s bench/lua/scenario.lua "http://127.0.0.1:$PORT" 2>/dev/null | grep '^BENCH')
callgrind_control -i off "$VG" >/dev/null 2>&1
callgrind_control -d "$VG" >/dev/null 2>&1
sleep 1
requests=$(tr ' ' '\n' <<< "$line" | sed -n 's/^requests=//p')
instructions=$(cat "$WORK"/cg.out* | grep -h '^totals:' | awk '{ s += $2 } END { print s }')
for f in "$WORK"/cg.out*; do
    grep -q "^totals: [1-9]" "$f" && cp "$f" "${TMPDIR:-/tmp}/callgrind.read.out"
done
echo "requests=$requests instructions=$instructions per_request=$((instructions / requests))"
