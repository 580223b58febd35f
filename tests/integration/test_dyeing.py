"""Traffic dyeing through a real Envoy and three echo upstreams that say which version answered.

The same rules run natively (route matches) on one listener and in the ext_proc service on another; every
request must get the same stage and version from both.
"""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import jwt
import pytest

from xgate.demo.upstream import DemoUpstream, start_upstream
from xgate.dyeing.rules import sticky_bucket
from xgate.proxy.process import EnvoyProcess
from xgate.sources.revision import revision_of
from xgate.testing import free_port, run_authz_service, run_dyeing_service, run_gateway, scrape
from xgate.testing.gateway import Gateway, write_atomic

pytestmark = pytest.mark.integration

SECRET = "a-test-secret-of-32-bytes-length"
STAGE = "x-xgate-stage"


@pytest.fixture
async def versions() -> AsyncIterator[dict[str, DemoUpstream]]:
    started = {name: await start_upstream(name) for name in ("v1", "v2", "v3")}
    try:
        yield started
    finally:
        for upstream in started.values():
            await upstream.stop()


def upstreams_yaml(versions: dict[str, DemoUpstream], health: str = "") -> str:
    return "\n".join(
        f'  - {{name: {name}, endpoints: ["127.0.0.1:{upstream.port}"]{health if name == "v2" else ""}}}'
        for name, upstream in versions.items()
    )


# The route the dyeing tests send users to (shared with test_dyeing_sticky.py): v1 stable, v2 the canary stage,
# v3 the beta stage.
USERS_ROUTE = """  - name: users
    match: {path: {prefix: /users}}
    upstream: v1
    canary: [{stage: canary, upstream: v2, fallback: false}, {stage: beta, upstream: v3, fallback: false}]"""


def token(**claims: object) -> str:
    payload = {"iss": "https://issuer.test", "exp": int(time.time()) + 600, **claims}
    return jwt.encode(payload, SECRET, algorithm="HS256")


NATIVE_RULES = """\
- {stage: canary, header: {name: x-canary, exact: "1"}}
- {stage: beta, cookie: {name: release, exact: beta}}
- {stage: beta, header: {name: x-beta, regex: "ye[sp]"}}
- {stage: canary, query: {name: canary, present: true}}
"""


def two_paths_config(versions: dict[str, DemoUpstream], native: int, service: int, dyeing: int) -> str:
    return f"""
plugins:
  dyeing:
    service: "127.0.0.1:{dyeing}"
    rules:
{textwrap.indent(NATIVE_RULES, " " * 6)}
listeners:
  - {{name: native, address: 127.0.0.1, port: {native}}}
  - name: service
    address: 127.0.0.1
    port: {service}
    plugins:
      dyeing:
        mode: ext_proc
        service: "127.0.0.1:{dyeing}"
        rules:
{textwrap.indent(NATIVE_RULES, " " * 10)}
upstreams:
{upstreams_yaml(versions)}
routes:
{USERS_ROUTE}
  - {{name: plain, match: {{path: {{prefix: /plain}}}}, upstream: v1, plugins: {{dyeing: false}}}}
  - name: beta-only
    match: {{path: {{prefix: /only}}, headers: [{{name: x-xgate-stage, exact: beta}}]}}
    upstream: v3
  - {{name: not-beta, match: {{path: {{prefix: /only}}}}, upstream: v2}}
"""


Answer = tuple[int, str, str | None, str | None]


def stage_of(response: httpx.Response) -> Answer:
    """(status, version that answered, stage header it got, our baggage member it got)."""
    return answer_of(response.status_code, response.json() if response.status_code == 200 else None)


def answer_of(status: int, body: Any) -> Answer:
    if status != 200:
        return status, "", None, None
    headers = body["headers"]
    members = [m.strip() for m in headers.get("baggage", "").split(",") if m.strip().startswith("xgate-stage=")]
    return 200, body["upstream"], headers.get(STAGE), members[-1] if members else None


