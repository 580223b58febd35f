#!/usr/bin/env bash
# Debian packages the integration tests use: etcd, Redis and nginx (started by the tests, never as services),
# openssl (TLS tests, scripts/example-certs.sh), h2load (bench/protocols.py).
set -euo pipefail
missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v openssl >/dev/null || missing+=(openssl)  # certificates for the etcd TLS test
command -v redis-server >/dev/null || missing+=(redis-server)
command -v h2load >/dev/null || missing+=(nghttp2-client)  # bench/protocols.py: h2c and h2 load
# nginx answers a malformed Host with 400, as real upstreams do: the health-check and failover tests need it.
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
if ((${#missing[@]})); then
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
etcd --version | head -1
