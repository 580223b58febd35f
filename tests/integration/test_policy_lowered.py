"""A declarative policy lowered to Envoy's RBAC filter and the same policy run in Python by `xgate authz` (over
gRPC, and over the lean HTTP transport) give the same answer (status, body, the Deny's headers) for a matrix of
tokens and requests, through one real Envoy; and both transports show a policy the same request."""

from __future__ import annotations

import base64
import itertools
import json as json_module
import time
from pathlib import Path

import httpx
import jwt
import pytest

from xgate.demo.upstream import DemoUpstream
from xgate.testing import run_authz_service, run_gateway
from xgate.testing.ports import free_ports

pytestmark = pytest.mark.integration

SECRET = "a-test-secret-of-32-bytes-length"
POLICIES = '''
import json

from xgate.authz import Allow, Deny, claims, header, method, path, rule, source

matrix = rule(
    (claims.groups.contains("admin") & method.any_of("GET", "POST"))
    | (claims.level.equals(3) & path.startswith("/m/reports/") & ~method.equals("DELETE"))
    | (claims.tenant.any_of("acme", "globex") & header("x-tenant").equals("acme") & source.within("127.0.0.0/8"))
    | (claims.level.equals(3) & header("x-tenant").startswith("acme,"))
    | (claims["org"]["role"].equals("owner") & ~source.within("127.0.0.0/8"))
    | (claims.flag.equals(True) & path.equals("/m/flag") & ~header("x-block").exists())
    | (claims.vip.exists() & ~claims["vip"]["banned"].exists() & method.equals("DELETE")),
    deny=Deny(451, body="not for you", headers={"x-why": "matrix", "cache-control": "no-store"}),
)


def in_python(request, claims):
    """The same rule, as a plain function: the control plane cannot lower it, xgate authz runs it."""
    return matrix(request, claims)


def echo(request, claims):
    """What a policy is shown of the request, for the upstream to see."""
    headers = {name: value for name, value in request.headers.items() if name != "x-request-id"}
    seen = [request.method, request.path, request.source, request.route, headers, claims]
    return Allow(headers={"x-seen": json.dumps(seen, sort_keys=True)})
'''


def config(ports: dict[str, int], upstream: int) -> str:
    """Listener grpc asks xgate authz over gRPC, listener http over plain HTTP; every route is on both."""
    key = base64.urlsafe_b64encode(SECRET.encode()).rstrip(b"=").decode()
    ok = "direct_response: {status: 200, body: ok}"
    policies = (
        f'policies: {{lowered: "matrix_policies:matrix", python: "matrix_policies:in_python", '
        f'echo: "matrix_policies:echo"}}, service: "127.0.0.1:{ports["authz"]}"'
    )
    return f"""
plugins:
  jwt:
    providers: [{{name: main, issuer: https://issuer.test, jwks: {{keys: [{{kty: oct, alg: HS256, k: "{key}"}}]}}}}]
  policy: {{{policies}}}
listeners:
  - {{name: grpc, address: 127.0.0.1, port: {ports["grpc"]}}}
  - {{name: http, address: 127.0.0.1, port: {ports["http"]},
      plugins: {{policy: {{{policies}, transport: http, http_service: "127.0.0.1:{ports["authz_http"]}"}}}}}}
upstreams: [{{name: echo, endpoints: ["127.0.0.1:{upstream}"]}}]
routes:
  - {{name: lowered, match: {{headers: [{{name: x-path, exact: lowered}}]}}, {ok},
      plugins: {{jwt: {{provider: main, optional: true}}, policy: {{name: lowered}}}}}}
  - {{name: python, match: {{headers: [{{name: x-path, exact: python}}]}}, {ok},
      plugins: {{jwt: {{provider: main, optional: true}}, policy: {{name: python}}}}}}
  - {{name: echo, match: {{headers: [{{name: x-path, exact: echo}}]}}, upstream: echo,
      plugins: {{jwt: {{provider: main, optional: true}}, policy: {{name: echo}}}}}}
"""


def token(**claims: object) -> str:
    payload = {"iss": "https://issuer.test", "exp": int(time.time()) + 600, **claims}
    return jwt.encode(payload, SECRET, algorithm="HS256")


TOKENS: dict[str, str | None] = {
    "none": None,
    "admin": token(groups=["admin", "x"]),
    "admin-string": token(groups="admin"),  # not a list: contains is false
    "admin-nested-list": token(groups=[["admin"]]),
    "level-3": token(level=3),
    "level-3.0": token(level=3.0),
    "level-string": token(level="3"),
    "level-true": token(level=True),
    "tenant": token(tenant="acme"),
    "tenant-list": token(tenant=["x", "globex"]),
    "tenant-number": token(tenant=1),
    "owner": token(org={"role": "owner"}),
    "org-not-map": token(org="owner"),
    "flag": token(flag=True),
    "flag-1": token(flag=1),
    "null": token(groups=None, level=None, tenant=None),
    "vip-list": token(vip=[1]),
    "vip-null": token(vip=None),
    "vip-banned": token(vip={"banned": False}),
    "vip-object": token(vip={"level": 1}),
}
METHODS = ("GET", "POST", "DELETE")
PATHS = ("/m/reports/q?x=1", "/m/flag", "/m/flag?y", "/other")
HEADERS: dict[str, list[tuple[str, str]]] = {
    "plain": [],
    "tenant": [("x-tenant", "acme")],
    # joined "acme,acme" on both paths: not equal to "acme", starts with "acme," (RBAC's own header matcher
    # would see each value alone)
    "tenant-twice": [("x-tenant", "acme"), ("x-tenant", "acme")],
    "block": [("x-block", "")],
}


