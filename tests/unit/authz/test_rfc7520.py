"""The RFC 7520 (JOSE cookbook) signatures from tests/data/jwt: the Python path's key handling
(plugins/jwks.py's algorithms, PyJWT's keys) verifies each example with the cookbook's key, refuses it
tampered, and refuses it as a token: a JWS whose payload is prose is not a JWT."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt
import pytest

from xgate.authz.extract import Found
from xgate.authz.keys import KeySet
from xgate.authz.tokens import Refusal, TokenVerifier
from xgate.plugins.jwks import Algorithm
from xgate.plugins.jwt import Provider

# Copied byte for byte from ietf-jose/cookbook (see tests/data/README.md).
COOKBOOK = Path(__file__).resolve().parents[2] / "data" / "jwt" / "rfc7520_jose_cookbook"


def _read(name: str) -> Any:
    return json.loads((COOKBOOK / name).read_text())


def _public(jwk: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in jwk.items() if name not in ("d", "p", "q", "dp", "dq", "qi")}


CASES = {
    "4.1 RS256": ("jws_4_1.rsa_v15_signature.json", _read("jwk_3_3.rsa_public_key.json")),
    "4.2 PS384": ("jws_4_2.rsa-pss_signature.json", _read("jwk_3_3.rsa_public_key.json")),
    "4.3 ES512": ("jws_4_3.ecdsa_signature.json", _read("jwk_3_1.ec_public_key.json")),
    "4.4 HS256": ("jws_4_4.hmac-sha2_integrity_protection.json", _read("jwk_3_5.symmetric_key_mac_computation.json")),
    "Ed25519": ("curve25519_jws.json", _public(_read("curve25519_jws.json")["input"]["key"])),
}


def _example(name: str) -> tuple[str, str, str, dict[str, Any]]:
    """(compact JWS, alg, payload, public JWK)."""
    file, jwk = CASES[name]
    example = _read(file)
    return example["output"]["compact"], example["signing"]["protected"]["alg"], example["input"]["payload"], jwk


@pytest.mark.parametrize("name", sorted(CASES))
def test_cookbook_signatures_verify_with_the_cookbook_keys(name: str) -> None:
    compact, algorithm, payload, jwk = _example(name)
    header = jwt.get_unverified_header(compact)
    keys = KeySet({"keys": [jwk]}, None).candidates(header.get("kid"), algorithm)
    assert len(keys) == 1
    assert jwt.PyJWS().decode(compact, keys[0], algorithms=[algorithm]).decode() == payload
    head, body, signature = compact.split(".")
    tampered = f"{head}.{body}.{signature[:-2]}{'A' if signature[-2] != 'A' else 'B'}{signature[-1]}"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.PyJWS().decode(tampered, keys[0], algorithms=[algorithm])


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_allow_list_without_the_example_alg_offers_no_key(name: str) -> None:
    compact, algorithm, _, jwk = _example(name)
    other: Algorithm = "ES256" if algorithm != "ES256" else "RS256"
    assert KeySet({"keys": [jwk]}, (other,)).candidates(jwt.get_unverified_header(compact).get("kid"), algorithm) == []


@pytest.mark.parametrize("name", sorted(CASES))
async def test_a_signed_non_jwt_payload_is_refused_as_a_token(name: str) -> None:
    compact, _, _, jwk = _example(name)
    provider = Provider.model_validate({"name": "p", "verify": "python", "require_exp": False, "jwks": {"keys": [jwk]}})
    refused = await TokenVerifier(provider).verify(Found((compact,), ()))
    assert isinstance(refused, Refusal) and refused.status == 401
