"""Which algorithms a key may verify, and the JWKS Envoy gets for a provider's allow-list."""

from __future__ import annotations

from typing import Any

import pytest

from xgate.plugins.jwks import compatible, key_algorithms, stamped_jwks
from xgate.plugins.jwt import Provider

RSA: dict[str, Any] = {"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB"}
EC: dict[str, Any] = {"kty": "EC", "kid": "e", "crv": "P-256", "x": "AA", "y": "AA"}
OCT: dict[str, Any] = {"kty": "oct", "kid": "s", "k": "c2VjcmV0"}


@pytest.mark.parametrize(
    ("jwk", "expected"),
    [
        (RSA, ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")),
        (EC, ("ES256",)),
        ({**EC, "crv": "P-521"}, ("ES512",)),
        ({**EC, "crv": "secp256k1"}, ()),
        ({"kty": "OKP", "crv": "Ed25519", "x": "AA"}, ("EdDSA",)),
        ({"kty": "OKP", "crv": "X25519", "x": "AA"}, ()),
        (OCT, ("HS256",)),  # never HS384/HS512, and never HMAC for anything but an oct key
        ({"kty": "oops"}, ()),
    ],
)
def test_compatible(jwk: dict[str, Any], expected: tuple[str, ...]) -> None:
    assert compatible(jwk) == expected


def test_key_algorithms_honour_the_key_and_the_provider() -> None:
    assert key_algorithms(RSA, ("RS256", "ES256")) == ("RS256",)
    assert key_algorithms({**RSA, "alg": "PS256"}, None) == ("PS256",)
    assert key_algorithms({**RSA, "alg": "PS256"}, ("RS256",)) == ()
    assert key_algorithms({**RSA, "alg": "HS256"}, None) == ()  # an RSA key claiming HS256 is not an HMAC secret
    assert key_algorithms({**RSA, "use": "enc"}, None) == ()
    assert key_algorithms(OCT, ("RS256",)) == ()


def test_stamped_jwks_lists_a_key_once_per_allowed_algorithm() -> None:
    stamped = stamped_jwks({"keys": [RSA, EC, OCT]}, ("RS256", "PS256", "HS256"))
    assert [(key["kid"], key["alg"]) for key in stamped["keys"]] == [("r", "RS256"), ("r", "PS256"), ("s", "HS256")]
    assert all(key["n"] == "AQAB" for key in stamped["keys"] if key["kty"] == "RSA")


def test_stamped_jwks_without_allow_list_keeps_asymmetric_keys_and_pins_hmac_to_hs256() -> None:
    stamped = stamped_jwks({"keys": [RSA, {**EC, "crv": "bogus"}, OCT]}, None)
    assert stamped["keys"] == [RSA, {**OCT, "alg": "HS256"}]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"jwks": {"keys": [OCT]}, "required_claims": ["sub"]}, "set verify: python"),
        ({"jwks_uri": "https://idp.test/jwks", "algorithms": ["RS256"]}, "set verify: python"),
        ({"verify": "python", "jwks_uri": "https://idp.test/jwks", "algorithms": ["HS256"]}, "explicit oct key"),
        ({"jwks": {"keys": [RSA]}, "algorithms": ["HS256"]}, "explicit oct key"),
        ({"jwks_uri": "http://idp.test/jwks"}, "https://"),
        ({"jwks_uri": "https://user:pw@idp.test/jwks"}, "no credentials"),
        ({"jwks": {"keys": [RSA]}, "jwks_uri": "https://idp.test/jwks"}, "exactly one"),
        ({"jwks": {"keys": [RSA]}, "algorithms": ["ES256"]}, "no key in jwks"),
        ({"jwks": {"keys": [RSA]}, "algorithms": ["none"]}, "algorithms"),
    ],
)
def test_provider_refusals(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Provider.model_validate({"name": "p", **fields})


def test_python_path_takes_what_native_refuses() -> None:
    provider = Provider.model_validate(
        {"name": "p", "verify": "python", "jwks_uri": "https://idp.test/jwks", "algorithms": ["RS256"],
         "required_claims": ["sub"]}
    )  # fmt: skip
    assert provider.required_claims == ("sub",)
