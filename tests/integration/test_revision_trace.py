"""A config change is a trace: saved once, it reaches an OTLP receiver as one trace from the real control plane,
with a span for the authz service's ACK and one per Envoy's ACK; a change the service refuses ends in ERROR, the
service's span carrying its NACK's message."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

from xgate.demo.upstream import DemoUpstream
from xgate.sources.revision import revision_of
from xgate.telemetry import RevisionJourneys, tracer_provider
from xgate.testing import free_port, run_authz_service, run_gateway, write_atomic
from xgate.testing.otlp import ReceivedSpan, run_otlp_receiver

pytestmark = pytest.mark.integration


def config(port: int, authz: int, upstream: int, policy: str) -> str:
    return f"""
plugins:
  policy: {{service: "127.0.0.1:{authz}", policies: {{gate: "{policy}"}}}}
listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]
upstreams: [{{name: app, endpoints: ["127.0.0.1:{upstream}"]}}]
routes:
  - {{name: guarded, upstream: app, plugins: {{policy: {{name: gate}}}}}}
"""


def _journey(spans: Sequence[ReceivedSpan], revision: str) -> list[ReceivedSpan]:
    roots = [s for s in spans if s.name == "revision" and s.attributes.get("xgate.revision") == revision]
    return [s for s in spans if roots and s.trace_id == roots[0].trace_id]


async def test_a_change_is_one_trace_with_a_span_per_ack_and_the_nack_message(
    upstreams: dict[str, DemoUpstream], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "gate_policies.py").write_text("from xgate.authz import Allow\ndef a(r, c):\n    return Allow()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    port, authz = free_port(), free_port()
    first = config(port, authz, upstreams["v1"].port, "gate_policies:a")
    async with (
        run_otlp_receiver() as receiver,
        run_gateway(first, tmp_path / "gw", envoys=2) as gateway,
        run_authz_service(gateway.xds_port, authz),
    ):
        provider = tracer_provider("xgate-controlplane", OTLPSpanExporter(endpoint=receiver.endpoint, insecure=True))
        gateway.plane.trace_revisions(RevisionJourneys(provider.get_tracer("xgate.controlplane")))
        assert gateway.config_path is not None
        # A new policy and a new route: the service gets the policy first, then the Envoys the route.
        second = first.replace('gate: "gate_policies:a"', 'gate: "gate_policies:a", b: "gate_policies:a"')
        second += "  - {name: other, match: {path: {prefix: /other}}, upstream: app, plugins: {policy: {name: b}}}\n"
        revision = await gateway.apply(second)
        await receiver.wait_for(lambda spans: _complete(_journey(spans, revision)), what=f"revision {revision}")
        spans = _journey(receiver.spans, revision)
        assert {span.service for span in spans} == {"xgate-controlplane"}
        by_id = {span.span_id: span for span in spans}
        (root,) = [span for span in spans if not span.parent_id]
        assert root.name == "revision" and root.status_code != 2
        phases = {by_id[span.parent_id].name for span in spans if span.name.startswith("ack ")}
        assert phases == {"push to services", "push to envoys"}
        nodes = sorted(str(span.attributes["xgate.node"]) for span in spans if span.name == "ack envoy")
        assert nodes == ["test-envoy-0", "test-envoy-1"]
        (service_ack,) = [span for span in spans if span.name == "ack authz"]
        ack_envoys = [span for span in spans if span.name == "ack envoy"]
        # Services first, then the Envoys: the route never names a policy the service does not hold.
        assert service_ack.end <= min(span.start for span in ack_envoys)
        assert all(root.start <= span.start and span.end <= root.end for span in spans)

        # A policy the service cannot import: it NACKs, no Envoy gets the revision, the trace says why.
        third = second.replace('b: "gate_policies:a"', 'b: "no_such_module:a"')
        write_atomic(gateway.config_path, third)
        refused = revision_of(third)
        await receiver.wait_for(lambda spans: _ended(_journey(spans, refused)), what=f"revision {refused}")
        spans = _journey(receiver.spans, refused)
        (root,) = [span for span in spans if not span.parent_id]
        assert root.status_code == 2 and "refused it" in root.status_message  # ERROR
        (nack,) = [span for span in spans if span.name == "ack authz"]
        assert nack.status_code == 2 and "no_such_module" in nack.status_message
        assert "nack" in nack.events
        assert not [span for span in spans if span.name == "push to envoys"]
        provider.shutdown()


def _complete(spans: list[ReceivedSpan]) -> bool:
    return _ended(spans) and len([span for span in spans if span.name == "ack envoy"]) == 2


def _ended(spans: list[ReceivedSpan]) -> bool:
    return any(span.name == "revision" for span in spans)


async def test_the_control_plane_traces_when_the_environment_says_so(tmp_path: Path) -> None:
    """`xgate controlplane` as deployed: OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_SERVICE_NAME are all it takes."""
    text = "listeners: [{name: l, port: 0}]\nroutes: [{name: r, direct_response: {status: 200}}]\n"
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    async with run_otlp_receiver() as receiver:
        environment = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_SERVICE_NAME": "cp-under-test",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "xgate", "--log-format", "json", "controlplane", "-f", str(path),
            "--xds", "127.0.0.1:0", "--status", "127.0.0.1:0",
            env=environment, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            revision = revision_of(text)
            await receiver.wait_for(
                lambda spans: any(
                    span.service == "cp-under-test" and span.attributes.get("xgate.revision") == revision
                    for span in spans
                ),
                what="the control plane's revision trace",
            )
        finally:
            process.terminate()
            _, err = await asyncio.wait_for(process.communicate(), 10)
        lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
        assert any(line["message"].startswith(f"applied revision {revision}") for line in lines), err
