#!/usr/bin/env bash
# Debian packages the integration tests use: etcd (started by the tests, never as a service), openssl.
set -euo pipefail
missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v openssl >/dev/null || missing+=(openssl)  # certificates for the etcd TLS test
if ((${#missing[@]})); then
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
etcd --version | head -1
