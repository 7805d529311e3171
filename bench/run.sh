#!/usr/bin/env bash
# Load scenarios against a release build of Arbor over real HTTP on loopback, with wrk
# (Debian: wrk; installed when missing, see scripts/need.sh), 64 connections, a random chat per request. Prints one table row per scenario:
# req/s, p50/p99 latency and the ratio to the trivial actix-web handler measured in the same
# run. See BENCHMARKS.md for the scenarios, targets and latest results.
#
#   bench/run.sh                                   every scenario, SQLite, durable
#   bench/run.sh --ack buffered add_pair           one scenario, buffered acks
#   bench/run.sh --backend postgres-mongodb        PostgreSQL + MongoDB-wire (SecantusDB; durable:
#                                                  its log synced on every commit, as MongoDB
#                                                  syncs its journal for `j: true`)
#   bench/run.sh --duration 3 --chats 200 --min-fraction 0.1
#                                                  the CI smoke run: fails when a scenario
#                                                  falls below a tenth of its target three
#                                                  times (a miss is run again)
#
# HTTP scenarios (wrk): ceiling, ceiling_body (the trivial handler answering with a static body
# the size of read_path's response), ceiling_actor (the same after checking a token and one
# round trip to an actor on a thread of its own), ceiling_local (the same with the actor on an
# HTTP worker, as Arbor places chats: the floor of Arbor's shape), read_path, add_pair, fork,
# reply; fork_20, fork_1k, fork_10k
# (fork on 64 chats of 20, 1,000 and 10,000 messages; seeded only when asked for);
# add_pair_rated (oha, not wrk: add_pair open loop at its target's rate, its latency counted from
# when each request was due; needs `oha`, see below).
# Other scenarios: ttft (Arbor's added time to first token, over HTTP, one request at a time);
# in-process: ack (a lone write's acknowledgement, one at a time: in durable mode, its commit),
# activation (1,000-message chats), memory (100k idle chats of 10 messages), lag
# (write-behind lag at 5,000 messages/s), page (the read path's own work: a page from a
# resident chat's actor on the same thread, and its JSON; not in the default set;
# --answer-bytes N gives its chats answers of N bytes of text like a model's); portable (import of
# --portable-chats N chats of 10,000 messages, then their export) and search (--search-users N
# accounts of 10 chats of 1,000 messages, then queries), not in the default set.
# Default: every scenario. --memory-chats N sets the memory scenario's chat count, --lag-rate N
# the lag scenario's messages per second (its target is at 5,000).
# --profile DIR records `perf record --call-graph dwarf` of the server under load (Arbor, or the
# harness's trivial server for the ceiling scenarios) during each HTTP scenario into
# DIR/<scenario>.perf.data (read with `perf report -i ...`).
# BENCH_CPU=1 prints, after each scenario, the CPU share of the busiest programs during it
# (bench/tools/cpu_by_process.py).
# BENCH_WRITER=1 prints, after each Arbor scenario, the writer's mean batch size and the mean time
# of each commit stage during it and the drain that follows it (from /metrics).
# BENCH_TIMELINE=1 prints, after each Arbor scenario, its writer second by second: batches, rows
# and each store call's mean and slowest (bench/tools/writer_timeline.py).
# BENCH_WT=1 prints, after each Arbor scenario on postgres-mongodb, what the MongoDB-wire server's
# storage engine did meanwhile: updates held in memory, pages written by eviction, forced
# evictions, time spent waiting for a page, checkpoints, log syncs (bench/tools/wt_stats.py).
# BENCH_OHA_DB=FILE keeps add_pair_rated's every request (start, end, status) in an SQLite file
# (oha's --db-url; the times are from its start, written to FILE.start as Unix time), records the
# machine's timeline beside it (FILE.timeline: CPU, iowait, disk writeback, each program's
# writes, every 100 ms) and prints the slow requests' intervals against it
# (bench/tools/episodes.py; in FILE.report, whose summary follows the scenario's row).
# BENCH_STORAGE="key = value" adds lines to Arbor's [storage] settings (an A/B of a setting).
# BENCH_BIN=DIR runs the `arbor` and `arbor-bench` binaries in DIR instead of building them (an
# A/B of two builds: copy each build's pair into its own directory).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=10 CHATS=1000 PAIRS=10 CONNECTIONS=64 THREADS=2 BACKEND=sqlite ACK=durable
MIN_FRACTION="" MEMORY_CHATS=100000 PROFILE="" ANSWER_BYTES=0 LAG_RATE=5000
PORTABLE_CHATS=10 SEARCH_USERS=100
SCENARIOS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=$2; shift 2 ;;
        --chats) CHATS=$2; shift 2 ;;
        --pairs) PAIRS=$2; shift 2 ;;
        --connections) CONNECTIONS=$2; shift 2 ;;
        --backend) BACKEND=$2; shift 2 ;;
        --ack) ACK=$2; shift 2 ;;
        --min-fraction) MIN_FRACTION=$2; shift 2 ;;
        --memory-chats) MEMORY_CHATS=$2; shift 2 ;;
        --portable-chats) PORTABLE_CHATS=$2; shift 2 ;;
        --search-users) SEARCH_USERS=$2; shift 2 ;;
        --answer-bytes) ANSWER_BYTES=$2; shift 2 ;;
        --lag-rate) LAG_RATE=$2; shift 2 ;;
        --profile) PROFILE=$2; shift 2 ;;
        -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) SCENARIOS+=("$1"); shift ;;
    esac
