#!/usr/bin/env bash
# Install xgate with its test dependencies and run lint, types and the whole test suite (real Envoy included).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --test
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/mypy
.venv/bin/pytest "$@"
