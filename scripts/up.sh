#!/usr/bin/env bash
# Install xgate and start the whole gateway on the bundled example: Envoy on :10000, Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec .venv/bin/xgate up "$@"