REQUESTS: list[tuple[str, dict[str, str], str, str]] = [
    # (path, headers, expected version, expected stage)
    ("/users", {}, "v1", "stable"),
    ("/users", {"x-canary": "1"}, "v2", "canary"),
    ("/users", {"x-canary": "2"}, "v1", "stable"),
    ("/users", {"cookie": "a=1; release=beta; b=2"}, "v3", "beta"),
    ("/users", {"cookie": "release=betamax"}, "v1", "stable"),
    ("/users", {"cookie": "xrelease=beta"}, "v1", "stable"),
    ("/users?canary", {}, "v2", "canary"),
    ("/users?x=1&canary=0", {}, "v2", "canary"),
    ("/users", {"x-beta": "yes"}, "v3", "beta"),
    ("/users", {"x-beta": "yes!"}, "v1", "stable"),
    ("/users", {"x-canary": "1", "cookie": "release=beta"}, "v2", "canary"),  # first rule wins
    ("/users", {"cookie": "release=beta", "x-canary": "0"}, "v3", "beta"),
    ("/users", {STAGE: "canary"}, "v1", "stable"),  # forged by an untrusted client: overwritten
    ("/users", {STAGE: "beta", "x-canary": "1"}, "v2", "canary"),
    ("/users", {"baggage": "xgate-stage=canary,other=1"}, "v1", "stable"),
    # A route that matches on the stage itself (natively: decided at translation, earlier rules inverted).
    ("/only", {"cookie": "release=beta"}, "v3", "beta"),
    ("/only", {"x-beta": "yep"}, "v3", "beta"),
    ("/only", {"x-canary": "1", "cookie": "release=beta"}, "v2", "canary"),
    ("/only", {"x-canary": "0", "x-beta": "yes"}, "v3", "beta"),
    ("/only", {}, "v2", "stable"),
    ("/only?canary", {"x-beta": "yes"}, "v3", "beta"),
    ("/only", {STAGE: "beta"}, "v2", "stable"),
]


async def test_native_and_ext_proc_give_the_same_stage(versions: dict[str, DemoUpstream], tmp_path: Path) -> None:
    native, service, dyeing = free_port(), free_port(), free_port()
    async with run_gateway(two_paths_config(versions, native, service, dyeing), tmp_path / "gw") as gateway:
        assert gateway.config_path is not None
        async with (
            run_dyeing_service(gateway.xds_port, dyeing),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{native}") as by_route,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{service}") as by_service,
        ):
            for path, headers, version, stage in REQUESTS:
                for client in (by_route, by_service):
                    got = stage_of(await client.get(path, headers=headers))
                    assert got == (200, version, stage, f"xgate-stage={stage}"), (client.base_url, path, headers)
            # The service also drops the forged baggage member; the native path can only add its own after it.
            forged = await by_service.get("/users", headers={"baggage": "xgate-stage=canary,other=1"})
            assert forged.json()["headers"]["baggage"] == "other=1,xgate-stage=stable"
            # A route with dyeing off gets no stage, and a forged one is removed.
            for client in (by_route, by_service):
                plain = (await client.get("/plain", headers={STAGE: "canary"})).json()
                assert (plain["upstream"], plain["headers"].get(STAGE)) == ("v1", None)

            # Hostile input: a correct answer, never a 5xx.
            for client in (by_route, by_service):
                huge = await client.get("/users", headers={"x-canary": "1" + "a" * 65536})
                assert huge.status_code == 431  # Envoy's header limit answers before any dyeing
                bad_cookie = await client.get("/users", headers=[(b"cookie", b"release=\xff\xfe; x=\xc3")])
                assert stage_of(bad_cookie) == (200, "v1", "stable", "xgate-stage=stable")
                long_stage = await client.get("/users", headers={STAGE: "c" * 8000})
                assert stage_of(long_stage) == (200, "v1", "stable", "xgate-stage=stable")


