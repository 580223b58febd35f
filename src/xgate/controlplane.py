"""The control plane's core: merge what the sources say, compile it, keep the last good snapshot, report."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from google.protobuf.message import Message

from xgate.config.load import ConfigSet
from xgate.config.schema import Route
from xgate.discovery import SnapshotCache
from xgate.discovery.rollout import Refusal, Rollout
from xgate.errors import ConfigError, ConfigIssue
from xgate.guard import Served, held_back_message, hold_back
from xgate.heap import DeferredFreeze, gc_paused
from xgate.incremental import IncrementalCompiler, route_changes
from xgate.ir.model import GatewayIR
from xgate.ir.policies import PolicyResolver
from xgate.pipeline import Compiled, compile_config
from xgate.plugins.jwt import JwtSettings, jwks_files
from xgate.sources.revision import Revision
from xgate.telemetry.fleet import FleetStats
from xgate.telemetry.journey import RevisionJourneys
from xgate.translate import Resources, Translator

log = logging.getLogger("xgate.controlplane")
# Above this many routes, compiling runs in a worker thread so the event loop keeps serving ADS meanwhile.
_THREAD_ABOVE_ROUTES = 2000
# When both are used, the file is the local override: its objects win over etcd's of the same kind and name.
SOURCE_PRECEDENCE = ("file", "etcd")
# After a full compile, the collect-and-freeze waits this long: the streams have sent the snapshot by then.
_FREEZE_DELAY = 0.5


def _log_applied(revision: str, what: str, compile_ms: float, total_ms: float, new_warnings: list[str]) -> None:
    log.info("applied revision %s: %s (compile %.1f ms, read to applied %.1f ms)", revision, what, compile_ms, total_ms)
    for warning in new_warnings:
        log.warning("not served as configured: %s", warning)


@dataclass
class ConfigState:
    """What is served, and what is not: rejected revisions (per source) and objects held back."""

    applied: str | None = None  # the revision the Envoys are served
    applied_at: float | None = None
    rejected: str | None = None
    rejected_at: float | None = None
    issues: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Served as configured, but worth knowing (a policy run in Python because the control plane could not
    # import it to lower it): shown by status, never a failure.
    notes: list[str] = field(default_factory=list)
    refusal: Refusal | None = None  # the last revision a service refused (so no Envoy got it), until one passes

    def to_dict(self) -> dict[str, Any]:
        refusal = self.refusal
        return {
            "applied_revision": self.applied,
            "applied_at": self.applied_at,
            "rejected_revision": self.rejected,
            "rejected_at": self.rejected_at,
            "issues": self.issues,
            "objects_not_served": self.warnings,
            "notes": self.notes,
            "refused": None
            if refusal is None
            else {
                "revision": refusal.revision,
                "service": refusal.service,
                "node": refusal.node,
                "message": refusal.message,
                "at": refusal.at,
            },
        }


class ControlPlane:
    """Applies each good revision to the cache; a bad one is reported and the last good snapshot stays.

    A file revision is all or nothing. etcd's objects apply one by one: an invalid object keeps its last
    good version (or is left out) and is reported, the rest applies. A revision that would leave Envoys
    serving nothing is held back and reported like a rejection, unless `allow_empty` (see xgate.guard).
    """

    def __init__(
        self, cache: SnapshotCache | None = None, *, allow_empty: bool = False, service_timeout: float = 5.0
    ) -> None:
        self.cache = cache or SnapshotCache()
        self.rollout = Rollout(
            self.cache, service_timeout=service_timeout, on_served=self._on_served, on_refused=self._on_refused
        )
        self.allow_empty = allow_empty
        self._served: Served | None = None
        self.state = ConfigState()
        self.health: dict[str, Callable[[], dict[str, Any]]] = {}
        self._translator = Translator()
        self._policies = PolicyResolver()  # imports the policy modules the config names (ir/policies.py)
        self._inputs: dict[str, Revision] = {}
        self._rejections: dict[str, tuple[str, list[str]]] = {}
        # Valid revisions the guard held back: they join the next merge, which another source may complete
        # (a file of routes read before the etcd that has the listeners).
        self._held: dict[str, Revision] = {}
        self._served_routes: dict[str, Route] = {}
        self._incremental = IncrementalCompiler()
        self._freeze = DeferredFreeze(_FREEZE_DELAY)  # after full compiles: millions of objects at 10k routes
        self._read_files: dict[str, str] = {}  # files the served config read (jwks_file), with their digest
        self.journeys: RevisionJourneys | None = None
        self.fleet: FleetStats | None = None  # what Envoys and services say of their fail-open paths and JWKS

    def trace_revisions(self, journeys: RevisionJourneys) -> None:
        """Record each revision's journey (seen, validated, pushed, ACKed or NACKed by each consumer) as a trace."""
        self.journeys = self.rollout.journeys = journeys
        self.cache.status.on_revision = lambda proxy, revision, nack: journeys.answered(
            proxy.role, proxy.node_id or proxy.peer, revision, nack
        )

    def read_files(self) -> dict[str, str]:
        """Files the served config read besides itself, path -> digest of what was read (sources.watched)."""
        return self._read_files

    async def reread(self, label: str) -> None:
        """Compile the served inputs again in full: a file they read changed. The revision gets `label`."""
        source = next((name for name in SOURCE_PRECEDENCE if name in self._inputs), None)
        if source is not None:
            served = self._inputs[source]
            label = f"{served.revision.split('~')[0]}~{label}"
            again = replace(served, revision=label, seen_at=time.perf_counter(), changes=None)
            await self.on_revision(again, source, full=True)

    async def on_revision(self, revision: Revision, source: str = "file", full: bool = False) -> None:
        started = time.perf_counter()
        self._held.pop(source, None)
        if revision.error is not None or revision.config is None:
            if revision.error is not None:
                self._reject(source, revision.revision, revision.error, revision.seen_at)
            return
        inputs = {**self._inputs, **self._held, source: revision}
        if len(inputs) == 1 and not full and self._apply_changes(revision, source, started):
            return
        config, conflicts = merge_inputs(inputs)
        lenient = "etcd" in inputs
        combined = "+".join(inputs[name].revision for name in SOURCE_PRECEDENCE if name in inputs)
        try:
            compiled = await self._compile(config, combined, lenient)
        except ConfigError as exc:
            self._reject(source, revision.revision, exc, revision.seen_at)
            return
        served = {route.route.name: route.route for ir in compiled.ir.listeners for route in ir.routes}
        if not self._serve(source, revision, combined, serialized_routes(compiled.resources), served):
            self._held[source] = revision
            return
        self._inputs = inputs
        for name in (source, *self._held):
            self._rejections.pop(name, None)
        self._held.clear()
        self._read_files = {
            path: digest
            for listener in compiled.ir.listeners
            if isinstance(settings := listener.defaults.get("jwt"), JwtSettings)
            for path, digest in jwks_files(settings).items()
        }
        if len(inputs) == 1:
            await self._reset_incremental(config, compiled)
        else:
            self._incremental.clear()
        self._freeze.soon()
        warnings = [str(w) for rev in inputs.values() for w in rev.warnings]
        warnings += conflicts + [str(issue) for issue in compiled.ir.issues]
        self._publish(combined, warnings, compiled.ir, started, revision)

    async def _reset_incremental(self, config: ConfigSet, compiled: Compiled) -> None:
        """The fast path takes the full compile's state. At 10,000 routes that is 120-230 ms of Python, which on
        the event loop kept every stream from writing the new snapshot (bench/consumers.py): there, the streams
        get their turn first and the reset runs in a worker thread (sources wait for this revision meanwhile, so
        nothing else touches the compiler)."""
        if len(config.routes) <= _THREAD_ABOVE_ROUTES:
            self._incremental.reset(config, compiled.ir, compiled.context, compiled.resources)
            return
        await asyncio.sleep(0)
        await asyncio.to_thread(self._incremental.reset, config, compiled.ir, compiled.context, compiled.resources)

    def _apply_changes(self, revision: Revision, source: str, started: float) -> bool:
        """The fast path for route-only changes; False: compile in full."""
        assert revision.config is not None
        if revision.config.issues:
            return False  # objects that failed validation: the full compile reports (a file: refuses) them
        previous = self._inputs.get(source)
        # After a refused revision, a source's own list of changes (etcd's) starts from that one, not from
        # what is served: compare with the served revision instead.
        changes = revision.changes if source not in self._rejections else None
        if changes is None and previous is not None and previous.config is not None:
            changes = route_changes(previous.config, revision.config)
        if changes is None or len(changes) >= len(self._incremental.served):
            return False  # (a change of every route may remove them all: the guard sees it in a full compile)
        with gc_paused():
            result = self._incremental.apply(revision.config, changes)
        if result is None:
            return False
        resources, issues = result
        if not self._serve(source, revision, revision.revision, resources, self._incremental.served):
            return True
        self._inputs = {source: revision}
        self._rejections.pop(source, None)
        warnings = [str(w) for w in revision.warnings] + [str(issue) for issue in issues]
        self._publish(revision.revision, warnings, None, started, revision, len(changes))
        return True

    def _serve(self, source: str, revision: Revision, combined: str, resources: Resources, routes: Any) -> bool:
        """Make `resources` the snapshot, unless the guard holds them back (then report it and return False)."""
        after = Served(listeners=len(resources.listeners), routes=len(routes))
        reason = None if self.allow_empty else hold_back(self._served, after)
        if reason is not None:
            self._incremental.clear()  # in case it holds the refused change (it cannot: see _apply_changes)
            where = revision.config.source if revision.config is not None else source
            held = ConfigError([ConfigIssue(where, "document", "", held_back_message(reason))])
            self._reject(source, revision.revision, held, revision.seen_at)
            return False
        self._served = after
        self._served_routes = routes
        self.rollout.publish(resources, combined, revision.seen_at)
        return True

    def _publish(
        self,
        combined: str,
        warnings: list[str],
        ir: GatewayIR | None,
        started: float,
        revision: Revision,
        changed: int = 0,
    ) -> None:
        previous_warnings, previous_notes = self.state.warnings, self.state.notes
        notes = list(self._policies.notes)  # policies the last full compile could not look at
        self.state = replace(self.state, warnings=warnings, notes=notes)
        self._refresh_rejections()
        now = time.perf_counter()
        if ir is not None:
            routes = sum(len(listener.routes) for listener in ir.listeners)
            what = f"{len(ir.listeners)} listeners, {routes} routes, {len(ir.upstreams)} upstreams"
        else:
            what = f"{changed} route change{'s' if changed != 1 else ''} applied incrementally"
        new_warnings = sorted(set(warnings) - set(previous_warnings))
        for note in sorted(set(notes) - set(previous_notes)):
            log.info("note: %s", note)
        # Logged once the streams woken by the new snapshot have had their turn: a log line costs 0.15 ms,
        # about a tenth of a small change's way from the source to every Envoy.
        asyncio.get_running_loop().call_soon(
            _log_applied,
            combined,
            what,
            (now - started) * 1000,
            (now - (revision.seen_at or started)) * 1000,
            new_warnings,
        )

    async def _compile(self, config: ConfigSet, revision: str, lenient: bool) -> Compiled:
        arguments = (config, revision, self._translator, lenient, self._served_routes, self._policies)
        if len(config.routes) > _THREAD_ABOVE_ROUTES:
            return await asyncio.to_thread(compile_config, *arguments)
        return compile_config(*arguments)

    def _on_served(self, revision: str) -> None:
        """The Envoys are being sent `revision` (the services have what it names)."""
        self.state.applied, self.state.applied_at = revision, time.time()
        if self.state.refusal is not None and self.state.refusal.revision != revision:
            self.state.refusal = None

    def _on_refused(self, refusal: Refusal) -> None:
        self.state.refusal = refusal

    def _reject(self, source: str, revision: str, error: ConfigError, seen_at: float = 0.0) -> None:
        self._rejections[source] = (revision, [str(issue) for issue in error.issues])
        if self.journeys is not None:
            self.journeys.refused_by_control_plane(revision, source, seen_at, self._rejections[source][1])
        self.state.rejected_at = time.time()
        self._refresh_rejections()
        log.error(
            "rejected %s revision %s; still serving %s\n%s",
            source,
            revision or "(unreadable)",
            self.state.applied or "nothing",
            error,
        )

    def _refresh_rejections(self) -> None:
        self.state.rejected = ",".join(rev for rev, _ in self._rejections.values()) or None
        self.state.issues = [issue for _, issues in self._rejections.values() for issue in issues]
        if not self._rejections:
            self.state.rejected_at = None

    def served_compiler(self) -> Callable[[], Compiled] | None:
        """Compiles the config served now once more (`xgate explain --admin`); safe in a worker thread, as it holds
        this moment's inputs, not the plane. None before anything is served."""
        inputs, fallback = self._inputs, dict(self._served_routes)
        if not inputs:
            return None

        def compile_served() -> Compiled:
            config, _ = merge_inputs(inputs)
            return compile_config(config, lenient="etcd" in inputs, fallback=fallback)

        return compile_served

    def report(self) -> dict[str, Any]:
        sources = {name: health() for name, health in self.health.items()}
        report = {"config": self.state.to_dict(), "sources": sources, **self.cache.status.report(self.cache.snapshot)}
        if self.fleet is not None:
            report["fleet"] = self.fleet.report()
        return report


