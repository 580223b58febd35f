"""Python policies through a real Envoy: jwt_authn verifies, the policy sees the claims (not verified again)
and allows or denies; a failing policy or a missing service denies (fail closed)."""

from __future__ import annotations

import asyncio
import base64
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest

from xgate.demo.upstream import DemoUpstream
from xgate.testing import free_port, run_authz_service, run_cli, run_gateway, scrape

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"
SECRET = "a-test-secret-of-32-bytes-length"


def config(port: int, upstream: int, authz: int) -> str:
    key = base64.urlsafe_b64encode(SECRET.encode()).rstrip(b"=").decode()
    return f"""
plugins:
  jwt:
    providers:
      - {{name: main, issuer: https://issuer.test, jwks: {{keys: [{{kty: oct, alg: HS256, k: "{key}"}}]}}}}
      - {{name: py, verify: python, issuer: https://issuer.test, jwks: {{keys: [{{kty: oct, k: "{key}"}}]}},
          algorithms: [HS256], required_claims: [sub], forward_claims: {{sub: x-sub}}}}
  policy:
    policies: {{admins: "xgate_example_policies:allow_admins", broken: "broken_policies:boom"}}
    service: "127.0.0.1:{authz}"
listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]
upstreams: [{{name: app, endpoints: ["127.0.0.1:{upstream}"]}}]
routes:
  - {{name: admin, match: {{path: {{prefix: /admin}}}}, upstream: app,
      plugins: {{jwt: {{provider: main}}, policy: {{name: admins}}}}}}
  - {{name: broken, match: {{path: {{prefix: /broken}}}}, upstream: app,
      plugins: {{jwt: {{provider: main}}, policy: {{name: broken}}}}}}
  - {{name: py-admin, match: {{path: {{prefix: /py-admin}}}}, upstream: app,
      plugins: {{jwt: {{provider: py}}, policy: {{name: admins}}}}}}
  - {{name: py, match: {{path: {{prefix: /py}}}}, upstream: app, plugins: {{jwt: {{provider: py}}}}}}
  - {{name: signed-in, upstream: app, plugins: {{jwt: {{provider: main}}}}}}
"""


def token(**claims: object) -> str:
    payload = {"iss": "https://issuer.test", "exp": int(time.time()) + 600, **claims}
    return jwt.encode(payload, SECRET, algorithm="HS256")