@pytest.mark.timeout(300)  # 13,000 requests through the ext_proc service on two cores
async def test_service_rules_sticky_claims_and_trust(versions: dict[str, DemoUpstream], tmp_path: Path) -> None:
    port, trusted_port, dyeing = free_port(), free_port(), free_port()
    key = "YS10ZXN0LXNlY3JldC1vZi0zMi1ieXRlcy1sZW5ndGg"  # base64url of SECRET
    text = f"""
plugins:
  jwt:
    providers: [{{name: main, issuer: https://issuer.test, jwks: {{keys: [{{kty: oct, alg: HS256, k: "{key}"}}]}}}}]
  dyeing:
    service: "127.0.0.1:{dyeing}"
    rules:
      - {{stage: beta, claim: {{name: groups, contains: testers}}}}
      - {{stage: internal, source: [192.0.2.0/24]}}
      - {{stage: canary, sticky: {{percent: 20, key: {{header: x-user-id}}}}}}
listeners:
  - {{name: public, address: 127.0.0.1, port: {port}}}
  - name: mesh
    address: 127.0.0.1
    port: {trusted_port}
    plugins:
      dyeing: {{service: "127.0.0.1:{dyeing}", trust: [127.0.0.0/8], rules: []}}
upstreams:
{upstreams_yaml(versions)}
routes:
  - name: users
    upstream: v1
    canary: [{{stage: canary, upstream: v2, fallback: false}}, {{stage: beta, upstream: v3, fallback: false}}]
    plugins: {{jwt: {{provider: main, optional: true}}}}
"""
    async with run_gateway(text, tmp_path / "gw") as gateway:
        assert gateway.config_path is not None
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{trusted_port}") as mesh,
        ):
            # The service is not running: requests pass on undyed (no stage, the default entry), never fail.
            down = await client.get("/users", headers={"x-user-id": "u1", STAGE: "canary"})
            assert stage_of(down) == (200, "v1", None, None), (down.headers, down.text)
            async with run_dyeing_service(gateway.xds_port, dyeing) as service:
                metrics_port = service.status_port
                envoy = gateway.envoys[0]
                tester = {"authorization": f"Bearer {token(sub='ada', groups=['staff', 'testers'])}"}
                assert (await dyed_get(envoy, client, tester))[:3] == (200, "v3", "beta")
                other = {"authorization": f"Bearer {token(sub='bob', groups=['staff'])}"}
                assert (await dyed_get(envoy, client, other))[:3] == (200, "v1", "stable")
                # A trusted hop keeps its stage (and its baggage); the public listener trusts nobody.
                kept = await dyed_get(envoy, mesh, {STAGE: "canary", "baggage": "xgate-stage=canary"}, "mesh")
                assert kept == (200, "v2", "canary", "xgate-stage=canary")
                assert (await dyed_get(envoy, mesh, {}, "mesh"))[:3] == (200, "v1", "stable")

                # 2,000 distinct users, each sending 5 requests (interleaved, so repeats are not back to back).
                users = [f"user-{index}" for index in range(2000)]
                service_before = await service_stages(client, metrics_port)
                answers, failed_open = await fetch_dyed(
                    envoy, client, [{"x-user-id": u} for _ in range(5) for u in users]
                )
                stages = Counter(answer[2] for answer in answers)
                assert stages.keys() <= {"stable", "canary"}, stages
                seen: dict[str, set[str]] = {}
                for index, answer in enumerate(answers):
                    seen.setdefault(users[index % len(users)], set()).add(answer[1])
                assert all(len(got) == 1 for got in seen.values())  # each user's 5 requests: one version
                canary = {user for user, got in seen.items() if got == {"v2"}}
                # Exactly the users whose bucket is under 20%, and about 20% of them.
                assert canary == {user for user in users if sticky_bucket("canary", user) < 2000}
                assert 17.0 <= len(canary) / len(users) * 100 <= 23.0
                # The service's own counters agree with what the upstreams saw (a request Envoy stopped waiting
                # for may still have been dyed and counted there).
                counted = await service_stages(client, metrics_port) - service_before
                for stage in ("canary", "stable"):
                    assert stages[stage] <= counted[stage] <= stages[stage] + failed_open, (stage, counted, stages)
                metrics = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).json()
                assert len(metrics["settings"]) == 2  # the global rules and the mesh listener's
                scraped = await scrape(f"http://127.0.0.1:{service.status_port}/metrics")
                assert scraped['xgate_dyeing_requests_total{stage="canary"}'] == metrics["stages"]["canary"]

                # 20% -> 40% while clients keep sending: no request fails, and nobody leaves the canary.
                assert gateway.config_path is not None
                before, service_before = await ext_proc_stats(envoy), await service_stages(client, metrics_port)
                sending = asyncio.create_task(
                    fetch_all(client, [{"x-user-id": u} for u in users[:1000]], concurrency=4)
                )
                text = text.replace("percent: 20", "percent: 40")
                write_atomic(gateway.config_path, text)
                await gateway.wait_synced(revision_of(text))
                during = await sending
                assert all(answer[0] == 200 for answer in during)
                # Undyed only by the documented pass-through: Envoy's timeout, or settings the service did not
                # have yet (Envoy and the service each read the changed file); every dyed canary user stays.
                undyed = sum(1 for answer in during if answer[2] is None)
                timeouts = (await ext_proc_stats(envoy) - before)["failure_mode_allowed"]
                unknown = (await service_stages(client, metrics_port) - service_before)[UNDYED]
                assert timeouts <= undyed <= timeouts + unknown, (undyed, timeouts, unknown)
                for user, answer in zip(users[:1000], during, strict=True):
                    assert answer[2] is None or user not in canary or answer[1] == "v2", (user, answer)
                newcomer = next(u for u in users if 2000 <= sticky_bucket("canary", u) < 4000)
                await wait_for_version(client, {"x-user-id": newcomer}, "v2")  # the service has the new rules
                after, failed_again = await fetch_dyed(envoy, client, [{"x-user-id": user} for user in users])
                raised = {user for user, answer in zip(users, after, strict=True) if answer[1] == "v2"}
                print(
                    f"passed on undyed by Envoy's failure mode: {failed_open} of 10,000, then {failed_again} of "
                    f"2,000; during the change {undyed} of 1,000 ({timeouts} timeouts, {unknown} unknown settings)"
                )
                assert canary < raised
                assert raised == {user for user in users if sticky_bucket("canary", user) < 4000}