@pytest.fixture
def ports() -> dict[str, int]:
    return dict(zip(("grpc", "http", "authz", "authz_http"), free_ports(4), strict=True))


@pytest.fixture
def policies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "matrix_policies.py").write_text(POLICIES)
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.usefixtures("policies")
async def test_lowered_and_python_paths_decide_alike(
    tmp_path: Path, ports: dict[str, int], upstreams: dict[str, DemoUpstream]
) -> None:
    async with (
        run_gateway(config(ports, upstreams["v1"].port), tmp_path / "gw") as gateway,
        run_authz_service(gateway.xds_port, ports["authz"], args=("--http-listen", f"127.0.0.1:{ports['authz_http']}")),
        httpx.AsyncClient() as client,
    ):
        await gateway.wait_synced(gateway.plane.state.applied or "")
        assert gateway.plane.state.warnings == []  # every policy imported by the control plane
        outcomes: dict[tuple[str, ...], tuple[int, str, str | None, str | None, str | None]] = {}
        paths = {"lowered": ports["grpc"], "python over gRPC": ports["grpc"], "python over HTTP": ports["http"]}
        for (name, bearer), method, target, (header_set, extra) in itertools.product(
            TOKENS.items(), METHODS, PATHS, HEADERS.items()
        ):
            seen = []
            for way, port in paths.items():
                headers = [("x-path", way.split()[0]), *extra]
                if bearer is not None:
                    headers.append(("authorization", f"Bearer {bearer}"))
                response = await client.request(method, f"http://127.0.0.1:{port}{target}", headers=headers)
                seen.append(
                    (response.status_code, response.text, response.headers.get("x-why"),
                     response.headers.get("cache-control"), response.headers.get("content-type"))
                )  # fmt: skip
            case = (name, method, target, header_set)
            assert seen[0] == seen[1] == seen[2], f"{case}: {dict(zip(paths, seen, strict=True))}"
            outcomes[case] = seen[0]
        answers = {outcome[:2] for outcome in outcomes.values()}
        assert answers == {(200, "ok"), (451, "not for you")}, answers  # the matrix reaches both decisions
        allowed = {case for case, outcome in outcomes.items() if outcome[0] == 200}
        # Spot checks that the shared answers are the policy's, not two equal mistakes.
        assert ("admin", "GET", "/other", "plain") in allowed
        assert ("admin", "DELETE", "/other", "plain") not in allowed
        assert ("admin-string", "GET", "/other", "plain") not in allowed
        assert ("level-3.0", "POST", "/m/reports/q?x=1", "plain") in allowed
        assert ("level-true", "POST", "/m/reports/q?x=1", "plain") not in allowed
        assert ("tenant-list", "GET", "/other", "tenant") in allowed
        assert ("tenant-list", "GET", "/other", "tenant-twice") not in allowed
        assert ("owner", "GET", "/other", "plain") not in allowed  # the client is on loopback
        assert ("flag", "GET", "/m/flag?y", "plain") in allowed and ("flag", "GET", "/m/flag", "block") not in allowed
        assert ("flag-1", "GET", "/m/flag", "plain") not in allowed
        assert outcomes[("none", "GET", "/other", "plain")][:4] == (451, "not for you", "matrix", "no-store")
        assert ("vip-null", "DELETE", "/other", "plain") in allowed and (
            "vip-list",
            "DELETE",
            "/m/flag",
            "plain",
        ) in allowed
        assert ("vip-banned", "DELETE", "/other", "plain") not in allowed
        assert ("vip-object", "DELETE", "/other", "plain") in allowed
        code, stats = await gateway.envoys[0].admin_get("/stats?filter=rbac")
        assert code == 200 and "rbac.allowed" in stats, stats  # the lowered route's decisions were Envoy's own


@pytest.mark.usefixtures("policies")
async def test_both_transports_show_a_policy_the_same_request(
    tmp_path: Path, ports: dict[str, int], upstreams: dict[str, DemoUpstream]
) -> None:
    async with (
        run_gateway(config(ports, upstreams["v1"].port), tmp_path / "gw") as gateway,
        run_authz_service(gateway.xds_port, ports["authz"], args=("--http-listen", f"127.0.0.1:{ports['authz_http']}")),
        httpx.AsyncClient() as client,
    ):
        await gateway.wait_synced(gateway.plane.state.applied or "")
        for bearer in (None, token(sub="ada", groups=["a", "b"], n=3, big=2**60, f=1.5, o={"k": [None, True]})):
            headers = [
                ("x-path", "echo"),
                ("host", "gw.test"),
                ("x-m", "a"),
                ("x-m", "b"),
                ("x-xgate-policy", "lowered"),
            ]
            if bearer is not None:
                headers.append(("authorization", f"Bearer {bearer}"))
            seen = []
            for listener in ("grpc", "http"):
                response = await client.post(
                    f"http://127.0.0.1:{ports[listener]}/p/a?q=1&r", headers=headers, content=b"body"
                )
                assert response.status_code == 200, response.text
                upstream = response.json()
                # The check's answer did not change the request's framing.
                assert upstream["headers"]["content-length"] == "4", upstream
                seen.append(json_module.loads(upstream["headers"]["x-seen"]))
            assert seen[0] == seen[1], seen
            method, target, source, route, shown, claims = seen[0]
            assert (method, target, source, route) == ("POST", "/p/a?q=1&r", "127.0.0.1", "echo")
            assert shown["x-m"] == "a,b"
            assert "x-xgate-policy" not in shown  # xgate's own header name: shown on neither transport
            assert claims == ({} if bearer is None else {**jwt.decode(bearer, options={"verify_signature": False})})
