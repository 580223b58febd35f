"""Where plain policies run, through a real Envoy and `xgate authz` over the HTTP transport: a policy that blocks
keeps to the policy pool, and while it holds every thread of it, a plain policy proven to only read its request
and claims still answers at once (it runs inline, on the service's event loop)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from xgate.testing import run_authz_service, run_gateway
from xgate.testing.gateway import wait_for
from xgate.testing.ports import free_ports

pytestmark = pytest.mark.integration

HOLD = 3.0  # seconds the blocking policy holds a pool thread: far past the check's 100 ms timeout
POLICIES = f"""
import time

from xgate.authz import Allow, Deny


def blocks(request, claims):
    time.sleep({HOLD})  # blocking I/O stands here: it must not run on the service's event loop
    return Allow()


def quick(request, claims):
    if request.headers.get("x-user", "") in ("ann", "bob"):
        return Allow(headers={{"x-seen": request.headers["x-user"]}})
    return Deny(403, body="who?")
"""


def config(ports: dict[str, int]) -> str:
    policies = (
        f'policies: {{blocks: "pool_policies:blocks", quick: "pool_policies:quick"}}, '
        f'service: "127.0.0.1:{ports["authz"]}", transport: http, http_service: "127.0.0.1:{ports["authz_http"]}"'
    )
    return f"""
plugins:
  policy: {{{policies}}}
listeners: [{{name: http, address: 127.0.0.1, port: {ports["http"]}}}]
routes:
  - {{name: blocks, match: {{path: {{exact: /blocks}}}}, direct_response: {{status: 200, body: ok}},
      plugins: {{policy: {{name: blocks}}}}}}
  - {{name: quick, match: {{path: {{exact: /quick}}}}, direct_response: {{status: 200, body: ok}},
      plugins: {{policy: {{name: quick}}}}}}
"""


async def test_a_blocking_policy_does_not_hold_up_a_proven_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pool_policies.py").write_text(POLICIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    ports = dict(zip(("http", "authz", "authz_http"), free_ports(3), strict=True))
    async with (
        run_gateway(config(ports), tmp_path / "gw") as gateway,
        run_authz_service(gateway.xds_port, ports["authz"], args=("--http-listen", f"127.0.0.1:{ports['authz_http']}")),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['http']}", timeout=10) as client,
    ):
        await gateway.wait_synced(gateway.plane.state.applied or "")

        async def quick_allows() -> bool:
            return (await client.get("/quick", headers={"x-user": "ann"})).status_code == 200

        await wait_for(quick_allows, 20, "xgate authz answering /quick")
        # More blocking checks than the pool has threads (min(32, cores + 4)): each is answered at the check's
        # timeout with the failure answer, and every pool thread stays asleep for HOLD seconds.
        started = time.monotonic()
        blocked = await asyncio.gather(*(client.get("/blocks") for _ in range(40)))
        assert {response.status_code for response in blocked} == {403}
        # Meanwhile the proven policy answers, each check quickly: it needs no pool thread.
        for user, status in (("ann", 200), ("bob", 200), ("eve", 403)) * 3:
            sent = time.monotonic()
            response = await client.get("/quick", headers={"x-user": user})
            assert response.status_code == status, response.text
            assert time.monotonic() - sent < 1.0, "a proven policy waited for the blocked pool"
        assert time.monotonic() - started < HOLD, "the pool was free again before the check: not proven here"
