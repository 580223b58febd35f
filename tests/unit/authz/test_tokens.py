"""The Python verification path without Envoy: the verified-token cache, algorithm allow-lists, required claims,
lifetimes, where tokens are found, and which claim headers are forwarded. (What it answers for each class of
token, next to Envoy's answer, is tests/integration/test_jwt_agreement.py.)"""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from xgate.authz.extract import Found
from xgate.authz.tokens import Refusal, TokenCache, TokenVerifier, claim_headers
from xgate.plugins.jwt import Provider

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
SECRET = b"a-shared-secret-long-enough-for-hs384-and-hs512-signing-64-bytes"


def jwks() -> dict[str, Any]:
    rsa_jwk = {**json.loads(RSAAlgorithm.to_jwk(RSA_KEY.public_key())), "kid": "rsa"}
    ec_jwk = {**json.loads(ECAlgorithm.to_jwk(EC_KEY.public_key())), "kid": "ec"}
    oct_jwk = {"kty": "oct", "kid": "hs", "k": base64.urlsafe_b64encode(SECRET).rstrip(b"=").decode()}
    return {"keys": [rsa_jwk, ec_jwk, oct_jwk]}


def verifier(**fields: Any) -> TokenVerifier:
    return TokenVerifier(Provider.model_validate({"name": "p", "verify": "python", "jwks": jwks(), **fields}))


def token(key: Any = RSA_KEY, algorithm: str = "RS256", kid: str = "rsa", **claims: Any) -> str:
    payload = {"sub": "ada", "exp": int(time.time()) + 600, **claims}
    return jwt.encode(
        {k: v for k, v in payload.items() if v is not None}, key, algorithm=algorithm, headers={"kid": kid}
    )


def one(compact: str) -> Found:
    """A request carrying one token, in the Authorization header."""
    return Found((compact,), ("authorization",))


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_cache_is_bounded_least_recently_used_out() -> None:
    cache = TokenCache(max_entries=2, clock=Clock())
    cache.put("a", {"n": 1}, None)
    cache.put("b", {"n": 2}, None)
    assert cache.get("a") == {"n": 1}  # a is now the most recently used
    cache.put("c", {"n": 3}, None)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == ({"n": 1}, None, {"n": 3})
    assert len(cache) == 2


def test_cache_respects_exp_and_its_own_ttl() -> None:
    clock = Clock()
    cache = TokenCache(ttl=300, clock=clock)
    cache.put("short", {}, expires=clock.now + 10)
    cache.put("long", {}, expires=clock.now + 3600)
    clock.now += 10
    assert cache.get("short") is None  # at exp it is gone
    assert cache.get("long") == {}
    clock.now += 290
    assert cache.get("long") is None  # never trusted longer than ttl without verifying again


def test_cache_shared_by_threads_stays_consistent() -> None:
    # The service's gRPC threads share one cache: puts evicting while others read and expire entries.
    clock = Clock()
    cache = TokenCache(max_entries=16, clock=clock)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(3000):
                token = f"t{(seed * 7 + i) % 40}"
                cache.put(token, {"i": i}, clock.now + (i % 3))
                cache.get(f"t{(seed + i) % 40}")
                if i % 50 == 0:
                    clock.now += 1  # entries expire under the readers
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(cache) <= 16


def test_cache_key_is_the_whole_token() -> None:
    cache = TokenCache(clock=Clock())
    cache.put("header.payload.signature", {"sub": "ada"}, None)
    assert cache.get("header.payload.signaturf") is None
    assert cache.get("header.payload.signature") == {"sub": "ada"}


async def test_verified_tokens_are_cached_and_handed_out_as_copies() -> None:
    check = verifier()
    good = token()
    claims = await check.verify(one(good))
    assert isinstance(claims, dict) and claims["sub"] == "ada"
    claims["sub"] = "mallory"  # a policy mutating its claims does not change the next request's
    again = await check.verify(one(good))
    assert isinstance(again, dict) and again["sub"] == "ada"
    assert len(check.cache) == 1