done
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(ceiling ceiling_body ceiling_actor ceiling_local read_path add_pair add_pair_rated
                                         fork reply fork_20 fork_1k fork_10k ttft ack activation lag memory)
. scripts/need.sh
need_packages "wrk:command -v wrk >/dev/null"
if [[ " ${SCENARIOS[*]} " == *" add_pair_rated "* ]] && ! command -v oha >/dev/null; then
    echo "add_pair_rated needs oha: cargo install oha --version 1.16.0 --no-default-features" \
         "--features native-tls --locked (Debian libssl-dev, pkg-config)" >&2
    exit 1
fi

# Targets in req/s (BENCHMARKS.md); the ceiling has none, read_path's is relative to it.
target() {
    case "$1:$BACKEND:$ACK" in
        add_pair:postgres-mongodb:durable) echo 8000 ;;
        add_pair:postgres-mongodb:buffered) echo 15000 ;;
        add_pair:*) echo 5000 ;;  # SQLite, durable or buffered
        fork*) echo 10000 ;;
        reply:*) echo 3000 ;;
        *) echo 0 ;;
    esac
}


. bench/common.sh
bench_binaries
WORK=$(mktemp -d "${TMPDIR:-/tmp}/arbor-bench.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$BACKEND" = postgres-mongodb ]; then
        scripts/mongodb.sh stop "$WORK/mongodb" >/dev/null 2>&1 || true
        scripts/postgres.sh stop "$WORK/postgres" >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

ARBOR_PORT=$(free_port) CEILING_PORT=$(free_port) STUB_PORT=$(free_port)
STORAGE=""
if [ "$BACKEND" = postgres-mongodb ]; then
    scripts/mongodb.sh setup
    PG_URL=$(scripts/postgres.sh start "$WORK/postgres")
    # Durable means on disk in both stores: MongoDB syncs its journal for a `j: true` write,
    # SecantusDB only with --sync-on-commit (PostgreSQL syncs its WAL at COMMIT by default).
    [ "$ACK" != durable ] || export MONGO_SERVER_FLAGS="--sync-on-commit ${MONGO_SERVER_FLAGS:-}"
    MONGO_URL=$(scripts/mongodb.sh start "$WORK/mongodb")
    STORAGE="metadata = \"postgres\"