def serialized_routes(resources: Resources) -> Resources:
    """`resources` with each route configuration serialized as the snapshot would serialize it: the snapshot then
    keeps the bytes, not the message (6 MB at 10,000 routes, until the next change)."""
    routes: dict[str, Message | bytes] = {
        name: config if isinstance(config, bytes) else config.SerializeToString(deterministic=True)
        for name, config in resources.routes.items()
    }
    return replace(resources, routes=routes)


def merge_inputs(inputs: Mapping[str, Revision]) -> tuple[ConfigSet, list[str]]:
    """One ConfigSet from every source; where two define the same object the first in SOURCE_PRECEDENCE wins,
    and the conflict is reported."""
    ordered = [(name, inputs[name].config) for name in SOURCE_PRECEDENCE if name in inputs]
    configs = [(name, config) for name, config in ordered if config is not None]
    if len(configs) == 1:
        return configs[0][1], []
    conflicts: list[str] = []
    chosen: dict[tuple[str, str], tuple[str, Any, str]] = {}
    plugins: dict[str, Any] = {}
    plugin_from: dict[str, str] = {}
    for name, config in configs:
        for kind, objects in config.objects():
            for obj in objects:
                key = (kind, obj.name)
                where = config.source_of(kind, obj.name).source
                if key in chosen:
                    winner = chosen[key]
                    conflicts.append(
                        f"{kind} {obj.name}: defined in {winner[2]} and in {where}; the {winner[0]} version is served"
                    )
                    continue
                chosen[key] = (name, obj, where)
        for plugin, settings in config.plugins.items():
            if plugin in plugins:
                conflicts.append(
                    f"plugin {plugin}: defaults set by {plugin_from[plugin]} and {name}; "
                    f"{plugin_from[plugin]}'s are used"
                )
                continue
            plugins[plugin], plugin_from[plugin] = settings, name
    by_kind: dict[str, list[Any]] = {"listener": [], "upstream": [], "route": [], "secret": []}
    for (kind, _), (_, obj, _) in chosen.items():
        by_kind[kind].append(obj)
    merged = ConfigSet(
        listeners=tuple(by_kind["listener"]),
        upstreams=tuple(by_kind["upstream"]),
        routes=tuple(by_kind["route"]),
        plugins=plugins,
        secrets=tuple(by_kind["secret"]),
        source="merged",
        sources={key: where for key, (_, _, where) in chosen.items()},
        issues=tuple(issue for _, config in configs for issue in config.issues),
    )
    return merged, conflicts


__all__ = ["ConfigState", "ControlPlane", "merge_inputs"]