async def test_a_cached_token_is_verified_again_after_exp() -> None:
    check = verifier(clock_skew=1)
    clock = Clock()
    clock.now = time.time()
    check.cache.clock = clock
    good = token(exp=int(clock.now) + 5)
    assert isinstance(await check.verify(one(good)), dict)
    clock.now += 7
    assert check.cache.get(good) is None


async def test_algorithms_allow_list() -> None:
    check = verifier(algorithms=["ES256"])
    assert isinstance(await check.verify(one(token(EC_KEY, "ES256", "ec"))), dict)
    refused = await check.verify(one(token()))  # a good RS256 signature, but RS256 is not allowed
    assert isinstance(refused, Refusal) and refused.status == 401
    assert isinstance(await check.verify(one(token(SECRET, "HS256", "hs"))), Refusal)  # HS256 not listed either


async def test_hs256_only_with_the_oct_key() -> None:
    check = verifier(algorithms=["HS256", "RS256"])
    assert isinstance(await check.verify(one(token(SECRET, "HS256", "hs"))), dict)
    assert isinstance(await check.verify(one(token(SECRET, "HS384", "hs"))), Refusal)
    assert isinstance(await check.verify(one(token(SECRET, "HS256", "rsa"))), Refusal)  # kid of the RSA key


async def test_required_claims_and_max_lifetime() -> None:
    """max_lifetime as jwt_authn reads it: exp at most that far from now (iat is the issuer's word, unchecked)."""
    check = verifier(required_claims=["sub", "tenant"], max_lifetime="1h")
    now = int(time.time())
    assert isinstance(await check.verify(one(token(tenant="acme", iat=now))), dict)
    missing = await check.verify(one(token(iat=now)))
    assert isinstance(missing, Refusal) and (missing.status, missing.description) == (401, "Jwt has no tenant claim")
    too_long = await check.verify(one(token(tenant="acme", iat=now, exp=now + 7200)))
    assert isinstance(too_long, Refusal) and too_long.status == 401
    assert isinstance(await check.verify(one(token(tenant="acme", iat=now - 86400))), dict)  # exp is 10 min away
    no_exp = await check.verify(one(token(tenant="acme", exp=None)))
    assert isinstance(no_exp, Refusal) and no_exp.status == 401


async def test_issuer_is_an_exact_match_and_audience_refusal_is_403() -> None:
    check = verifier(issuer="https://idp.test", audiences=["api"])
    assert isinstance(await check.verify(one(token(iss="https://idp.test", aud="api"))), dict)
    for issuer in ("https://idp.test/", "https://idp", "https://idp.test.evil", None):
        refused = await check.verify(one(token(iss=issuer, aud="api")))
        assert isinstance(refused, Refusal) and refused.status == 401, issuer
    audience = await check.verify(one(token(iss="https://idp.test", aud="web")))
    assert isinstance(audience, Refusal) and audience.status == 403


async def test_exp_must_be_a_number_and_is_required_unless_switched_off() -> None:
    assert isinstance(await verifier().verify(one(token(exp=str(int(time.time()) + 600)))), Refusal)
    assert isinstance(await verifier().verify(one(token(exp=None))), Refusal)
    assert isinstance(await verifier(require_exp=False).verify(one(token(exp=None))), dict)


