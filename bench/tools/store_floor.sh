#!/usr/bin/env bash
# The message store's own floor under add_pair_rated's load (BENCHMARKS.md, "Durable
# writes on PostgreSQL + MongoDB: the message store's floor"): for each configuration, a fresh MongoDB-wire server (scripts/mongodb.sh, synced on
# every commit as the durable bench runs it), `arbor-bench store-floor` against it, then the
# server stopped and its data removed.
#
#   bench/tools/store_floor.sh [--seconds S] CONFIG...
#
# CONFIG is "SHAPE:RATE:IN_FLIGHT:TICK_MS" (e.g. message:16000:2:0, bucket:16000:2:5): the
# document shape, messages due per second (2 per Q&A pair), calls in flight at most, and the
# least time between the starts of two calls. Needs `cargo build --release -p arbor-bench`.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
SECONDS_EACH=60
if [ "${1:-}" = --seconds ]; then SECONDS_EACH=$2; shift 2; fi
[ $# -gt 0 ] || { sed -n 2,11p "$0" >&2; exit 2; }

WORK=$(mktemp -d /tmp/arbor-store-floor.XXXXXX)
trap 'scripts/mongodb.sh stop "$WORK/mongodb" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

for config in "$@"; do
    IFS=: read -r shape rate in_flight tick <<<"$config"
    rm -rf "$WORK/mongodb"
    url=$(MONGO_SERVER_FLAGS="--sync-on-commit ${MONGO_SERVER_FLAGS:-}" scripts/mongodb.sh start "$WORK/mongodb")
    sync
    target/release/arbor-bench store-floor --mongodb-url "$url" --shape "$shape" --rate "$rate" \
        --in-flight "$in_flight" --tick-ms "$tick" --seconds "$SECONDS_EACH"
    scripts/mongodb.sh stop "$WORK/mongodb" >/dev/null
done