messages = \"mongodb\"
postgres_url = \"$PG_URL\"
mongodb_url = \"$MONGO_URL\""
fi
# The server's configuration, and the in-process scenarios' (ack, activation, page, lag,
# memory): the same settings on stores of their own, since two processes must never share
# stores (the second one refuses to start: README, "Deployments").
write_config() {
    cat <<TOML
[server]
port = $ARBOR_PORT
workers = 2
[storage]
data_dir = "$1"
ack_mode = "$ACK"
$STORAGE
$2
${BENCH_STORAGE:-}
[rate_limits]
# The load comes from one user (and one address) at rates no person reaches.
writes_per_minute = 0
replies_per_minute = 0
concurrent_replies = 0
auth_per_minute = 0
[auth]
bcrypt_cost = 4
[log]
level = "warn"
[llm]
default_model = "stub"
[llm.providers.stub]
base_url = "http://127.0.0.1:$STUB_PORT/v1"
default_model = "stub"
max_concurrent = 64
queue_capacity = 4096
TOML
}
write_config "$WORK/data" "" > "$WORK/config.toml"
INPROC_STORAGE=""
[ "$BACKEND" != postgres-mongodb ] || INPROC_STORAGE='postgres_schema = "inproc"
mongodb_database = "arbor_inproc"'
write_config "$WORK/inproc-data" "$INPROC_STORAGE" > "$WORK/inproc.toml"

"$BIN/arbor-bench" ceiling --port "$CEILING_PORT" --workers 2 & PIDS+=($!); CEILING_PID=$!
"$BIN/arbor-bench" stub-llm --port "$STUB_PORT" & PIDS+=($!)
"$BIN/arbor" --config "$WORK/config.toml" > "$WORK/arbor.log" 2>&1 & PIDS+=($!)
ARBOR_PID=$!
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$ARBOR_PORT/ready" >/dev/null 2>&1 && break
    sleep 0.2
done
curl -fsS "http://127.0.0.1:$ARBOR_PORT/ready" >/dev/null || { cat "$WORK/arbor.log"; exit 1; }

# The chats a scenario runs on, seeded on first use: CHATS chats of PAIRS pairs, or 64 chats of
# 10, 500 or 5,000 pairs for the fork_* scenarios. reply and ttft get chats of their own: a
# reply sends its branch as context, and add_pair grows the shared chats' branches (by ~130
# messages each in a full run), which made the reply rate depend on the scenarios before it.
# Prints the state file.
state_for() {
    local chats=$CHATS pairs=$PAIRS own=""
    case "$1" in
        fork_20) chats=64 pairs=10 ;;
        fork_1k) chats=64 pairs=500 ;;
        fork_10k) chats=64 pairs=5000 ;;
        reply | ttft) own="-$1" ;;
    esac
    local file="$WORK/state-$chats-$pairs$own.txt"
    if [ ! -s "$file" ]; then
        "$BIN/arbor-bench" seed --base "http://127.0.0.1:$ARBOR_PORT" --chats "$chats" \
            --pairs "$pairs" --concurrency 64 --out "$file" >&2
    fi
    echo "$file"
}

# The writer's histogram sums and counts, one `name{labels} value` pair per line.
writer_snapshot() {
    curl -fsS "http://127.0.0.1:$ARBOR_PORT/metrics" | grep -E '^arbor_writer_[a-z_]+_(sum|count)[{ ]'
}

# BENCH_WT=1: `wt_stats snap` before an Arbor scenario on postgres-mongodb, `wt_stats diff` after.
wt_stats() {
    [ -n "${BENCH_WT:-}" ] && [ "$BACKEND" = postgres-mongodb ] && [ "$port" = "$ARBOR_PORT" ] || return 0
    "${SECANTUS_VENV:-.test-servers/secantus-venv}/bin/python" bench/tools/wt_stats.py "$MONGO_URL" "$1" \
        "$WORK/wt.before" || true
}