def test_where_the_tokens_are_found() -> None:
    """As jwt_authn's extractor: every location counts, header values apart, in its order."""
    check = verifier(headers=[{"name": "x-token", "prefix": "Token "}], cookies=["session"], query=["access_token"])
    assert check.find([("x-token", "Token abc.def.ghi")], "/") == Found(("abc.def.ghi",), ("x-token",))
    assert check.find([("x-token", "Bearer abc.def.ghi")], "/") is None  # wrong prefix: not a token for us
    assert check.find([("x-token", "Basic x, Token a.b.c junk")], "/") == Found(("a.b.c junk",), ("x-token",))
    assert check.find([("cookie", "a=1; session=abc.def.ghi")], "/") == Found(("abc.def.ghi",), ())
    assert check.find([("cookie", 'session="q.r.s"; session=x')], "/") == Found(("q.r.s",), ())  # the first
    assert check.find([("cookie", "a=1"), ("cookie", "session=s.t.u")], "/") == Found(("s.t.u",), ())
    assert check.find([], "/?access_token=q%2Er.s&access_token=z") == Found(("q.r.s",), ())
    assert check.find([], "/?access_token") == Found(("",), ())  # present, empty: a bad token, not a missing one
    assert check.find([], "/path") is None
    both = check.find([("x-token", "Token h.p.s"), ("x-token", "Token i.q.t"), ("cookie", "session=c.d.e")], "/")
    assert both == Found(("h.p.s", "i.q.t", "c.d.e"), ("x-token",))
    assert verifier().find([("authorization", "Bearer %%%")], "/") == Found(("Bearer %%%",), ("authorization",))


async def test_every_token_must_verify_and_the_last_found_is_checked_first() -> None:
    check = verifier(audiences=["api"])
    good, wrong_audience = token(aud="api"), token(aud="web")
    assert isinstance(await check.verify(Found((good, good), ())), dict)
    bad_last = await check.verify(Found((wrong_audience, "not-a-jwt"), ()))
    assert isinstance(bad_last, Refusal) and bad_last.status == 401  # the garbage, checked first
    bad_first = await check.verify(Found(("not-a-jwt", wrong_audience), ()))
    assert isinstance(bad_first, Refusal) and bad_first.status == 403  # the audience, checked first


async def test_the_guard_runs_before_everything_else() -> None:
    """A token too large, or with crit, is refused as such even when it is also for another audience (403)."""
    check = verifier(audiences=["api"], max_token_bytes=1024)
    large = await check.verify(one(token(aud="web", pad="x" * 2000)))
    assert isinstance(large, Refusal) and (large.status, large.description) == (401, "Jwt is too large")
    crit = jwt.encode({"aud": "web"}, RSA_KEY, algorithm="RS256", headers={"kid": "rsa", "crit": ["exp"]})
    refused = await check.verify(one(crit))
    assert isinstance(refused, Refusal) and refused.status == 401 and "crit" in refused.description


def test_claim_headers_forward_plain_values_and_remove_the_rest() -> None:
    provider = Provider.model_validate(
        {"name": "p", "jwks": jwks(), "forward_claims": {"sub": "X-User", "admin": "x-admin", "roles": "x-roles",
                                                          "n": "x-n", "bad": "x-bad"}}
    )  # fmt: skip
    headers, remove = claim_headers(provider, {"sub": "ada", "admin": True, "roles": ["a"], "n": 3, "bad": "a\r\nb"})
    assert headers == {"x-user": "ada", "x-admin": "true", "x-n": "3"}
    assert sorted(remove) == ["x-bad", "x-roles"]


@pytest.mark.parametrize("garbage", ["", "a", "a.b", "a.b.c", "e30.e30.", "...", "\u00e9.\u00e9.\u00e9"])
async def test_garbage_is_a_401_never_an_exception(garbage: str) -> None:
    refused = await verifier().verify(one(garbage))
    assert isinstance(refused, Refusal) and refused.status == 401


async def test_kid_matching_as_envoy_does() -> None:
    rsa_jwk = json.loads(RSAAlgorithm.to_jwk(RSA_KEY.public_key()))  # no kid
    check = TokenVerifier(Provider.model_validate({"name": "p", "verify": "python", "jwks": {"keys": [rsa_jwk]}}))
    assert isinstance(await check.verify(one(token(kid="anything"))), dict)  # a key without kid is tried for any kid
    named = verifier()
    refused = await named.verify(one(token(kid="ec")))  # the kid names the EC key: the RSA key is not tried
    assert isinstance(refused, Refusal) and refused.status == 401
