"""Delta (incremental) ADS end to end, beside state of the world: a real Envoy of each variant follows one control
plane through every kind of change, both report the same status (versions included), a NACK reads the same
from both, a restarted control plane sends reconnecting Envoys only what changed, and a service refusal holds
back Envoys of both variants whichever variant the refusing service speaks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from xgate.config.load import parse_document
from xgate.controlplane import ControlPlane
from xgate.pipeline import compile_config
from xgate.proxy.process import EnvoyProcess
from xgate.sources.revision import revision_of
from xgate.testing import Gateway, free_port, run_authz_service, run_cli, run_gateway, write_atomic
from xgate.testing.gateway import wait_for

pytestmark = pytest.mark.integration


async def stat(envoy: EnvoyProcess, name: str) -> int:
    _, body = await envoy.admin_get(f"/stats?filter=^{name}$")
    values = [int(line.rpartition(": ")[2]) for line in body.splitlines() if ": " in line]
    return sum(values)


async def with_sotw_envoy(gateway: Gateway) -> dict[str, EnvoyProcess]:
    """The gateway's Envoy speaks delta (the default); add one speaking state of the world."""
    await gateway.start_envoy("sotw-envoy", delta=False)
    await wait_for(lambda: gateway.plane.report()["all_in_sync"], 10, "both Envoys to be in sync")
    return {"delta": gateway.envoys[0], "sotw": gateway.envoys[1]}


