#!/usr/bin/env bash
# Debian packages the tests use: etcd, Redis and nginx (started by the tests, never as services), openssl (TLS tests,
# scripts/example-certs.sh), h2load (bench/protocols.py), and
# podman for the container tests (with runc, netavark and aardvark-dns for networks whose containers find each
# other by name, debootstrap for the local base images). Podman is configured by containers/containers.conf
# (CONTAINERS_CONF), not in /etc; this script fails when podman cannot run a container here.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v openssl >/dev/null || missing+=(openssl)  # certificates for the etcd TLS test
command -v redis-server >/dev/null || missing+=(redis-server)
command -v h2load >/dev/null || missing+=(nghttp2-client)  # bench/protocols.py: h2c and h2 load
# nginx answers a malformed Host with 400, as real upstreams do: the health-check and failover tests need it.
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
[[ -x /usr/lib/podman/netavark ]] || missing+=(netavark)
[[ -x /usr/lib/podman/aardvark-dns ]] || missing+=(aardvark-dns)
command -v debootstrap >/dev/null || [[ -x /usr/sbin/debootstrap ]] || missing+=(debootstrap)
command -v chromium >/dev/null || missing+=(chromium)  # the dashboard's page test runs it headless
if ((${#missing[@]})); then
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# sed reads every line: head would exit first and etcd's next write would end this script with SIGPIPE (141)
etcd --version | sed -n 1p
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/containers/containers.conf}"
if ! podman info --format 'podman {{.Version.Version}}, {{.Host.OCIRuntime.Name}}, {{.Host.NetworkBackend}}'; then
    echo "podman cannot run here (CONTAINERS_CONF=$CONTAINERS_CONF): the container tests would fail" >&2
    exit 1
fi