async def test_policies_see_claims_and_fail_closed(
    upstreams: dict[str, DemoUpstream], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    (tmp_path / "broken_policies.py").write_text("def boom(request, claims):\n    raise RuntimeError('bug')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    port, authz = free_port(), free_port()
    async with run_gateway(config(port, upstreams["v1"].port, authz), tmp_path / "gw") as gateway:
        assert gateway.config_path is not None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            admin = {"authorization": f"Bearer {token(sub='ada', roles=['admin'])}"}
            user = {"authorization": f"Bearer {token(sub='bob', roles=['user'])}"}

            # The service is not running yet: fail closed.
            assert (await client.get("/admin", headers=admin)).status_code == 403
            async with run_authz_service(gateway.xds_port, authz) as service:
                allowed = await client.get("/admin", headers=admin)
                assert allowed.status_code == 200
                assert allowed.json()["headers"]["x-xgate-user"] == "ada"  # added by the policy from the claims
                spoofed = await client.get("/admin", headers={**admin, "x-xgate-user": "mallory"})
                assert spoofed.json()["headers"]["x-xgate-user"] == "ada"  # the policy's value replaces the client's
                denied = await client.get("/admin", headers=user)
                assert (denied.status_code, denied.text) == (403, "admins only")
                assert (await client.get("/admin")).status_code == 401  # no token: jwt answers, no policy runs
                assert (await client.get("/broken", headers=admin)).status_code == 403  # a raising policy denies
                assert (await client.get("/anything", headers=user)).status_code == 200  # jwt only
                metrics = (await client.get(service.metrics_url)).json()
                counts = {"allowed": 2, "denied": 1, "errors": 0, "timeouts": 0}
                assert metrics["checks"]["admins"] == counts  # what the operator sees of each policy
                assert metrics["checks"]["broken"] == {"allowed": 0, "denied": 0, "errors": 1, "timeouts": 0}
                assert metrics["not_loaded"] == {}
                scraped = await scrape(service.metrics_url)  # what Prometheus reads
                assert scraped['xgate_authz_checks_total{outcome="allowed",policy="admins"}'] == 2
                assert scraped['xgate_authz_checks_total{outcome="errors",policy="broken"}'] == 1


async def test_tokens_verified_in_python_reach_the_policy_in_one_call(
    upstreams: dict[str, DemoUpstream], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    (tmp_path / "broken_policies.py").write_text("def boom(request, claims):\n    raise RuntimeError('bug')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    port, authz = free_port(), free_port()
    async with run_gateway(config(port, upstreams["v1"].port, authz), tmp_path / "gw") as gateway:
        assert gateway.config_path is not None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            admin = {"authorization": f"Bearer {token(sub='ada', roles=['admin'])}"}
            user = {"authorization": f"Bearer {token(sub='bob', roles=['user'])}"}
            assert (await client.get("/py", headers=user)).status_code == 403  # no service: fail closed
            async with run_authz_service(gateway.xds_port, authz):
                allowed = await client.get("/py-admin", headers={**admin, "x-sub": "mallory"})
                assert allowed.status_code == 200, allowed.text
                seen = allowed.json()["headers"]
                assert (seen["x-xgate-user"], seen["x-sub"]) == ("ada", "ada")  # policy header, claim header
                assert "authorization" not in seen
                denied = await client.get("/py-admin", headers=user)
                assert (denied.status_code, denied.text) == (403, "admins only")
                missing = await client.get("/py-admin")
                assert (missing.status_code, missing.text) == (401, "Jwt is missing")  # before any policy runs
                no_sub = {"authorization": f"Bearer {token(roles=['admin'])}"}
                assert (await client.get("/py-admin", headers=no_sub)).status_code == 401  # required_claims
                plain = await client.get("/py", headers=user)
                assert (plain.status_code, plain.json()["headers"]["x-sub"]) == (200, "bob")


async def test_processes_sharing_a_port_need_a_metrics_port_each(tmp_path: Path) -> None:
    """Several `xgate authz` on one gRPC port (SO_REUSEPORT, asked for with --reuse-port) is how it scales; a
    second one on the same --status is refused with what to do, and --status off starts it. Without
    --reuse-port the port is not shared: the second one is refused, naming the first."""
    text = f"listeners: [{{name: l, port: {free_port()}}}]\nroutes: [{{name: a, direct_response: {{status: 200}}}}]\n"
    async with run_gateway(text, tmp_path / "gw", envoys=0) as gateway:
        await _share_a_port(gateway.xds_port)


async def _share_a_port(xds_port: int) -> None:
    grpc_port, metrics_port, other_metrics_port = free_port(), free_port(), free_port()
    alone = ["authz", "--xds", f"127.0.0.1:{xds_port}", "--listen", f"127.0.0.1:{grpc_port}"]
    shared = [*alone, "--reuse-port"]

    async def start(*extra: str) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "xgate", *shared, *extra,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert b"authz ready" in line, line
        return process

    first = await start("--status", f"127.0.0.1:{metrics_port}")
    try:
        code, _, err = await run_cli(*alone, "--status", f"127.0.0.1:{other_metrics_port}")
        assert code == 2, err
        assert err.strip().startswith(
            f"xgate authz: 127.0.0.1:{grpc_port} (authz gRPC, --listen) is in use by pid {first.pid} (xgate authz "
        ), err
        assert err.strip().endswith("; to share it on purpose, start each process with --reuse-port"), err
        code, _, err = await run_cli(*shared, "--status", f"127.0.0.1:{metrics_port}")
        assert code == 2 and "need a --status each, or --status off" in err, err
        second = await start("--status", "off")
        second.terminate()
        assert await asyncio.wait_for(second.wait(), 20) == 0
    finally:
        first.terminate()
        assert await asyncio.wait_for(first.wait(), 20) == 0
