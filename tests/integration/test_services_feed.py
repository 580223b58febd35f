"""xgate's services configured by the control plane over ADS, through real Envoys and real service processes:
a refused save changes nothing a service does, a revision a service NACKs reaches no Envoy (and status says
why), and under load a rule or policy change never leaves a request without the resource its route names."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from xgate.demo.upstream import DemoUpstream
from xgate.testing import (
    Gateway,
    ServiceProcess,
    free_port,
    run_authz_service,
    run_cli,
    run_dyeing_service,
    run_gateway,
    run_ratelimit_service,
    write_atomic,
)
from xgate.testing.gateway import wait_for

pytestmark = pytest.mark.integration

STAGE = "x-xgate-stage"


def config(ports: dict[str, int], upstream: int, *, percent: int = 100, policy: str = "pol_a:allow", limit: int = 3,
           body: str = "one", extra_policies: str = "", broken_route: str = "") -> str:  # fmt: skip
    return f"""
plugins:
  dyeing:
    mode: ext_proc  # the service decides (a sticky rule alone would run in Envoy's Lua filter)
    service: "127.0.0.1:{ports["dyeing"]}"
    rules: [{{stage: canary, sticky: {{percent: {percent}, key: {{header: x-user}}}}}}]
  policy:
    service: "127.0.0.1:{ports["authz"]}"
    policies: {{current: "{policy}"{extra_policies}}}
  rate_limit: {{service: "127.0.0.1:{ports["ratelimit"]}", timeout: 500ms}}
listeners: [{{name: public, address: 127.0.0.1, port: {ports["listener"]}}}]
upstreams: [{{name: app, endpoints: ["127.0.0.1:{upstream}"]}}]
routes:
  - {{name: dyed, match: {{path: {{prefix: /dyed}}}}, upstream: app}}
  - {{name: guarded, match: {{path: {{prefix: /guarded}}}}, upstream: app, plugins: {{policy: {{name: current}},
      dyeing: false}}}}
  - {{name: limited, match: {{path: {{prefix: /limited}}}}, upstream: app,
      plugins: {{dyeing: false, rate_limit: {{global: {{requests: {limit}, per: 1h}}}}}}}}
  - {{name: body, match: {{path: {{exact: /body}}}}, direct_response: {{status: 200, body: {body}}}}}
{broken_route}"""


POLICY = "from xgate.authz import Allow\ndef allow(request, claims):\n    return Allow(headers={{'x-policy': '{}'}})\n"
POLICIES = {"pol_a": POLICY.format("a"), "pol_b": POLICY.format("b")}


@pytest.fixture
def policies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    for module, source in POLICIES.items():
        (folder / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(folder))  # the services see the test's sys.path
    return folder


def ports() -> dict[str, int]:
    return {name: free_port() for name in ("listener", "authz", "dyeing", "ratelimit")}


async def feed(service: ServiceProcess) -> dict[str, Any]:
    """The service's view of its config: per type, the version it holds, ACKs and NACKs."""
    async with httpx.AsyncClient() as client:
        types: dict[str, Any] = (await client.get(service.metrics_url)).json()["xds"]["types"]
    return types


async def behaviour(client: httpx.AsyncClient) -> tuple[str | None, str | None, int]:
    """What the three services do for a request: the stage dyeing gave, the policy that answered, and how many
    of 6 requests the global limit let through (it counts, so each call uses a fresh limit window: see tests)."""
    dyed = await client.get("/dyed", headers={"x-user": "ada"})
    guarded = await client.get("/guarded")
    limited = [(await client.get("/limited")).status_code for _ in range(6)]
    return dyed.json()["headers"].get(STAGE), guarded.json()["headers"].get("x-policy"), limited.count(200)


