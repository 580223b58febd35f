#!/usr/bin/env bash
# Compile xgate's own resource types (protos/) into src/xgate/api/ with the pinned grpcio-tools; the generated
# modules are committed, and tests/unit/test_protos.py fails when they differ from what this writes.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-src}"
include="$(.venv/bin/python -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')"
.venv/bin/python -m grpc_tools.protoc -I protos -I "$include" --python_out="$out" --pyi_out="$out" \
    $(cd protos && find xgate -name '*.proto' | sort | sed 's|^|protos/|')