# Prints the writer's mean stage times and batch size since "$WORK/writer.before".
writer_delta() {
    writer_snapshot | awk '
        NR == FNR { before[$1] = $2; next }
        { delta[$1] = $2 - before[$1] }
        END {
            printf "    writer:"
            for (k in delta) if (k ~ /_count/ && delta[k] > 0) {
                base = k; sub(/_count/, "", base); sum = k; sub(/_count/, "_sum", sum)
                printf " %s mean %.3g (n=%d)", base, delta[sum] / delta[k] * (base ~ /seconds/ ? 1000 : 1), delta[k]
            }
            print ""
        }' "$WORK/writer.before" -
}

# Waits (up to 2 minutes) until the writer's queue is empty.
wait_writer_idle() {
    for _ in $(seq 600); do
        # The whole body is read (not `grep -q`): under pipefail, a curl cut off mid-body fails.
        curl -fsS "http://127.0.0.1:$ARBOR_PORT/metrics" | grep -x 'arbor_writer_queue_depth 0' > /dev/null && return
        sleep 0.2
    done
    echo "the writer's queue did not drain" >&2
}

# Prints the value of KEY in a `BENCH key=value ...` line.
field() { tr ' ' '\n' <<< "$2" | sed -n "s/^$1=//p"; }

# Marks the scenario missed (with --min-fraction F) when VALUE is worse than LIMIT / F (latencies).
check_at_most() {
    local name=$1 value=$2 limit=$3
    [ -n "$MIN_FRACTION" ] || return 0
    if awk -v v="$value" -v l="$limit" -v f="$MIN_FRACTION" 'BEGIN { exit !(v > l / f) }'; then
        echo "over the limit: $name at $value (limit $limit, allowed $(awk -v l="$limit" -v f="$MIN_FRACTION" 'BEGIN { print l / f }'))" >&2
        MISSED=1
    fi
}

# After attempt $1 of a scenario ($2 says what ran): succeeds when it missed and may run again
# (after a pause: a stall of the VM's disk can last minutes); fails the run on a third miss.
missed_once() {
    [ "$MISSED" = 1 ] || return 1
    if [ "$1" -lt 3 ]; then
        echo "missed: $2; running it again in 10 s" >&2
        sleep 10
        return 0
    fi
    echo "REGRESSION: $2, three times" >&2
    FAILED=1
    return 1
}

# The target column of a rate scenario's row.
goal_text() {
    if [ "$1" = add_pair_rated ]; then
        echo "sent at $2 req/s$([ "$BACKEND:$ACK" = postgres-mongodb:durable ] && echo ", p99 ≤ 25 ms")"
    elif [ "$2" -gt 0 ]; then
        echo "≥ $2 req/s"
    else
        echo "-"
    fi
}

# add_pair at its target's rate, open loop: oha sends -q requests a second whatever the answers
# do, and with --latency-correction times each from when it was due, so a stall counts for every
# request it held back (wrk's closed loop sends fewer during a stall, and times only those).
# The same request as wrk's add_pair, to a random chat of the same state file.
add_pair_rated() {
    local chats
    chats=$(tail -n +2 "$BENCH_STATE" | paste -sd'|')
    local recorder=""
    if [ -n "${BENCH_OHA_DB:-}" ]; then
        rm -f "$BENCH_OHA_DB"
        python3 bench/tools/episodes.py record "$BENCH_OHA_DB.timeline" &
        recorder=$!
        date +%s.%N > "$BENCH_OHA_DB.start"
    fi
    oha -z "${DURATION}s" -w -q "$(target add_pair)" --latency-correction -c "$CONNECTIONS" \
        ${BENCH_OHA_DB:+--db-url "$BENCH_OHA_DB"} --no-tui --output-format json -m POST -T application/json \
        -H "Authorization: Bearer $(head -1 "$BENCH_STATE")" \
        -d '{"content":"How do branches work?","response":"A branch is a pointer to a head message."}' \
        --rand-regex-url "http://127.0.0.1:$ARBOR_PORT/api/v1/chats/($chats)/messages" \
        | python3 bench/tools/oha_line.py
    if [ -n "$recorder" ]; then
        kill "$recorder"
        wait "$recorder" || true
        python3 bench/tools/episodes.py report "$BENCH_OHA_DB" "$BENCH_OHA_DB.timeline" \
            > "$BENCH_OHA_DB.report" || true
    fi
}