async def test_refused_saves_change_nothing_any_service_does(
    upstreams: dict[str, DemoUpstream], tmp_path: Path, policies: Path
) -> None:
    chosen = ports()
    good = config(chosen, upstreams["v1"].port)
    async with (
        run_gateway(good, tmp_path / "gw") as gateway,
        run_authz_service(gateway.xds_port, chosen["authz"]) as authz,
        run_dyeing_service(gateway.xds_port, chosen["dyeing"]) as dyeing,
        run_ratelimit_service(gateway.xds_port, chosen["ratelimit"]) as ratelimit,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{chosen['listener']}") as client,
    ):
        services = (authz, dyeing, ratelimit)
        assert gateway.config_path is not None
        await gateway.wait_synced(gateway.plane.state.applied or "")
        assert await behaviour(client) == ("canary", "a", 3)
        before = [await feed(service) for service in services]
        # Two saves the control plane refuses (a route names a missing upstream), each touching every service's
        # settings: dyeing to 0%, another policy, another limit.
        broken = "  - {name: broken, upstream: nowhere}\n"
        for percent, policy, limit in ((0, "pol_b:allow", 100), (50, "no_such_module:allow", 1)):
            write_atomic(
                gateway.config_path,
                config(chosen, upstreams["v1"].port, percent=percent, policy=policy, limit=limit, broken_route=broken),
            )
            await gateway.wait_for_rejection("nowhere")
        assert [await feed(service) for service in services] == before  # no service was sent anything
        stage, answered_by, passed = await behaviour(client)
        assert (stage, answered_by, passed) == ("canary", "a", 0)  # the limit of 3 stays used up: not replaced
        # The fix goes to every service.
        await gateway.apply(config(chosen, upstreams["v1"].port, percent=0, policy="pol_b:allow", limit=5))
        stage, answered_by, passed = await behaviour(client)
        # The counter goes on under the new limit: of its 5 an hour, what the 3 before did not use passes.
        assert (stage, answered_by) == ("stable", "b") and 0 < passed <= 2, passed


async def test_a_revision_a_service_refuses_reaches_no_envoy(
    upstreams: dict[str, DemoUpstream], tmp_path: Path, policies: Path
) -> None:
    chosen = ports()
    good = config(chosen, upstreams["v1"].port)
    async with (
        run_gateway(good, tmp_path / "gw") as gateway,
        run_authz_service(gateway.xds_port, chosen["authz"]) as authz,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{chosen['listener']}") as client,
    ):
        assert gateway.config_path is not None
        await gateway.wait_synced(gateway.plane.state.applied or "")
        assert (await client.get("/body")).text == "one"
        # Valid to the control plane, but the new policy does not import where xgate authz runs.
        refused = config(chosen, upstreams["v1"].port, body="two", extra_policies=', gone: "no_such_module:x"')
        write_atomic(gateway.config_path, refused)
        await wait_for(lambda: gateway.plane.state.refusal is not None, 10, "authz to refuse the revision")
        refusal = gateway.plane.state.refusal
        assert refusal is not None and refusal.service == "authz" and "no_such_module" in refusal.message
        assert (await client.get("/body")).text == "one"  # the Envoy never got the revision
        assert (await client.get("/guarded")).json()["headers"]["x-policy"] == "a"  # authz kept what it had
        code, out, _ = await run_cli("status", "--url", f"http://127.0.0.1:{gateway.status_port}")
        assert code == 1 and "REFUSED by authz" in out and "no_such_module" in out, out
        code, out, _ = await run_cli("status", "--url", f"http://127.0.0.1:{gateway.status_port}", "--json")
        report = json.loads(out)
        assert [entry["kind"] for entry in report["services"]] == ["authz"]
        assert report["services"][0]["types"]["Policy"]["rejection"]["message"] == refusal.message
        assert (await feed(authz))["type.googleapis.com/xgate.api.v1.Policy"]["nacks"] >= 1
        # Fixed: the next revision reaches the Envoy, status is clean again.
        await gateway.apply(config(chosen, upstreams["v1"].port, body="three"))
        assert (await client.get("/body")).text == "three"
        assert gateway.plane.state.refusal is None
        code, out, _ = await run_cli("status", "--url", f"http://127.0.0.1:{gateway.status_port}")
        assert code == 0, out


