#!/usr/bin/env bash
# Installs Schemathesis (the API contract test's tool, tests/api/contract.rs) into a venv on
# first use and prints the path of its `st` command.
#
#   scripts/schemathesis.sh        install if needed (~1 minute), print the command's path
#
# Environment: SCHEMATHESIS_VENV (default .test-servers/schemathesis-venv).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${SCHEMATHESIS_VENV:-$ROOT/.test-servers/schemathesis-venv}
PACKAGE="schemathesis==4.32.5"

if [ ! -x "$VENV/bin/st" ]; then
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV" >&2 || { echo "schemathesis.sh: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
    "$VENV/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check "$PACKAGE" >&2
fi
echo "$VENV/bin/st"
