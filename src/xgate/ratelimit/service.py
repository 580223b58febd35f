"""envoy.service.ratelimit.v3 RateLimitService on grpc.aio: descriptors -> limits -> one decision each.

Every request gets an answer: a backend that fails or does not answer within `timeout` seconds yields the
failure mode's answer ("open": OK, "closed": OVER_LIMIT) and an `errors` count; nothing raises to gRPC.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import grpc
from envoy.config.core.v3 import base_pb2 as core_v3
from envoy.service.ratelimit.v3 import rls_pb2 as rls_v3
from envoy.service.ratelimit.v3 import rls_pb2_grpc

from xgate.grpcguard import AsyncMalformedGuard
from xgate.listen import bind_grpc, grpc_options
from xgate.ratelimit.algorithms import Backend, Decision, MemoryBackend
from xgate.ratelimit.limits import LimitTable, Match
from xgate.ratelimit.redis_backend import RedisBackend
from xgate.telemetry import aio_server_interceptors

log = logging.getLogger("xgate.ratelimit")

FailureMode = Literal["open", "closed"]
OUTCOMES = ("allowed", "limited", "near_limit", "shadow_limited", "errors")
NEAR_LIMIT_RATIO = 0.2  # near_limit: allowed with fewer than 20% of the limit remaining

_OK = rls_v3.RateLimitResponse.OK
_OVER = rls_v3.RateLimitResponse.OVER_LIMIT
_Unit = rls_v3.RateLimitResponse.RateLimit
# Envoy reports a limit as requests per one of these units; other units are rescaled to the next larger one.
_UNITS = ((1.0, _Unit.SECOND), (60.0, _Unit.MINUTE), (3600.0, _Unit.HOUR), (86400.0, _Unit.DAY))


@dataclass(frozen=True)
class _Outcome:
    match: Match | None
    decision: Decision | None  # None: no limit applies, or the backend failed (then `failed`)
    failed: bool = False


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    """Answers ShouldRateLimit from a LimitTable and a Backend.

    `set_limits` swaps the table; requests already running finish with the old one. Counters of a limit
    whose algorithm and descriptor stay the same carry over (the key does not include the rate).
    `metrics()`: {limit name: {outcome: count}} with the outcomes of OUTCOMES, counted per descriptor
    decision; near_limit is a subset of allowed.
    """

    def __init__(
        self, table: LimitTable, backend: Backend, *, failure_mode: FailureMode = "open", timeout: float = 0.05
    ) -> None:
        if failure_mode not in ("open", "closed"):
            raise ValueError(f"failure_mode must be 'open' or 'closed', not {failure_mode!r}")
        self._table = table
        self.backend = backend
        self.failure_mode: FailureMode = failure_mode
        self.timeout = timeout
        self._counts: dict[str, Counter[str]] = {}
        self._failing = False
        # The in-memory backend answers without ever suspending: no timer to arm (a sixth of its cost).
        self._may_block = not isinstance(backend, MemoryBackend)

    @property
    def limits(self) -> LimitTable:
        return self._table

    def set_limits(self, table: LimitTable) -> None:
        self._table = table

    def metrics(self) -> dict[str, dict[str, int]]:
        return {name: {outcome: counts[outcome] for outcome in OUTCOMES} for name, counts in self._counts.items()}

    async def ShouldRateLimit(
        self, request: rls_v3.RateLimitRequest, context: grpc.aio.ServicerContext | None = None
    ) -> rls_v3.RateLimitResponse:
        try:
            return await self.should_rate_limit(request)
        except Exception:  # a bug of ours must not turn into a gRPC error at Envoy
            log.exception("rate limit request failed; answering by failure mode %s", self.failure_mode)
            self._count("(internal)", "errors")
            return rls_v3.RateLimitResponse(overall_code=_OK if self.failure_mode == "open" else _OVER)

    async def should_rate_limit(self, request: rls_v3.RateLimitRequest) -> rls_v3.RateLimitResponse:
        table = self._table
        default_hits = request.hits_addend or 1
        matches: list[Match | None] = []
        hits: list[int] = []
        for descriptor in request.descriptors:
            entries = [(entry.key, entry.value) for entry in descriptor.entries]
            matches.append(table.match(request.domain, entries))
            hits.append(descriptor.hits_addend.value if descriptor.HasField("hits_addend") else default_hits)
        outcomes = await self._decide_all(matches, hits)
        return self._respond(outcomes)

    async def _decide_all(self, matches: Sequence[Match | None], hits: Sequence[int]) -> list[_Outcome]:
        limited = [(i, match) for i, match in enumerate(matches) if match is not None]
        outcomes = [_Outcome(match, None) for match in matches]
        if not limited:
            return outcomes
        decisions: list[Decision | BaseException]
        try:
            async with asyncio.timeout(self.timeout if self._may_block else None):
                if len(limited) == 1:
                    # The common case, without gather's tasks: a third of the cost on the memory backend.
                    i, match = limited[0]
                    try:
                        decisions = [await self.backend.decide(match.key, match.limit, hits[i])]
                    except Exception as exc:
                        decisions = [exc]
                else:
                    calls = [self.backend.decide(match.key, match.limit, hits[i]) for i, match in limited]
                    decisions = await asyncio.gather(*calls, return_exceptions=True)
        except TimeoutError:
            decisions = [TimeoutError(f"no decision within {self.timeout} s")] * len(limited)
        failures = []
        for (i, match), decision in zip(limited, decisions, strict=True):
            if isinstance(decision, Decision):
                outcomes[i] = _Outcome(match, decision)
                self._count_decision(match, decision)
            else:
                outcomes[i] = _Outcome(match, None, failed=True)
                self._count(match.name, "errors")
                failures.append(decision)
        self._note_health(failures)
        return outcomes

    def _respond(self, outcomes: Sequence[_Outcome]) -> rls_v3.RateLimitResponse:
        response = rls_v3.RateLimitResponse(overall_code=_OK)
        shown: tuple[Match, Decision] | None = None
        for outcome in outcomes:
            status = response.statuses.add(code=_OK)
            match, decision = outcome.match, outcome.decision
            if outcome.failed and self.failure_mode == "closed":
                status.code = _OVER
                response.overall_code = _OVER
            if match is None or decision is None:
                continue
            _fill_status(status, match, decision)
            if match.limit.shadow:
                continue  # invisible to clients: never denies, never shows in headers
            if not decision.allowed:
                status.code = _OVER
                response.overall_code = _OVER
            if shown is None or _tighter(decision, shown[1]):
                shown = (match, decision)
        if shown is not None:
            decision = shown[1]
            for name, value in (
                ("x-ratelimit-limit", decision.limit),
                ("x-ratelimit-remaining", decision.remaining),
                ("x-ratelimit-reset", math.ceil(decision.reset_seconds)),
            ):
                response.response_headers_to_add.append(core_v3.HeaderValue(key=name, value=str(value)))
        return response

    def _count_decision(self, match: Match, decision: Decision) -> None:
        if not decision.allowed:
            self._count(match.name, "shadow_limited" if match.limit.shadow else "limited")
            return
        self._count(match.name, "allowed")
        if decision.remaining < NEAR_LIMIT_RATIO * decision.limit:
            self._count(match.name, "near_limit")

    def _count(self, name: str, outcome: str) -> None:
        counts = self._counts.get(name)
        if counts is None:
            counts = self._counts[name] = Counter()
        counts[outcome] += 1

    def _note_health(self, failures: Sequence[BaseException]) -> None:
        # One line when the backend starts failing and one when it recovers, not one per request.
        if failures and not self._failing:
            log.warning("rate limit backend failing (%r); failing %s", failures[0], self.failure_mode)
        elif not failures and self._failing:
            log.warning("rate limit backend answering again")
        self._failing = bool(failures)


def _tighter(a: Decision, b: Decision) -> bool:
    """Whether `a` should be shown instead of `b`: denied first, then the lower remaining share of its limit."""
    return (a.allowed, a.remaining / a.limit, -a.reset_seconds) < (b.allowed, b.remaining / b.limit, -b.reset_seconds)


def _fill_status(status: rls_v3.RateLimitResponse.DescriptorStatus, match: Match, decision: Decision) -> None:
    limit = match.limit
    for seconds, unit in _UNITS:
        if limit.unit_seconds <= seconds or unit == _Unit.DAY:
            per_unit = limit.requests * seconds / limit.unit_seconds
            status.current_limit.requests_per_unit = max(1, math.ceil(per_unit - 1e-9))
            status.current_limit.unit = unit
            break
    status.current_limit.name = match.name
    status.limit_remaining = decision.remaining
    status.duration_until_reset.FromNanoseconds(round(decision.reset_seconds * 1e9))


@dataclass
class RateLimitServer:
    """A running service: the gRPC server, the servicer (for set_limits and metrics) and its backend."""

    grpc_server: grpc.aio.Server
    service: RateLimitService
    port: int

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving (running calls get `grace` seconds) and close the backend."""
        await self.grpc_server.stop(grace)
        await self.service.backend.aclose()

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()


async def serve(
    table: LimitTable,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    redis_url: str | None = None,
    failure_mode: FailureMode = "open",
    timeout: float = 0.05,
    reuse_port: bool = False,
) -> tuple[RateLimitServer, int]:
    """Start the service on `host:port` (0: any free port); counters in Redis at `redis_url`, else in memory.

    Returns the running server and the port it bound. Redis is connected lazily: an unreachable Redis does not
    stop the start, requests then get the failure mode's answer. Stop with `await server.stop()`.
    Errors: RuntimeError from grpc when the port cannot be bound, PortInUseError when another process holds
    it (unless `reuse_port`: several processes then share it).
    """
    backend: Backend = MemoryBackend() if redis_url is None else RedisBackend.connect(redis_url, timeout=timeout)
    service = RateLimitService(table, backend, failure_mode=failure_mode, timeout=timeout)
    server = grpc.aio.server(
        interceptors=[AsyncMalformedGuard(), *aio_server_interceptors()], options=grpc_options(reuse_port=reuse_port)
    )
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(service, server)
    bound = bind_grpc(server, host, port, "ratelimit gRPC, --listen", reuse_port=reuse_port)
    await server.start()
    return RateLimitServer(server, service, bound), bound
