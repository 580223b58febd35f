"""A config revision's journey as one trace: seen (file or etcd), validated and translated, pushed to the services
and then to the Envoys, ACKed or NACKed by each, so "where did my change go, and how long did each hop take?"
is answered in the same tool as the requests' traces.

    revision <R>                          root: from the change being seen to the last answer
    ├── validate and translate            seen -> ready to publish
    ├── push to services                  staged -> every service instance answered (only when R names some)
    │   └── ack authz <node> ...          one per instance: sent -> ACK, or ERROR with the NACK's message
    └── push to envoys                    served -> every Envoy answered
        └── ack envoy <node> ...

A journey ends when every consumer connected when it was pushed has answered, when a newer revision supersedes
it (the consumers still waiting get that one instead), after `timeout`, or at once when the control plane or a
service refuses the revision (ERROR, with the reasons as events). At most `keep` journeys are open at once.
No I/O here: the spans go to whatever the tracer exports to, in its own batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode, Tracer

_MAX_EVENTS = 20  # issues listed on a refused revision; the rest are counted


def wall_ns(perf: float) -> int:
    """A time.perf_counter() reading as nanoseconds since the epoch (what span times are)."""
    return time.time_ns() - int((time.perf_counter() - perf) * 1e9)


Consumer = tuple[str, str]  # (kind: envoy, authz, dyeing, ratelimit; node id or peer)


@dataclass
class _Phase:
    span: Span
    waiting: dict[Consumer, Span] = field(default_factory=dict)


@dataclass
class _Journey:
    revision: str
    root: Span
    phases: dict[str, _Phase] = field(default_factory=dict)
    deadline: float = 0.0

    @property
    def waiting(self) -> int:
        return sum(len(phase.waiting) for phase in self.phases.values())


class RevisionJourneys:
    """Records journeys with `tracer`; the control plane, the rollout and the ADS status call the methods."""

    def __init__(self, tracer: Tracer, *, timeout: float = 30.0, keep: int = 16) -> None:
        self._tracer = tracer
        self.timeout = timeout
        self._keep = keep
        self._open: dict[str, _Journey] = {}

    def _root(self, revision: str, start: int, **attributes: str) -> Span:
        return self._tracer.start_span(
            "revision", start_time=start, attributes={"xgate.revision": revision, **attributes}
        )

    def _child(
        self, parent: Span, name: str, start: int | None = None, attributes: dict[str, str | bool] | None = None
    ) -> Span:
        return self._tracer.start_span(
            name, context=trace.set_span_in_context(parent), start_time=start, attributes=attributes
        )

    def refused_by_control_plane(self, revision: str, source: str, seen_at: float, issues: Iterable[str]) -> None:
        """A revision the control plane refused or held back: a trace of one span, in ERROR, with the issues."""
        start = wall_ns(seen_at) if seen_at else time.time_ns()
        root = self._root(revision or "(unreadable)", start, **{"xgate.source": source})
        listed = list(issues)
        for issue in listed[:_MAX_EVENTS]:
            root.add_event("issue", {"message": issue})
        root.set_attribute("xgate.issues", len(listed))
        root.set_status(Status(StatusCode.ERROR, listed[0] if listed else "refused"))
        root.end()

    def published(self, revision: str, seen_at: float) -> None:
        """The control plane publishes `revision`: its trace starts (at `seen_at`, a perf_counter reading)."""
        self._expire()
        for older in list(self._open.values()):
            self._finish(older, superseded_by=revision)
        start = wall_ns(seen_at) if seen_at else time.time_ns()
        root = self._root(revision, start)
        self._child(root, "validate and translate", start).end()
        self._open[revision] = _Journey(revision, root, deadline=time.monotonic() + self.timeout)
        # Nothing else may come for a while: the journey still ends at its deadline (without an event loop, as
        # in unit tests, the next publish expires it).
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().call_later(self.timeout, self._expire)

    def pushed(self, revision: str, phase: str, consumers: Iterable[Consumer], have: Iterable[Consumer] = ()) -> None:
        """`revision` goes to `consumers` ("services" or "envoys" phase); those in `have` already hold it."""
        journey = self._open.get(revision)
        if journey is None:
            return
        span = self._child(journey.root, f"push to {phase}")
        state = journey.phases[phase] = _Phase(span)
        for kind, node in have:
            unchanged: dict[str, str | bool] = {"xgate.kind": kind, "xgate.node": node, "xgate.unchanged": True}
            self._child(span, f"ack {kind}", attributes=unchanged).end()
        for kind, node in consumers:
            state.waiting[(kind, node)] = self._child(
                span, f"ack {kind}", attributes={"xgate.kind": kind, "xgate.node": node}
            )
        self._settle(journey)

    def answered(self, kind: str, node: str, revision: str, nack: str | None = None) -> None:
        """A consumer ACKed all of `revision` (`nack` None) or NACKed it with that message."""
        journey = self._open.get(revision)
        if journey is None:
            return
        for phase in journey.phases.values():
            span = phase.waiting.pop((kind, node), None)
            if span is None:
                continue
            if nack is not None:
                span.add_event("nack", {"message": nack})
                span.set_status(Status(StatusCode.ERROR, nack))
            span.end()
        self._settle(journey)

    def refused_by_service(self, revision: str, kind: str, node: str, message: str) -> None:
        """A service NACKed `revision`, so no Envoy gets it: the journey ends in ERROR."""
        journey = self._open.get(revision)
        if journey is None:
            return
        self.answered(kind, node, revision, message)
        journey = self._open.get(revision)
        if journey is not None:
            journey.root.set_status(Status(StatusCode.ERROR, f"{kind} {node} refused it: {message}"))
            self._finish(journey)

    def _settle(self, journey: _Journey) -> None:
        """Close finished phases; end the journey when nothing is awaited."""
        for phase in journey.phases.values():
            if not phase.waiting and phase.span.is_recording():
                phase.span.end()
        if "envoys" in journey.phases and journey.waiting == 0:
            self._finish(journey)

    def _finish(self, journey: _Journey, *, superseded_by: str | None = None, timed_out: bool = False) -> None:
        for phase in journey.phases.values():
            for span in phase.waiting.values():
                if superseded_by is not None:
                    span.set_attribute("xgate.superseded_by", superseded_by)
                if timed_out:
                    span.set_status(Status(StatusCode.ERROR, f"no answer within {self.timeout:g} s"))
                span.end()
            phase.waiting.clear()
            if phase.span.is_recording():
                phase.span.end()
        if superseded_by is not None:
            journey.root.set_attribute("xgate.superseded_by", superseded_by)
        journey.root.end()
        self._open.pop(journey.revision, None)

    def _expire(self) -> None:
        now = time.monotonic()
        for journey in list(self._open.values()):
            if journey.deadline <= now:
                self._finish(journey, timed_out=True)
        while len(self._open) >= self._keep:
            self._finish(next(iter(self._open.values())), timed_out=True)
