"""Sticky dye rules computed by Envoy (a Lua filter: BLAKE2b in LuaJIT) and by the dyeing service give every
user the same bucket: the same requests through a native listener and an ext_proc one get the same stage and
version, and both the stage sticky_bucket (the service's function) says."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import jwt
import pytest
from tests.integration.test_dyeing import STAGE, fetch_all, upstreams_yaml, versions

from xgate.demo.upstream import DemoUpstream
from xgate.dyeing.rules import sticky_bucket
from xgate.testing import free_port, run_dyeing_service, run_gateway

pytestmark = pytest.mark.integration
__all__ = ["versions"]  # the fixture, shared with test_dyeing.py

SECRET = "a-test-secret-of-32-bytes-length"
KEY = "YS10ZXN0LXNlY3JldC1vZi0zMi1ieXRlcy1sZW5ndGg"  # base64url of SECRET
RULES = """[
      {stage: beta, header: {name: x-beta, exact: "1"}},
      {stage: canary, sticky: {percent: 20, key: {header: x-user-id}}},
      {stage: beta, sticky: {percent: 35.5, seed: spring, key: {cookie: uid}}},
      {stage: gamma, sticky: {percent: 50, key: {claim: sub}}}]"""


def config(versions: dict[str, DemoUpstream], native: int, service: int, dyeing: int) -> str:
    return f"""
