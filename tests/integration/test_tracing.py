"""One request, one trace: through a real Envoy with a jwt provider, a Python policy, ext_proc dyeing and a global
limit, the spans of Envoy and of each xgate service (their own processes) reach an OTLP receiver as one trace,
each service's span a child of Envoy's span for that call; the upstream and the access log see the same id."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import jwt
import pytest

from xgate.demo.upstream import DemoUpstream
from xgate.testing import free_port, run_authz_service, run_dyeing_service, run_gateway, run_ratelimit_service
from xgate.testing.gateway import wait_for
from xgate.testing.otlp import OtlpReceiver, ReceivedSpan, run_otlp_receiver

pytestmark = pytest.mark.integration

SECRET = "a-test-secret-of-32-bytes-length"
SERVICES = ("xgate-authz", "xgate-dyeing", "xgate-ratelimit")


def config(ports: dict[str, int], upstream: int, collector: str, access_log: Path) -> str:
    key = base64.urlsafe_b64encode(SECRET.encode()).rstrip(b"=").decode()
    return f"""
plugins:
  tracing: {{collector: "{collector}", sampling: 100}}
  jwt:
    providers:
      - {{name: main, issuer: https://issuer.test, jwks: {{keys: [{{kty: oct, alg: HS256, k: "{key}"}}]}}}}
  policy:
    service: "127.0.0.1:{ports["authz"]}"
    policies: {{members: "trace_policies:members"}}
  dyeing:
    service: "127.0.0.1:{ports["dyeing"]}"
    mode: ext_proc  # the service dyes, and traces (a sticky rule alone would run in Envoy's Lua filter)
    rules: [{{stage: canary, sticky: {{percent: 100, key: {{claim: sub}}}}}}]
  rate_limit: {{service: "127.0.0.1:{ports["ratelimit"]}", timeout: 500ms}}
listeners:
  - name: public
    address: 127.0.0.1
    port: {ports["listener"]}
    access_log: {{path: "{access_log}"}}
upstreams: [{{name: app, endpoints: ["127.0.0.1:{upstream}"]}}]
routes:
  - name: orders
    match: {{path: {{prefix: /orders}}}}
    upstream: app
    plugins:
      jwt: {{provider: main}}
      policy: {{name: members}}
      rate_limit: {{global: {{requests: 100, per: 1h}}}}
"""


POLICY = "from xgate.authz import Allow\ndef members(request, claims):\n    return Allow()\n"


def token(**claims: object) -> str:
    payload = {"iss": "https://issuer.test", "exp": int(time.time()) + 600, **claims}
    return jwt.encode(payload, SECRET, algorithm="HS256")


def _one_trace(spans: Sequence[ReceivedSpan], trace_id: str) -> bool:
    services = {span.service for span in spans if span.trace_id == trace_id}
    return services >= {"xgate-envoy", *SERVICES}


async def test_one_request_is_one_trace_across_envoy_and_every_service(
    upstreams: dict[str, DemoUpstream], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "trace_policies.py").write_text(POLICY)
    monkeypatch.syspath_prepend(str(tmp_path))
    ports = {name: free_port() for name in ("listener", "authz", "dyeing", "ratelimit")}
    access_log = tmp_path / "access.log"
    async with run_otlp_receiver() as receiver:
        # The services export to the receiver (their own processes, configured by OTel's variables); batches
        # leave after 50 ms instead of 5 s.
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        text = config(ports, upstreams["v1"].port, receiver.address, access_log)
        async with (
            run_gateway(text, tmp_path / "gw") as gateway,
            run_authz_service(gateway.xds_port, ports["authz"]),
            run_dyeing_service(gateway.xds_port, ports["dyeing"]),
            run_ratelimit_service(gateway.xds_port, ports["ratelimit"]),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['listener']}") as client,
        ):
            bearer = token(sub="ada")
            answer = await client.get("/orders/1", headers={"authorization": f"Bearer {bearer}"})
            assert answer.status_code == 200, answer.text
            seen = answer.json()["headers"]
            assert seen["x-xgate-stage"] == "canary"  # the dyeing service ran
            version, trace_id, parent_id, flags = seen["traceparent"].split("-")  # what the upstream saw
            assert (version, flags) == ("00", "01")
            await receiver.wait_for(lambda spans: _one_trace(spans, trace_id), what=f"trace {trace_id}")
            _check_parenting(receiver, trace_id, parent_id)
            _check_attributes(receiver.trace(trace_id), bearer)
            line = await _access_log_line(access_log, trace_id)
            assert (line["route"], line["stage"], line["status"]) == ("orders", "canary", 200)
            assert line["upstream_host"] == f"127.0.0.1:{upstreams['v1'].port}"
            assert line["upstream"] == "upstream/app"


def _check_parenting(receiver: OtlpReceiver, trace_id: str, upstream_parent: str) -> None:
    spans = receiver.trace(trace_id)
    by_id = {span.span_id: span for span in spans}
    roots = [span for span in spans if not span.parent_id]
    assert len(roots) == 1 and roots[0].service == "xgate-envoy", [(s.service, s.name, s.parent_id) for s in spans]
    assert roots[0].name == "orders"  # the route names Envoy's span
    assert upstream_parent in by_id and by_id[upstream_parent].service == "xgate-envoy"
    for service in SERVICES:
        (span,) = [span for span in spans if span.service == service]
        parent = by_id.get(span.parent_id)
        # The service's span is a child of Envoy's span for the gRPC call, itself under the request's span.
        assert parent is not None and parent.service == "xgate-envoy", (service, span.parent_id)
        while parent.parent_id:
            parent = by_id[parent.parent_id]
        assert parent is roots[0]
        assert span.kind == 2  # SERVER


def _check_attributes(spans: list[ReceivedSpan], bearer: str) -> None:
    by_service = {span.service: span.attributes for span in spans if span.service in SERVICES}
    authz = by_service["xgate-authz"]
    decided = (authz["xgate.route"], authz["xgate.policy"], authz["xgate.authz.decision"])
    assert decided == ("orders", "members", "allow")
    assert by_service["xgate-dyeing"]["xgate.stage"] == "canary"
    limit = by_service["xgate-ratelimit"]
    assert (limit["xgate.route"], limit["xgate.ratelimit.outcome"], limit["xgate.ratelimit.limit"]) == (
        "orders",
        "ok",
        "100/hour",
    )
    for span in spans:  # never a token, in any span of the trace
        assert bearer not in json.dumps(span.attributes) and bearer.split(".")[2] not in json.dumps(span.attributes)


async def _access_log_line(path: Path, trace_id: str) -> dict[str, object]:
    found: list[dict[str, object]] = []

    def logged() -> bool:
        if path.exists():
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            found[:] = [line for line in lines if line.get("trace_id") == trace_id]
        return bool(found)

    await wait_for(logged, 10, f"an access log line with trace {trace_id}")  # Envoy flushes it within 1 s
    return found[0]


async def test_each_route_samples_its_own_share(upstreams: dict[str, DemoUpstream], tmp_path: Path) -> None:
    """What the upstream sees in `traceparent`'s flags: 1% of the requests sampled on a route at 1% (Envoy draws
    a route's sampling from the request id modulo 10,000: a per-million fraction sampled them all), all at 100%,
    none on a route with tracing off; a caller's trace is continued. The access log keeps its own share."""
    port, access_log = free_port(), tmp_path / "access.log"
    text = f"""
plugins:
  tracing: {{collector: "127.0.0.1:{free_port()}", sampling: 100}}
listeners: [{{name: public, address: 127.0.0.1, port: {port}, access_log: {{path: "{access_log}", sampling: 10}}}}]
upstreams: [{{name: app, endpoints: ["127.0.0.1:{upstreams["v1"].port}"]}}]
routes:
  - {{name: rare, match: {{path: {{prefix: /rare}}}}, upstream: app, plugins: {{tracing: {{sampling: 1}}}}}}
  - {{name: all, match: {{path: {{prefix: /all}}}}, upstream: app}}
  - {{name: never, match: {{path: {{prefix: /never}}}}, upstream: app, plugins: {{tracing: false}}}}
"""
    async with (
        run_gateway(text, tmp_path / "gw"),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):

        async def sampled(path: str, headers: dict[str, str] | None = None) -> int:
            answers = [await client.get(path, headers=headers) for _ in range(200)]
            return sum(answer.json()["headers"]["traceparent"].endswith("-01") for answer in answers)

        assert await sampled("/all") == 200
        assert await sampled("/never") == 0
        assert await sampled("/rare") < 20  # about 2 in 200; before the fix, 200
        # A caller's trace is continued (its trace id, Envoy's span under the caller's); whether this hop records
        # is the caller's "not sampled" or else the route's sampling: a client cannot force traces on Envoy.
        for path, flag, recorded in (("/all", "01", "01"), ("/all", "00", "00"), ("/never", "01", "00")):
            caller = {"traceparent": f"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-{flag}"}
            _, trace_id, parent, flags = (
                (await client.get(path, headers=caller)).json()["headers"]["traceparent"].split("-")
            )
            assert (trace_id, flags) == ("0af7651916cd43dd8448eb211c80319c", recorded), (path, flag)
            assert parent != "b7ad6b7169203331"  # the upstream's parent is Envoy's span, child of the caller's

    def lines() -> int:
        return len(access_log.read_text().splitlines()) if access_log.exists() else 0

    await wait_for(lambda: lines() >= 10, 10, "access log lines")  # about 60 of 603 requests
    assert lines() < 200
