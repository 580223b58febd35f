#!/usr/bin/env bash
# Install xgate with its test dependencies (and etcd from Debian), then run lint, types and the whole test
# suite (real Envoy and etcd included).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --test
scripts/system-deps.sh
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/mypy
.venv/bin/pytest "$@"
