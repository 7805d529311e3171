# Sourced by the benchmark scripts (bench/run.sh, bench/cluster.sh, bench/fair.sh).

# A free loopback port.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Sets BIN, the directory of the `arbor` and `arbor-bench` release binaries: BENCH_BIN when set
# (an A/B of two builds), else a release build made now.
bench_binaries() {
    if [ -n "${BENCH_BIN:-}" ]; then
        BIN=$BENCH_BIN
    else
        cargo build --release --quiet -p arbor -p arbor-bench --bin arbor --bin arbor-bench
        BIN=target/release
    fi
}

# load BASE SCENARIO STATE CONNECTIONS: one wrk run of bench/lua/scenario.lua for DURATION
# seconds with THREADS threads (errors in $WORK/wrk.err); sets requests, errors, non2xx,
# seconds, p50_ms, p99_ms, rps (successful responses a second) and bad (failed ones).
load() {
    local line
    line=$(BENCH_SCENARIO=$2 BENCH_STATE=$3 wrk -t"$THREADS" -c"$4" -d"${DURATION}s" \
        -s bench/lua/scenario.lua "$1" 2>"$WORK/wrk.err" | grep '^BENCH' || true)
    [ -n "$line" ] || { cat "$WORK/wrk.err" >&2; echo "wrk failed" >&2; exit 1; }
    eval "${line#BENCH }"
    rps=$(awk -v r="$requests" -v e="$errors" -v n="$non2xx" -v s="$seconds" 'BEGIN { printf "%d", (r - e - n) / s }')
    bad=$((errors + non2xx))
}