def by_variant(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    proxies = {proxy["xds"]: proxy for proxy in report["proxies"]}
    assert sorted(proxies) == ["delta", "sotw"], proxies
    return proxies


def same_status(gateway: Gateway) -> dict[str, Any]:
    """Both Envoys' status entries, with everything that is not the stream's own (peer, times) equal."""
    proxies = by_variant(gateway.plane.report())

    def comparable(proxy: dict[str, Any]) -> dict[str, Any]:
        def rejection(found: dict[str, Any] | None) -> dict[str, Any] | None:
            return None if found is None else {key: value for key, value in found.items() if key != "at"}

        types = {
            kind: (t["sent"], t["acked"], t["acked_revision"], rejection(t["rejection"]))
            for kind, t in proxy["types"].items()
        }
        return {"in_sync": proxy["in_sync"], "synced_revision": proxy["synced_revision"], "types": types}

    delta, sotw = comparable(proxies["delta"]), comparable(proxies["sotw"])
    assert delta == sotw
    return delta


async def test_envoys_of_both_variants_follow_every_kind_of_change(
    make_config: Callable[..., str], work_dir: Path
) -> None:
    port = free_port()
    original = make_config(port)
    v1_port = original.split('endpoints: ["127.0.0.1:')[1].split('"')[0]
    v2_port = original.split('endpoints: ["127.0.0.1:')[2].split('"')[0]
    async with run_gateway(original, work_dir) as gateway, httpx.AsyncClient() as client:
        envoys = await with_sotw_envoy(gateway)

        async def answers(path: str) -> set[str]:
            """Who answers 20 requests on new connections (both Envoys listen on the port, SO_REUSEPORT): the
            direct response's body, or the upstream's name."""
            found = set()
            for _ in range(20):
                response = await client.get(f"http://127.0.0.1:{port}{path}", headers={"connection": "close"})
                is_json = response.headers.get("content-type", "").startswith("application/json")
                found.add(response.json()["upstream"] if is_json else response.text)
            return found

        routed = original.replace("body: ok", "body: changed")
        await gateway.apply(routed)
        assert await answers("/healthz") == {"changed"}
        # A changed EDS cluster: its endpoints go again, or Envoy would keep it warming for 15 s.
        clustered = routed.replace(
            f'endpoints: ["127.0.0.1:{v1_port}"]\n', f'endpoints: ["127.0.0.1:{v1_port}"]\n    lb: random\n'
        )
        assert clustered != routed
        await gateway.apply(clustered)
        for envoy in envoys.values():
            await wait_for(_no_warming(envoy), 3, "the changed cluster to be warm")
        # An endpoint change goes over EDS alone: the cluster is not rebuilt.
        modified = {variant: await stat(envoy, "cluster_manager.cluster_modified") for variant, envoy in envoys.items()}
        moved = clustered.replace(f"127.0.0.1:{v1_port}", f"127.0.0.1:{v2_port}", 1)
        await gateway.apply(moved)
        assert await answers("/anything") == {"v2"}
        for variant, envoy in envoys.items():
            assert await stat(envoy, "cluster_manager.cluster_modified") == modified[variant]
        # A new upstream with a route to it, then both gone (the route first, the cluster last).
        added = moved.replace(
            "routes:\n", "routes:\n  - {name: third, match: {path: {prefix: /third}}, upstream: v3}\n"
        )
        added = added.replace("routes:\n", f'  - name: v3\n    endpoints: ["127.0.0.1:{v1_port}"]\nroutes:\n', 1)
        await gateway.apply(added)
        assert await answers("/third") == {"v1"}
        active = {variant: await stat(envoy, "cluster_manager.active_clusters") for variant, envoy in envoys.items()}
        await gateway.apply(moved)
        for variant, envoy in envoys.items():
            assert await stat(envoy, "cluster_manager.active_clusters") == active[variant] - 1
        assert await answers("/third") == {"v2"}  # the catch-all route again
        status = same_status(gateway)
        assert status["in_sync"] and status["synced_revision"] == revision_of(moved)


def _no_warming(envoy: EnvoyProcess) -> Callable[[], Any]:
    async def check() -> bool:
        return await stat(envoy, "cluster_manager.warming_clusters") == 0

    return check


async def test_a_nack_reads_the_same_from_both_variants(make_config: Callable[..., str], work_dir: Path) -> None:
    port = free_port()
    config = make_config(port)
    async with run_gateway(config, work_dir) as gateway:
        await with_sotw_envoy(gateway)
        resources = compile_config(parse_document(config, "test")).resources
        routes = resources.route_config("routes/public")
        routes.virtual_hosts[0].routes[0].match.safe_regex.regex = "/(unclosed"
        gateway.plane.cache.update(resources, "bad-revision")

        def rejected() -> bool:
            return all(p["types"]["RDS"]["rejection"] for p in by_variant(gateway.plane.report()).values())

        await wait_for(rejected, 10, "both Envoys to reject the route configuration")
        status = same_status(gateway)
        rejection = status["types"]["RDS"][3]
        assert "missing )" in rejection["message"] and rejection["objects"] == ["routes of listener public"]
        assert rejection["revision"] == "bad-revision" and status["in_sync"] is False
        fixed = config.replace("body: ok", "body: again")
        await gateway.apply(fixed)
        status = same_status(gateway)
        assert status["types"]["RDS"][3] is None and status["synced_revision"] == revision_of(fixed)


async def test_a_restarted_control_plane_sends_reconnecting_envoys_only_what_changed(
    make_config: Callable[..., str], work_dir: Path
) -> None:
    """The delta Envoy says which version of each resource it holds (initial_resource_versions); the SotW one
    which version of each type. Either way only the changed route table goes out again."""
    port = free_port()
    config = make_config(port)
    async with run_gateway(config, work_dir) as gateway:
        envoys = await with_sotw_envoy(gateway)
        counters = ("cluster_manager.cds.update_success", "listener_manager.lds.update_success")
        rds = "http.public.rds.routes/public.update_success"

        async def updates() -> dict[str, list[int]]:
            return {variant: [await stat(e, name) for name in (*counters, rds)] for variant, e in envoys.items()}

        before = await updates()
        await gateway.stop_controlplane()
        changed = config.replace("body: ok", "body: after-restart")
        assert gateway.config_path is not None
        write_atomic(gateway.config_path, changed)
        gateway.plane = ControlPlane()
        await gateway.start_controlplane()
        await gateway.wait_synced(revision_of(changed), timeout=20)
        await wait_for(lambda: len(gateway.plane.report()["proxies"]) == 2, 10, "both Envoys to reconnect")
        after = await updates()
        for variant in envoys:
            cds, lds, routes = (new - old for new, old in zip(after[variant], before[variant], strict=True))
            assert (cds, lds, routes) == (0, 0, 1), (variant, before, after)
        same_status(gateway)


def authz_config(listener: int, authz: int, *, body: str = "one", policy: str = "pol_a:allow") -> str:
    return f"""
plugins:
  policy: {{service: "127.0.0.1:{authz}", policies: {{current: "{policy}"}}}}
listeners: [{{name: public, address: 127.0.0.1, port: {listener}}}]
routes:
  - {{name: guarded, match: {{path: {{prefix: /guarded}}}}, direct_response: {{status: 200, body: guarded}},
      plugins: {{policy: {{name: current}}}}}}
  - {{name: body, match: {{path: {{exact: /body}}}}, direct_response: {{status: 200, body: {body}}}}}
"""


async def test_a_refusal_by_a_service_of_either_variant_holds_back_envoys_of_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "pol_a.py").write_text("from xgate.authz import Allow\ndef allow(request, claims):\n    return Allow()\n")
    monkeypatch.syspath_prepend(str(folder))  # the services see the test's sys.path
    listener, authz_port = free_port(), free_port()
    shared = ["--reuse-port"]
    async with (
        run_gateway(authz_config(listener, authz_port), tmp_path / "gw") as gateway,
        run_authz_service(gateway.xds_port, authz_port, args=shared),
        run_authz_service(gateway.xds_port, authz_port, args=[*shared, "--sotw"]),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{listener}") as client,
    ):
        await with_sotw_envoy(gateway)
        await wait_for(lambda: gateway.plane.report()["all_in_sync"], 10, "every consumer to be in sync")
        services = {entry["xds"]: entry for entry in gateway.plane.report()["services"]}
        assert sorted(services) == ["delta", "sotw"] and {e["kind"] for e in services.values()} == {"authz"}
        assert gateway.config_path is not None
        write_atomic(gateway.config_path, authz_config(listener, authz_port, body="two", policy="nowhere_module:x"))
        await wait_for(lambda: gateway.plane.state.refusal is not None, 10, "authz to refuse the revision")

        def both_refused() -> bool:
            found = gateway.plane.report()["services"]
            return len(found) == 2 and all(entry["types"]["Policy"]["rejection"] for entry in found)

        await wait_for(both_refused, 10, "both authz instances to refuse it")
        for _ in range(10):
            assert (await client.get("/body")).text == "one"  # neither Envoy got the revision
        assert all(not p["types"]["RDS"]["rejection"] for p in by_variant(gateway.plane.report()).values())
        code, out, _ = await run_cli("status", "--url", f"http://127.0.0.1:{gateway.status_port}", "--json")
        report = json.loads(out)
        assert code == 1 and {entry["xds"] for entry in report["services"]} == {"delta", "sotw"}
        messages = {entry["types"]["Policy"]["rejection"]["message"] for entry in report["services"]}
        assert len(messages) == 1 and "nowhere_module" in messages.pop()
        fixed = authz_config(listener, authz_port, body="three")
        await gateway.apply(fixed)
        assert (await client.get("/body")).text == "three"
        await wait_for(lambda: gateway.plane.report()["all_in_sync"], 10, "every consumer to be in sync again")
        assert gateway.plane.state.refusal is None
        same_status(gateway)