UNDYED = "(undyed)"  # the service's count of requests it passed on without a stage (unknown settings)


async def ext_proc_stats(envoy: EnvoyProcess, listener: str = "public") -> Counter[str]:
    """Envoy's ext_proc counters on `listener` (failure_mode_allowed: passed on undyed, the service too slow or
    failing; message_timeouts: of those, too slow)."""
    status, body = await envoy.admin_get("/stats?filter=ext_proc")
    assert status == 200, body
    prefix = f"http.{listener}.ext_proc."
    pairs = (line.partition(": ") for line in body.splitlines())
    return Counter({key.removeprefix(prefix): int(value) for key, _, value in pairs if key.startswith(prefix)})


async def service_stages(client: httpx.AsyncClient, metrics_port: int) -> Counter[str]:
    return Counter((await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).json()["stages"])


async def dyed_get(
    envoy: EnvoyProcess, client: httpx.AsyncClient, headers: dict[str, str], listener: str = "public"
) -> Answer:
    """GET /users until the answer is dyed; each undyed answer must be one Envoy counted as passed on by
    failure mode (the service did not answer in time on a busy machine), never a silent one."""
    for _ in range(20):
        before = await ext_proc_stats(envoy, listener)
        answer = stage_of(await client.get("/users", headers=headers))
        if answer[2] is not None:
            return answer
        assert (await ext_proc_stats(envoy, listener) - before)["failure_mode_allowed"] == 1, answer
    raise AssertionError(f"{headers}: never dyed in 20 tries, each passed on by Envoy's failure mode")