@pytest.mark.timeout(300)
async def test_rule_and_policy_changes_under_load_leave_no_request_without_its_resource(
    upstreams: dict[str, DemoUpstream], tmp_path: Path, policies: Path
) -> None:
    """200 changes of the dye rules (each a new settings key the routes name) and of the policy a route runs,
    saved every 10-30 ms while clients send requests: no request reaches the dyeing service with a key it does
    not know, and none is answered for a policy authz does not have. Requests Envoy passed on undyed because the
    service was late (its documented fail-open, more likely on a busy machine) are counted by Envoy itself and
    told apart."""
    chosen = ports()
    async with (
        run_gateway(config(chosen, upstreams["v1"].port), tmp_path / "gw") as gateway,
        run_authz_service(gateway.xds_port, chosen["authz"]) as authz,
        run_dyeing_service(gateway.xds_port, chosen["dyeing"]) as dyeing,
        run_ratelimit_service(gateway.xds_port, chosen["ratelimit"]),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{chosen['listener']}") as client,
    ):
        assert gateway.config_path is not None
        await gateway.wait_synced(gateway.plane.state.applied or "")
        answers: Counter[str] = Counter()
        stop = asyncio.Event()

        async def load(user: str) -> None:
            while not stop.is_set():
                dyed = await client.get("/dyed", headers={"x-user": user})
                answers["dyed" if STAGE in dyed.json()["headers"] else "undyed"] += 1
                guarded = await client.get("/guarded")
                answers[f"policy {guarded.json()['headers'].get('x-policy')}" if guarded.status_code == 200 else
                        f"status {guarded.status_code}"] += 1  # fmt: skip

        clients = [asyncio.create_task(load(f"user-{index}")) for index in range(8)]
        try:
            started = time.monotonic()
            for change in range(200):
                # A new rule every time (a new settings key); the policy named `current` moves between modules,
                # and a second name appears and goes, so the set the route picks from changes too.
                text = config(
                    chosen,
                    upstreams["v1"].port,
                    percent=change % 100,
                    policy="pol_b:allow" if change % 2 else "pol_a:allow",
                    extra_policies=', other: "pol_a:allow"' if change % 3 == 0 else "",
                )
                write_atomic(gateway.config_path, text)
                await asyncio.sleep(0.01 + 0.02 * (change % 2))
            last = await gateway.apply(config(chosen, upstreams["v1"].port, percent=37, policy="pol_b:allow"))
            elapsed = time.monotonic() - started
        finally:
            stop.set()
            await asyncio.gather(*clients)
        assert gateway.plane.state.applied == last
        undyed_by_service = (await _json(dyeing.metrics_url))["stages"].get("(undyed)", 0)
        authz_errors = sum(outcomes["errors"] for outcomes in (await _json(authz.metrics_url))["checks"].values())
        fail_open = await _ext_proc_fail_open(gateway)
        print(f"200 changes in {elapsed:.1f} s under load: {dict(answers)}; Envoy's ext_proc fail-open: {fail_open}")
        assert undyed_by_service == 0  # no request came with a settings key the service did not hold
        assert authz_errors == 0  # no check named a policy authz did not hold
        assert answers["undyed"] <= fail_open  # every undyed answer is one Envoy counted as its own fail-open
        assert set(answers) <= {"dyed", "undyed", "policy a", "policy b"}, answers
        assert answers["dyed"] > 200 and answers["policy a"] > 0 and answers["policy b"] > 0
        # Once the last change is everywhere, only the policy it names answers.
        after = [(await client.get("/guarded")).json()["headers"].get("x-policy") for _ in range(20)]
        assert after == ["b"] * 20


async def _json(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        data: dict[str, Any] = (await client.get(url)).json()
    return data


async def _ext_proc_fail_open(gateway: Gateway) -> int:
    """Requests Envoy let through without an answer from the ext_proc service (timeouts, failures)."""
    _, text = await gateway.envoys[0].admin_get("/stats?filter=\\.ext_proc\\.(failure_mode_allowed|message_timeouts)$")
    return sum(int(line.rpartition(": ")[2]) for line in text.splitlines() if ": " in line)
