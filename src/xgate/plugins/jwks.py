"""Which signature algorithms a JWK may verify, shared by both verification paths.

The Python path (xgate authz) builds one verifier per (key, algorithm) from `key_algorithms`; the native path
stamps the same answer into the JWKS handed to Envoy (`stamped_jwks`): Envoy's jwt_authn checks a key's `alg`
when the key has one, so a key listed once per allowed algorithm restricts Envoy exactly as the Python path is
restricted. No function here does I/O: translation stays pure.
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

Algorithm: TypeAlias = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "HS256"
]
ASYMMETRIC: tuple[Algorithm, ...] = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip
_RSA: tuple[Algorithm, ...] = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_CURVES: dict[str, Algorithm] = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_OKP_CURVES = {"Ed25519", "Ed448"}


def compatible(jwk: dict[str, Any]) -> tuple[Algorithm, ...]:
    """The algorithms a key's type (and curve) can verify at all. HS256 only for an `oct` key: an RSA or EC
    public key is never an HMAC secret (the RS256 -> HS256 confusion)."""
    kty = jwk.get("kty")
    if kty == "RSA":
        return _RSA
    if kty == "EC" and (algorithm := _EC_CURVES.get(str(jwk.get("crv")))) is not None:
        return (algorithm,)
    if kty == "OKP" and jwk.get("crv") in _OKP_CURVES:
        return ("EdDSA",)
    if kty == "oct":
        return ("HS256",)
    return ()


def key_algorithms(jwk: dict[str, Any], allowed: tuple[Algorithm, ...] | None) -> tuple[Algorithm, ...]:
    """The algorithms this key verifies for a provider allowing `allowed` (None: every algorithm the key's type
    can verify). A key stating its own `alg` verifies that one only; a key for encryption (`use: enc`) none."""
    if jwk.get("use", "sig") != "sig":
        return ()
    candidates = compatible(jwk)
    if allowed is not None:
        candidates = tuple(algorithm for algorithm in candidates if algorithm in allowed)
    if "alg" in jwk:
        return tuple(algorithm for algorithm in candidates if algorithm == jwk["alg"])
    return candidates


def stamped_jwks(jwks: dict[str, Any], allowed: tuple[Algorithm, ...] | None) -> dict[str, Any]:
    """The JWKS for Envoy: each key once per algorithm it may verify, with that `alg` set; keys that may verify
    none are left out. With `allowed` None an RSA key without `alg` is passed as it is (Envoy tries it for
    every RS and PS algorithm, as `compatible` does). An EC key gets its curve's only algorithm: Envoy would
    otherwise try a P-256 key with ES384's hash, which the Python path refuses."""
    keys: list[dict[str, Any]] = []
    for jwk in jwks["keys"]:
        algorithms = key_algorithms(jwk, allowed)
        if allowed is None and "alg" not in jwk and len(algorithms) > 1:
            keys.append(jwk)
            continue
        keys += [{**jwk, "alg": algorithm} for algorithm in algorithms]
    return {"keys": keys}
