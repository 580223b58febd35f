"""A revision's journey as spans (in memory here; tests/integration/test_revision_trace.py sends them from a real
control plane to a real OTLP receiver)."""

from __future__ import annotations

import time

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from xgate.telemetry.journey import RevisionJourneys


def _journeys(timeout: float = 30.0) -> tuple[RevisionJourneys, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return RevisionJourneys(provider.get_tracer("test"), timeout=timeout), exporter


def _by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        found.setdefault(span.name, []).append(span)
    return found


def test_a_revision_is_one_trace_with_a_span_per_answer() -> None:
    journeys, exporter = _journeys()
    seen = time.perf_counter() - 0.05
    journeys.published("r1", seen)
    journeys.pushed("r1", "services", [("authz", "a1")], have=[("dyeing", "d1")])
    assert exporter.get_finished_spans()[-1].name == "ack dyeing"  # it held r1 already
    journeys.answered("authz", "a1", "r1")
    journeys.pushed("r1", "envoys", [("envoy", "e1"), ("envoy", "e2")])
    journeys.answered("envoy", "e1", "r1")
    assert not any(span.name == "revision" for span in exporter.get_finished_spans())  # e2 still on its way
    journeys.answered("envoy", "e2", "r1", nack="missing ]: [")
    spans = exporter.get_finished_spans()
    named = _by_name(spans)
    (root,) = named["revision"]
    assert {span.context.trace_id for span in spans} == {root.context.trace_id}
    assert root.attributes is not None and root.attributes["xgate.revision"] == "r1"
    assert root.start_time is not None and root.start_time <= time.time_ns() - 40_000_000  # from when it was seen
    (validate,) = named["validate and translate"]
    assert validate.parent is not None and validate.parent.span_id == root.context.span_id
    phases = {span.name: span for span in spans if span.name.startswith("push to")}
    assert set(phases) == {"push to services", "push to envoys"}
    acks = named["ack envoy"] + named["ack authz"] + named["ack dyeing"]
    assert len(acks) == 4
    nacked = [span for span in acks if span.status.status_code == StatusCode.ERROR]
    assert [(s.attributes or {}).get("xgate.node") for s in nacked] == ["e2"]
    assert nacked[0].status.description == "missing ]: [" and nacked[0].events[0].name == "nack"
    for ack in acks:
        assert ack.parent is not None and ack.parent.span_id in {p.context.span_id for p in phases.values()}


def test_a_newer_revision_ends_the_older_journey() -> None:
    journeys, exporter = _journeys()
    journeys.published("r1", time.perf_counter())
    journeys.pushed("r1", "envoys", [("envoy", "e1")])
    journeys.published("r2", time.perf_counter())
    (root,) = [span for span in exporter.get_finished_spans() if span.name == "revision"]
    assert root.attributes is not None and root.attributes["xgate.superseded_by"] == "r2"
    journeys.answered("envoy", "e1", "r1")  # too late for r1's trace: nothing happens
    journeys.pushed("r2", "envoys", [])
    assert [
        (s.attributes or {}).get("xgate.revision") for s in exporter.get_finished_spans() if s.name == "revision"
    ] == [
        "r1",
        "r2",
    ]


def test_refusals_end_in_error_with_the_reasons() -> None:
    journeys, exporter = _journeys()
    journeys.refused_by_control_plane("r0", "file", time.perf_counter(), ["gw.yaml:3: route a: upstream 'x' missing"])
    journeys.published("r1", time.perf_counter())
    journeys.pushed("r1", "services", [("authz", "a1")])
    journeys.refused_by_service("r1", "authz", "a1", "policy p: No module named 'p'")
    roots = [span for span in exporter.get_finished_spans() if span.name == "revision"]
    assert [root.status.status_code for root in roots] == [StatusCode.ERROR, StatusCode.ERROR]
    assert roots[0].events[0].attributes == {"message": "gw.yaml:3: route a: upstream 'x' missing"}
    assert roots[1].status.description == "authz a1 refused it: policy p: No module named 'p'"


def test_a_silent_consumer_ends_the_journey_at_its_deadline() -> None:
    journeys, exporter = _journeys(timeout=0.0)
    journeys.published("r1", time.perf_counter())
    journeys.pushed("r1", "envoys", [("envoy", "e1")])
    journeys.published("r2", time.perf_counter())  # expires r1 (no event loop here to do it on time)
    (ack,) = [span for span in exporter.get_finished_spans() if span.name == "ack envoy"]
    assert ack.status.status_code == StatusCode.ERROR and "no answer within" in (ack.status.description or "")
