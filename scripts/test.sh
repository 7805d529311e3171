#!/usr/bin/env bash
# Runs the whole test suite on real servers, on a fresh Debian-like machine with only Rust:
# first installs what the tests need and the machine lacks, then starts a throwaway PostgreSQL
# cluster and a MongoDB-wire server (SecantusDB; installed into a venv on first use), installs
# Schemathesis (the API contract test's tool, into a venv on first use), runs every test with the
# embedded SQLite stores, then the API suite again with PostgreSQL metadata + MongoDB messages,
# and stops both servers. Arguments are passed to both `cargo nextest run`s (e.g. a filter).
#
#   scripts/test.sh                     everything, both backends
#   scripts/test.sh -E 'test(chats)'    a subset, both backends
#
# What it installs when missing (as root through apt-get; otherwise it stops with one line naming
# the package and the command to install it):
#   PostgreSQL's server binaries   Debian `postgresql`
#   python3's venv                 Debian `python3-venv` (SecantusDB, Schemathesis)
#   promtool                       Debian `prometheus` (checks the /metrics exposition)
#   chromium, chromedriver         Debian `chromium`, `chromium-driver` (the browser tests)
#   nginx                          Debian `nginx-light` (the cluster tests' load balancer)
#   cargo-nextest                  crates.io, through `cargo install --locked`
# ARBOR_NO_INSTALL=1 only checks, and stops naming what is missing (scripts/need.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/need.sh
need_packages \
    "postgresql:ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null" \
    "python3-venv:python3 -c 'import ensurepip, venv' 2>/dev/null" \
    "prometheus:command -v promtool >/dev/null" \
    "chromium:command -v chromium >/dev/null" \
    "chromium-driver:command -v chromedriver >/dev/null" \
    "nginx-light:test -x /usr/sbin/nginx"
if ! cargo nextest --version >/dev/null 2>&1; then
    if [ -n "${ARBOR_NO_INSTALL:-}" ]; then
        echo "test.sh: cargo-nextest is missing; install it with: cargo install --locked cargo-nextest" >&2
        exit 1
    fi
    echo "== installing cargo-nextest (crates.io)"
    cargo install --locked --quiet cargo-nextest
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/arbor-test.XXXXXX")
cleanup() {
    scripts/mongodb.sh stop "$WORK/mongodb" || true
    scripts/postgres.sh stop "$WORK/postgres" || true
    rm -rf "$WORK"
}
trap cleanup EXIT

scripts/mongodb.sh setup
# The API contract test's tool (tests/api/contract.rs).
SCHEMATHESIS=$(scripts/schemathesis.sh)
export SCHEMATHESIS
# A throwaway cluster: durability of the test server itself is not under test.
export PG_SERVER_SETTINGS="-c fsync=off -c full_page_writes=off"
TEST_POSTGRES_URL=$(scripts/postgres.sh start "$WORK/postgres")
TEST_MONGODB_URL=$(scripts/mongodb.sh start "$WORK/mongodb")
export TEST_POSTGRES_URL TEST_MONGODB_URL
echo "test servers: $TEST_POSTGRES_URL, $TEST_MONGODB_URL"

# Build once; both runs reuse the binaries.
cargo nextest run --workspace --no-run

echo "== every test; API suite on SQLite"
TEST_BACKEND=sqlite cargo nextest run --workspace "$@"

# The store contract, outage and cluster tests name their backends themselves: they ran above.
echo "== API suite on PostgreSQL + MongoDB"
# `--workspace` as above, with the API binary picked by filter: `--package arbor` alone would
# resolve features without the bench crate's and build every shared dependency a second time.
TEST_BACKEND=postgres-mongodb cargo nextest run --workspace \
    -E 'binary_id(arbor::api) & not (test(/^stores::/) | test(/^writer::/) | test(/^outage::/) | test(/^cluster::/))' "$@"