plugins:
  jwt:
    providers: [{{name: main, issuer: https://issuer.test, jwks: {{keys: [{{kty: oct, alg: HS256, k: "{KEY}"}}]}}}}]
  dyeing: {{service: "127.0.0.1:{dyeing}", rules: {RULES}}}
listeners:
  - {{name: native, address: 127.0.0.1, port: {native}}}
  - name: service
    address: 127.0.0.1
    port: {service}
    plugins: {{dyeing: {{mode: ext_proc, service: "127.0.0.1:{dyeing}", rules: {RULES}}}}}
upstreams:
{upstreams_yaml(versions)}
routes:
  - name: users
    match: {{path: {{prefix: /users}}}}
    upstream: v1
    canary: [{{stage: canary, upstream: v2, fallback: false}}, {{stage: beta, upstream: v3, fallback: false}}]
    plugins: {{jwt: {{provider: main, optional: true}}}}
  - name: not-canary
    match: {{path: {{prefix: /other}}, headers: [{{name: {STAGE}, exact: canary, invert: true}}]}}
    upstream: v3
    plugins: {{jwt: false}}
  - {{name: canary-other, match: {{path: {{prefix: /other}}}}, upstream: v2, plugins: {{jwt: false}}}}
"""


def token(sub: str) -> str:
    return jwt.encode({"iss": "https://issuer.test", "sub": sub, "exp": int(time.time()) + 600}, SECRET)


def expected(headers: dict[str, str], user: str) -> str:
    """The stage the service's own function gives (first match wins; gamma has no canary: v1)."""
    if headers.get("x-beta") == "1":
        return "beta"
    if "x-user-id" in headers and sticky_bucket("canary", user) < 2000:
        return "canary"
    if "cookie" in headers and sticky_bucket("spring", user) < 3550:
        return "beta"
    if "authorization" in headers and sticky_bucket("gamma", user) < 5000:
        return "gamma"
    return "stable"


@pytest.fixture
async def two_paths(versions: dict[str, DemoUpstream], tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    native, service, dyeing = free_port(), free_port(), free_port()
    async with (
        run_gateway(config(versions, native, service, dyeing), tmp_path) as gateway,
        run_dyeing_service(gateway.xds_port, dyeing),
    ):
        yield f"http://127.0.0.1:{native}", f"http://127.0.0.1:{service}"


async def test_envoy_and_the_service_put_every_user_in_the_same_bucket(two_paths: tuple[str, str]) -> None:
    native_url, service_url = two_paths
    users = [f"user-{index}" for index in range(1500)] + ["ünïcødé", "a" * 300, "x;y", "0", "sp ace"]
    requests: list[tuple[str, dict[str, str]]] = []
    for user in users:
        requests.append((user, {"x-user-id": user}))
        requests.append((user, {"cookie": f"a=1; uid={user.replace(';', '_')}; b=2"}))
    for user in users[:300]:
        requests.append((user, {"authorization": f"Bearer {token(user)}"}))
    requests.append(("u", {"x-beta": "1", "x-user-id": "u"}))
    requests.append(("", {"x-user-id": ""}))  # an empty key is no key
    headers = [each for _, each in requests]  # sent as UTF-8 bytes
    async with httpx.AsyncClient(base_url=native_url) as native, httpx.AsyncClient(base_url=service_url) as service:
        native_answers = await fetch_all(native, headers)
        failed = [answer for answer in native_answers if answer[0] != 200]
        assert not failed, failed[:3]
        service_answers = await fetch_all(service, headers)
    stages: Counter[str] = Counter()
    for (user, sent), native_answer, service_answer in zip(requests, native_answers, service_answers, strict=True):
        key = user.replace(";", "_") if "cookie" in sent else user
        want = expected(sent, key) if user else "stable"
        stages[want] += 1
        assert native_answer[2] == want, (user, sent, native_answer, want)
        if service_answer[2] is not None:  # else passed on undyed: the service was late (counted in Envoy)
            assert service_answer[:3] == native_answer[:3], (user, sent, native_answer, service_answer)
    assert min(stages.values()) > 100, stages


async def test_a_sticky_rule_that_a_stage_match_drops_is_ruled_out_natively(two_paths: tuple[str, str]) -> None:
    """A route matching "not canary": the canary sticky rule's metadata, inverted, keeps its users out."""
    native_url, _ = two_paths
    canary = next(f"u{i}" for i in range(1000) if sticky_bucket("canary", f"u{i}") < 2000)
    stable = next(f"u{i}" for i in range(1000) if sticky_bucket("canary", f"u{i}") >= 2000)
    async with httpx.AsyncClient(base_url=native_url) as client:
        assert (await client.get("/other", headers={"x-user-id": canary})).json()["upstream"] == "v2"
        assert (await client.get("/other", headers={"x-user-id": stable})).json()["upstream"] == "v3"
        # A client cannot mark itself: the metadata is Envoy's own, a header of that name is nothing.
        forged = await client.get("/users", headers={"x-user-id": stable, "sticky_1": "true"})
        assert forged.json()["upstream"] == "v1"


async def test_sticky_users_keep_their_stage_when_the_service_is_down(
    versions: dict[str, DemoUpstream], tmp_path: Path
) -> None:
    """Issue 19, overload: an overloaded or dead dyeing service let requests pass undyed (`on_error: pass`), so
    sticky canary users flipped to stable. Header and sticky rules now run in Envoy: with nothing listening on
    the service's port, every user still gets the stage of their bucket."""
    port, nobody = free_port(), free_port()  # nothing listens on `nobody`
    rules = """[{stage: canary, sticky: {percent: 20, key: {header: x-user-id}}},
      {stage: beta, sticky: {percent: 35.5, seed: spring, key: {cookie: uid}}}]"""
    text = f"""
plugins: {{dyeing: {{service: "127.0.0.1:{nobody}", timeout: 100ms, rules: {rules}}}}}
listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]
upstreams:
{upstreams_yaml(versions)}
routes:
  - name: users
    match: {{path: {{prefix: /users}}}}
    upstream: v1
    canary: [{{stage: canary, upstream: v2, fallback: false}}, {{stage: beta, upstream: v3, fallback: false}}]
"""
    users = [f"user-{index}" for index in range(400)]
    sent = [{"x-user-id": user} for user in users] + [{"cookie": f"uid={user}"} for user in users]
    async with run_gateway(text, tmp_path), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        answers = await fetch_all(client, sent)
    for headers, answer in zip(sent, answers, strict=True):
        user = headers.get("x-user-id") or headers["cookie"].removeprefix("uid=")
        assert answer[0] == 200 and answer[2] == expected(headers, user), (headers, answer)
    dyed = Counter(answer[2] for answer in answers)
    assert dyed["canary"] > 40 and dyed["beta"] > 80 and dyed["stable"] > 300, dyed