export BENCH_LUA_DIR="$PWD/bench/lua" BENCH_THREADS="$THREADS"
echo
echo "backend=$BACKEND ack=$ACK chats=$CHATS pairs=$PAIRS connections=$CONNECTIONS duration=${DURATION}s" \
     "commit $(git rev-parse --short HEAD)"
printf '| %-12s | %9s | %8s | %8s | %8s | %6s | %s\n' scenario "ok req/s" "p50 ms" "p99 ms" "ceiling" errors target
printf '|%s|\n' "--------------|-----------|----------|----------|----------|--------|--------"
CEILING_RPS="" BODY_RPS=""
FAILED=0
# The chats the ratio scenarios read are seeded before the ceiling is measured, and their
# writes flushed: the disk's writeback after seeding took 5-9% of a core for seconds, which
# fell on read_path and not on a ceiling measured before it.
for scenario in "${SCENARIOS[@]}"; do
    case "$scenario" in
        ceiling_body|ceiling_actor|ceiling_local|read_path|add_pair|fork) state_for read_path >/dev/null; sync; break ;;
    esac
done
# Warm up (CPU frequency, page cache, the servers' lazy paths) before anything is measured.
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "http://127.0.0.1:$CEILING_PORT/" >/dev/null 2>&1 || true
INPROC=()
for scenario in "${SCENARIOS[@]}"; do
    case "$scenario" in
        ttft|ack|activation|lag|memory|page|portable|search) INPROC+=("$scenario"); continue ;;
    esac
    port=$ARBOR_PORT
    case "$scenario" in
        ceiling) port=$CEILING_PORT ;;
        ceiling_body|ceiling_actor|ceiling_local)
            port=$CEILING_PORT
            # The size of one read_path response.
            read_state=$(state_for read_path)
            BENCH_BODY_BYTES=$(curl -fsS -H "Authorization: Bearer $(head -1 "$read_state")" \
                "http://127.0.0.1:$ARBOR_PORT/api/v1/chats/$(sed -n 2p "$read_state")/messages?limit=20" | wc -c)
            BENCH_CEILING_TOKEN=$(curl -fsS "http://127.0.0.1:$CEILING_PORT/token")
            BENCH_STATE=$read_state
            export BENCH_BODY_BYTES BENCH_CEILING_TOKEN ;;
        *) BENCH_STATE=$(state_for "$scenario") ;;
    esac
    export BENCH_STATE
    # In a guard run (--min-fraction) a scenario that misses its floor runs up to twice more
    # before it counts: a stall of this shared VM (its disk, its CPU) takes every scenario down
    # at once, a regression takes it down every time.
    for attempt in 1 2 3; do
        MISSED=0
        PERF_PID=""
        if [ -n "$PROFILE" ]; then
            mkdir -p "$PROFILE"
            profiled=$ARBOR_PID
            [ "$port" != "$CEILING_PORT" ] || profiled=$CEILING_PID
            perf record -q -F 499 ${PERF_CALL_GRAPH:---call-graph dwarf,16384} -p "$profiled" -o "$PROFILE/$scenario.perf.data" \
                -- sleep "$DURATION" >/dev/null 2>&1 & PERF_PID=$!
        fi
        [ -z "${BENCH_WRITER:-}" ] || writer_snapshot > "$WORK/writer.before"
        wt_stats snap
        CPU_PID=""
        if [ -n "${BENCH_CPU:-}" ]; then
            python3 bench/tools/cpu_by_process.py 1 $((DURATION > 2 ? DURATION - 2 : 1)) > "$WORK/cpu.txt" & CPU_PID=$!
        fi
        TIMELINE_PID=""
        if [ -n "${BENCH_TIMELINE:-}" ] && [ "$port" = "$ARBOR_PORT" ]; then
            python3 bench/tools/writer_timeline.py "http://127.0.0.1:$ARBOR_PORT" "$DURATION" \
                > "$WORK/timeline.txt" & TIMELINE_PID=$!
        fi
        if [ "$scenario" = add_pair_rated ]; then
            line=$(add_pair_rated 2>"$WORK/wrk.err" || true)
        else
            line=$(BENCH_SCENARIO=$scenario wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" \
                -s bench/lua/scenario.lua "http://127.0.0.1:$port" 2>"$WORK/wrk.err" | grep '^BENCH' || true)
        fi
        [ -n "$line" ] || { cat "$WORK/wrk.err"; echo "the load generator failed for $scenario" >&2; exit 1; }
        [ -z "$PERF_PID" ] || wait "$PERF_PID" || true
        eval "${line#BENCH }"
        # Successful responses only: a 503 `overloaded` is load shed, not throughput.
        rps=$(awk -v r="$requests" -v e="$errors" -v n="$non2xx" -v s="$seconds" \
            'BEGIN { printf "%d", (r - e - n) / s }')
        [ "$scenario" = ceiling ] && CEILING_RPS=$rps
        [ "$scenario" = ceiling_body ] && BODY_RPS=$rps
        ratio="-"
        [ -n "$CEILING_RPS" ] && [ "$scenario" != ceiling ] && ratio=$(awk -v a="$rps" -v b="$CEILING_RPS" 'BEGIN { printf "%.2f", a / b }')
        # The read path is also compared with moving a body of its size (its floor on this machine).
        [ "$scenario" = read_path ] && [ -n "$BODY_RPS" ] && \
            ratio="$ratio ($(awk -v a="$rps" -v b="$BODY_RPS" 'BEGIN { printf "%.2f", a / b }') of ceiling_body)"
        goal=$(target "$scenario")
        [ "$scenario" = add_pair_rated ] && goal=$(target add_pair)
        # The read path's target is half the trivial handler's rate.
        [ "$scenario" = read_path ] && [ -n "$CEILING_RPS" ] && goal=$((CEILING_RPS / 2))
        bad=$((errors + non2xx))
        printf '| %-12s | %9s | %8s | %8s | %8s | %6s | %s\n' "$scenario" "$rps" "$p50_ms" "$p99_ms" "$ratio" "$bad" \
            "$(goal_text "$scenario" "$goal")"
        if [ -n "$MIN_FRACTION" ]; then
            floor=$(awk -v g="$goal" -v f="$MIN_FRACTION" 'BEGIN { printf "%d", g * f }')
            if [ "$bad" -gt 0 ] || [ "$rps" -lt "$floor" ]; then
                MISSED=1
            fi
        fi
        if [ "$scenario" = add_pair_rated ]; then
            echo "    open loop (oha, each latency from the request's due time): p99.9 $(field p999_ms "$line") ms"
            if [ -n "${BENCH_OHA_DB:-}" ] && [ -f "$BENCH_OHA_DB.report" ]; then
                sed -n '/^requests by/,$p' "$BENCH_OHA_DB.report" | sed 's/^/    /'
            fi
            [ "$BACKEND:$ACK" != postgres-mongodb:durable ] || check_at_most "add_pair_rated p99" "$p99_ms" 25
        fi
        [ -s "$WORK/wrk.err" ] && sed 's/^/    /' "$WORK/wrk.err" | head -3
        [ -z "$CPU_PID" ] || { wait "$CPU_PID" || true; sed 's/^/    /' "$WORK/cpu.txt"; }
        [ -z "$TIMELINE_PID" ] || { wait "$TIMELINE_PID" || true; sed 's/^/    /' "$WORK/timeline.txt"; }
        wt_stats diff | sed 's/^/    /'
        # Buffered writes may still be queued: let the writer catch up, so the next scenario does
        # not pay for this one's backlog.
        [ "$port" = "$ARBOR_PORT" ] && wait_writer_idle
        if [ -n "${BENCH_WRITER:-}" ] && [ "$port" = "$ARBOR_PORT" ]; then
            writer_delta
        fi
        missed_once "$attempt" "$scenario at $rps req/s with $bad errors (floor ${floor:-none})" || break
    done
done

# Measurements that are not a request rate: one line each, with the target.
run_inproc() {
    case "$1" in
        ttft)
            "$BIN/arbor-bench" ttft --base "http://127.0.0.1:$ARBOR_PORT" --state "$(state_for ttft)" \
                --stub "http://127.0.0.1:$STUB_PORT" --requests $((DURATION * 50)) ;;
        ack)
            "$BIN/arbor-bench" ack --config "$WORK/inproc.toml" --chats 100 --sends $((DURATION * 250)) ;;
        activation)
            "$BIN/arbor-bench" activation --config "$WORK/inproc.toml" --chats 20 --pairs 500 \
                --rounds $(( DURATION > 5 ? 10 : 3 )) ;;
        page)
            "$BIN/arbor-bench" page --config "$WORK/inproc.toml" --chats "$CHATS" --pairs "$PAIRS" \
                --answer-bytes "$ANSWER_BYTES" --reads $((DURATION * 20000)) ;;
        lag)
            "$BIN/arbor-bench" lag --config "$WORK/inproc.toml" --chats "$CHATS" --rate "$LAG_RATE" \
                --seconds "$DURATION" ;;
        portable)
            "$BIN/arbor-bench" portable --config "$WORK/inproc.toml" --chats "$PORTABLE_CHATS" \
                --messages 10000 --rounds 5 ;;
        search)
            "$BIN/arbor-bench" search --config "$WORK/inproc.toml" --users "$SEARCH_USERS" \
                --chats 10 --messages 1000 --queries $((DURATION * 50)) ;;
        memory)
            "$BIN/arbor-bench" memory --config "$WORK/inproc.toml" --chats "$MEMORY_CHATS" --pairs 5
            "$BIN/arbor-bench" memory-floor --chats "$MEMORY_CHATS" ;;
    esac
}
for scenario in "${INPROC[@]}"; do
    # The server's writer is measured around ttft only (the other scenarios run in-process),
    # after its chats are seeded.
    if [ -n "${BENCH_WRITER:-}" ] && [ "$scenario" = ttft ]; then
        state_for ttft > /dev/null
        writer_snapshot > "$WORK/writer.before"
    fi
    for attempt in 1 2 3; do
        MISSED=0
        line=$(run_inproc "$scenario" 2>"$WORK/inproc.err" | grep '^BENCH' || true)
        # Each program prints one `BENCH <scenario> ...` line (memory also a `memory_floor` one).
        grep -q "^BENCH $scenario " <<< "$line" || { cat "$WORK/inproc.err"; echo "$scenario failed" >&2; exit 1; }
        case "$scenario" in
            ttft)
                # Durable acks store the question before the reply starts: the first token waits
                # for its commit (BENCHMARKS.md, "Time to first token"), so durable runs sit just above the target.
                ttft_limit=1
                echo "| ttft: Arbor adds $(field added_p50_ms "$line") ms p50 (direct $(field direct_p50_ms "$line"), through Arbor $(field arbor_p50_ms "$line") p50 / $(field arbor_p99_ms "$line") p99) | target ≤ $ttft_limit ms"
                check_at_most ttft "$(field added_p50_ms "$line")" "$ttft_limit"
                [ -z "${BENCH_WRITER:-}" ] || writer_delta ;;
            ack)
                # No target of its own: what durable acks add to ttft (a lone write's commit).
                # Buffered acks may see no store call finish while they are measured: no stages
                # (and grep's status must not end the run under `set -e`).
                stages=$(tr ' ' '\n' <<< "$line" | { grep '_mean_ms=' || true; } | sed 's/_mean_ms=/ /' | tr '\n' ' ')
                echo "| ack of a lone write (in-process, one at a time): p50 $(field p50_ms "$line") ms, p90 $(field p90_ms "$line"), p99 $(field p99_ms "$line"); mean per store call (ms): $stages| -" ;;
            page)
                # No target of its own: what the read path costs Arbor beyond the shape's floor.
                echo "| a 20-message page from a resident chat (in-process, actor on this thread), asked as JSON: $(field json_us "$line") µs ($(field body_bytes "$line") B); as views $(field views_us "$line") µs, then serde_json $(field serde_json_us "$line") µs | -" ;;
            activation)
                echo "| activation of a $(field messages "$line")-message chat: p50 $(field p50_ms "$line") ms, p99 $(field p99_ms "$line") ms ($(field samples "$line") samples; the stores alone: metadata $(field meta_read_p50_ms "$line") ms, messages $(field messages_read_p50_ms "$line") ms p50 / $(field messages_read_p99_ms "$line") p99) | target p50 ≤ 5, p99 ≤ 15"
                # Guarded on the median: a disk stall of the VM sends the p99 of 60 samples
                # past ten times its limit on its own (BENCHMARKS.md, "Regression guard").
                check_at_most activation_p50 "$(field p50_ms "$line")" 5 ;;
            portable)
                echo "| import: $(field imported "$line") messages in $(field chats "$line") chats of $(field export_messages "$line"), $(field import_msgs_per_s "$line") messages/s (the stores alone, one chat's rows in one call: messages $(field messages_store_per_s "$line")/s, search index $(field index_per_s "$line")/s); export of a $(field export_messages "$line")-message chat ($(field export_bytes "$line") B): p50 $(field export_p50_ms "$line") ms, p99 $(field export_p99_ms "$line") ms | target import ≥ 50,000 messages/s, export ≤ 50 ms"
                check_at_most export_p50 "$(field export_p50_ms "$line")" 50 ;;
            search)
                echo "| search over $(field messages "$line") messages ($(field users "$line") users): the index's answer p50 $(field index_p50_ms "$line") ms, p99 $(field index_p99_ms "$line") ms; with each hit located in its chat p50 $(field whole_p50_ms "$line") ms, p99 $(field whole_p99_ms "$line") ms ($(field mean_hits "$line") hits a query) | target p50 ≤ 10, p99 ≤ 50"
                check_at_most search_p50 "$(field whole_p50_ms "$line")" 10 ;;
            lag)
                echo "| write-behind lag at $(field offered_msgs_per_s "$line") msg/s: p50 $(field p50_ms "$line") ms, p99 $(field p99_ms "$line") ms, $(field le_50ms "$line") within 50 ms | target p99 ≤ 50"
                check_at_most lag_p99 "$(field p99_ms "$line")" 50 ;;
            memory)
                floor=$(echo "$line" | grep memory_floor || true)
                line=$(echo "$line" | grep -v memory_floor)
                echo "| memory: $(field chats "$line") chats of $(field messages "$line") messages: RSS $(field rss_mib "$line") MiB, $(field per_chat_bytes "$line") B per chat, $(field overhead_per_chat_bytes "$line") B above its content ($(field content_per_chat_bytes "$line") B; the second half's chats alone $(field marginal_overhead_per_chat_bytes "$line") B; in mimalloc blocks in use $(field heap_overhead_per_chat_bytes "$line") B, second half $(field heap_marginal_overhead_per_chat_bytes "$line") B); the shape's floor (a bare actor and its cache entry) $(field per_chat_bytes "$floor") B, in blocks $(field heap_per_chat_bytes "$floor") B | target ≤ 2048 B above content, 100k chats ≤ 1 GiB"
                check_at_most memory_overhead "$(field overhead_per_chat_bytes "$line")" 2048 ;;
        esac
        missed_once "$attempt" "$scenario" || break
    done
done
exit $FAILED