async def fetch_dyed(
    envoy: EnvoyProcess, client: httpx.AsyncClient, headers: list[dict[str, str]]
) -> tuple[list[Answer], int]:
    """fetch_all, then the undyed ones again until every answer is dyed; returns the answers and how many were
    passed on undyed meanwhile. Every undyed answer must be one Envoy counted as passed on by failure mode
    (the service did not answer within the plugin's timeout); the settings are not changing meanwhile."""
    answers: list[Answer] = [(0, "", None, None)] * len(headers)
    pending = list(range(len(headers)))
    failed_open = 0
    for _ in range(20):
        before = await ext_proc_stats(envoy)
        got = await fetch_all(client, [headers[index] for index in pending], concurrency=32 if not failed_open else 4)
        assert all(answer[0] == 200 for answer in got), Counter(answer[0] for answer in got)
        for index, answer in zip(pending, got, strict=True):
            answers[index] = answer
        pending = [index for index in pending if answers[index][2] is None]
        assert (await ext_proc_stats(envoy) - before)["failure_mode_allowed"] == len(pending), len(pending)
        failed_open += len(pending)
        if not pending:
            return answers, failed_open
    raise AssertionError(f"{len(pending)} requests never dyed in 20 rounds")


async def wait_for_version(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    version: str,
    path: str = "/users",
    statuses: tuple[int, ...] = (200,),
    timeout: float = 10.0,
) -> None:
    """Until a request with `headers` reaches `version`; every answer meanwhile has one of `statuses`."""
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(path, headers=headers)
        assert response.status_code in statuses, response.status_code
        if stage_of(response)[1] == version:
            return
        assert time.monotonic() < deadline, f"{headers} never reached {version}"
        await asyncio.sleep(0.02)


async def fetch_all(
    client: httpx.AsyncClient, headers: list[dict[str, str]], path: str = "/users", concurrency: int = 32
) -> list[Answer]:
    """One request per entry of `headers`, `concurrency` at a time, on aiohttp (a few times cheaper per
    request than httpx: these tests send thousands through two cores); answers in the order given."""
    answers: list[Answer] = [(0, "", None, None)] * len(headers)
    queue = iter(enumerate(headers))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(str(client.base_url), connector=connector) as session:

        async def worker() -> None:
            for index, each in queue:
                async with session.get(path, headers=each) as response:
                    body = await response.json() if response.status == 200 else None
                    answers[index] = answer_of(response.status, body)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers


def split_config(versions: dict[str, DemoUpstream], port: int, weights: tuple[int, int, int], percent: int) -> str:
    v1, v2, v3 = weights
    return f"""
plugins:
  dyeing:
    rules: [{{stage: canary, header: {{name: x-canary, exact: "1"}}}}]
listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]
upstreams:
{upstreams_yaml(versions, ", health_check: {path: /healthz, interval: 200ms, timeout: 200ms, unhealthy_threshold: 1}")}
routes:
  - name: split
    match: {{path: {{prefix: /split}}}}
    split: [{{upstream: v1, weight: {v1}}}, {{upstream: v2, weight: {v2}}}, {{upstream: v3, weight: {v3}}}]
  - name: canary
    match: {{path: {{prefix: /canary}}}}
    upstream: v1
    canary: {{stage: canary, upstream: v2}}
  - name: ramp
    match: {{path: {{prefix: /ramp}}}}
    split: [{{upstream: v1, weight: {100 - percent}}}, {{upstream: v2, weight: {percent}}}]
"""


