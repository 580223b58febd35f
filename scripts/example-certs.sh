#!/usr/bin/env bash
# A test CA and the certificates examples/edge.yaml serves, made with openssl into examples/certs/ (or the
# directory given). For trying the example only: the CA's key sits next to it. Not committed (.gitignore).
set -euo pipefail
out="${1:-$(cd "$(dirname "$0")/.." && pwd)/examples/certs}"
mkdir -p "$out"
cd "$out"
umask 077  # keys readable by their owner only (xgate warns about a key every user can read)
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
openssl req -x509 "${ec[@]}" -days 30 -subj "/CN=xgate example CA" -keyout ca-key.pem -out ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
issue() {  # issue NAME SAN
    openssl req "${ec[@]}" -subj "/CN=$1" -keyout "$1-key.pem" -out "$1.csr" 2>/dev/null
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 30 -out "$1.pem" \
        -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\n' "$2") \
        2>/dev/null
    rm "$1.csr"
}
issue api.example.test "DNS:api.example.test"
issue wildcard.example.test "DNS:*.example.test"
chmod 644 ca.pem api.example.test.pem wildcard.example.test.pem
echo "certificates for examples/edge.yaml in $out (CA: $out/ca.pem)"
