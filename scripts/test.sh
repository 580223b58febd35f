#!/usr/bin/env bash
# Install xgate with its test dependencies (and etcd, Redis, nginx, podman from Debian), build the container
# images (only those whose inputs changed), then run lint, types and the whole test suite: real Envoy, etcd
# and Redis on loopback, and the container tests against podman's Docker-compatible API service, which this
# script starts and stops by its PID whatever the tests' outcome.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --test
scripts/system-deps.sh
.venv/bin/ruff check src tests bench examples
.venv/bin/ruff format --check src tests bench examples
.venv/bin/mypy
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/containers/containers.conf}"
started=$SECONDS
scripts/images.sh
echo "[test] container images ready in $((SECONDS - started)) s"

socket_dir="$(mktemp -d /tmp/xgate-podman.XXXXXX)"
podman system service --time=0 "unix://$socket_dir/podman.sock" >"$socket_dir/service.log" 2>&1 &
podman_pid=$!
stop_podman() {
    kill "$podman_pid" 2>/dev/null || true
    wait "$podman_pid" 2>/dev/null || true
    rm -rf "$socket_dir"
}
trap stop_podman EXIT
for _ in $(seq 100); do [[ -S "$socket_dir/podman.sock" ]] && break; sleep 0.1; done
if [[ ! -S "$socket_dir/podman.sock" ]]; then
    echo "podman system service did not start:" >&2
    cat "$socket_dir/service.log" >&2
    exit 1
fi
export DOCKER_HOST="unix://$socket_dir/podman.sock"
export TESTCONTAINERS_RYUK_DISABLED=true           # Ryuk's image cannot be pulled here; the tests remove theirs
export TESTCONTAINERS_CONNECTION_MODE=docker_host  # the machine is a container itself (/.dockerenv)
.venv/bin/pytest "$@"