async def test_weighted_split_changes_live_and_canary_falls_back(
    versions: dict[str, DemoUpstream], tmp_path: Path
) -> None:
    port = free_port()
    async with (
        run_gateway(split_config(versions, port, (70, 30, 0), 0), tmp_path / "gw") as gateway,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        answers = await fetch_all(client, [{}] * 1000, path="/split")
        counts = Counter(answer[1] for answer in answers)
        assert counts["v3"] == 0 and sum(counts.values()) == 1000
        assert 65 <= counts["v1"] / 10 <= 75 and 25 <= counts["v2"] / 10 <= 35, counts

        # Ramp the weights up while clients keep sending: no request fails, the last weights hold.
        failures = await ramp_under_load(gateway, client, versions, port)
        assert failures == 0
        final = Counter(answer[1] for answer in await fetch_all(client, [{}] * 200, path="/ramp"))
        assert final == {"v2": 200}

        # The canary upstream goes down: dyed requests fall back to the stable upstream once health
        # checks notice, and come back when it returns.
        assert stage_of(await client.get("/canary", headers={"x-canary": "1"}))[1] == "v2"
        canary_port = versions["v2"].port
        await versions["v2"].stop()
        # Until health checks notice (interval 200 ms), a request may still meet the stopped canary.
        await wait_for_version(client, {"x-canary": "1"}, "v1", "/canary", statuses=(200, 503))
        versions["v2"] = await start_upstream("v2", port=canary_port)
        await wait_for_version(client, {"x-canary": "1"}, "v2", "/canary", statuses=(200, 503))


async def ramp_under_load(
    gateway: Gateway, client: httpx.AsyncClient, versions: dict[str, DemoUpstream], port: int
) -> int:
    failures = 0
    done = asyncio.Event()

    async def send() -> None:
        nonlocal failures
        while not done.is_set():
            response = await client.get("/ramp")
            failures += response.status_code != 200

    senders = [asyncio.create_task(send()) for _ in range(4)]
    assert gateway.config_path is not None
    for percent in (10, 50, 100):
        text = split_config(versions, port, (70, 30, 0), percent)
        write_atomic(gateway.config_path, text)
        await gateway.wait_synced(revision_of(text))
    done.set()
    await asyncio.gather(*senders)
    return failures


async def test_claims_verified_in_python_reach_dyeing_rules_and_rate_limits(
    versions: dict[str, DemoUpstream], tmp_path: Path
) -> None:
    """A token `xgate authz` verified (verify: python) leaves no jwt_authn metadata; its payload goes into
    ext_authz's, where the dyeing service's claim rules and the rate-limit actions find it too."""
    port, authz, dyeing = free_port(), free_port(), free_port()
    key = "YS10ZXN0LXNlY3JldC1vZi0zMi1ieXRlcy1sZW5ndGg"  # base64url of SECRET
    text = f"""
plugins:
  jwt:
    providers: [{{name: py, verify: python, issuer: https://issuer.test, algorithms: [HS256],
                  jwks: {{keys: [{{kty: oct, k: "{key}"}}]}}}}]
  policy: {{service: "127.0.0.1:{authz}"}}
  dyeing:
    service: "127.0.0.1:{dyeing}"
    rules: [{{stage: beta, claim: {{name: groups, contains: testers}}}}]
listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]
upstreams:
{upstreams_yaml(versions)}
routes:
  - {{name: users, match: {{path: {{prefix: /users}}}}, upstream: v1, plugins: {{jwt: {{provider: py}}}},
     canary: [{{stage: beta, upstream: v3, fallback: false}}]}}
  - {{name: me, match: {{path: {{prefix: /me}}}}, direct_response: {{status: 200, body: ok}},
     plugins: {{jwt: {{provider: py}}, rate_limit: {{local: {{requests: 2, per: 10s, by: "claim:sub"}}}}}}}}
"""
    async with run_gateway(text, tmp_path / "gw") as gateway:
        assert gateway.config_path is not None
        async with (
            run_authz_service(gateway.xds_port, authz),
            run_dyeing_service(gateway.xds_port, dyeing),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
        ):
            tester = {"authorization": f"Bearer {token(sub='ada', groups=['testers'])}"}
            other = {"authorization": f"Bearer {token(sub='bob', groups=['staff'])}"}
            assert stage_of(await client.get("/users", headers=tester))[:3] == (200, "v3", "beta")
            assert stage_of(await client.get("/users", headers=other))[:3] == (200, "v1", "stable")
            ada = [(await client.get("/me", headers=tester)).status_code for _ in range(3)]
            bob = [(await client.get("/me", headers=other)).status_code for _ in range(3)]
            assert (ada, bob) == ([200, 200, 429], [200, 200, 429])  # a bucket per verified subject
