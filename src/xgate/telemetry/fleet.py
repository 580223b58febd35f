"""What the control plane reads from its fleet for status and metrics: each Envoy's fail-open counters and JWKS
fetches, and each authz instance's JWKS state.

Envoy takes some documented paths "open": a request passes undyed when the dyeing service fails or is slow
(ext_proc `failure_mode_allowed`, `message_timeouts`), is not rate limited when the rate-limit service fails
(`ratelimit.failure_mode_allowed`, `error`), is let through (or denied) when authz fails (`ext_authz.
failure_mode_allowed`, `error`). Envoy counts these per listener (ext_proc) or per upstream cluster (ext_authz,
ratelimit), the finest it counts them. Every `interval` the control plane reads those counters from each Envoy
whose bootstrap says where (node metadata `xgate.stats` or `xgate.admin`, see proxy/bootstrap.py), with one
filtered GET (a few hundred bytes), at most `concurrency` at a time, each given `timeout`; and the JWKS state
from each authz instance's GET /metrics (node metadata `xgate.status`). A counter that grew within `window`
becomes a warning in `xgate status`; every counter is a metric on the control plane's /metrics.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

# Envoy's counters of the fail-open paths, and its JWKS fetches (filter-wide, and per provider by the provider's
# own fetch cluster `xgate-jwks/<name>`, see translate/plugins/jwt.py).
STATS_FILTER = (
    r"(\.(ext_proc)\.(failure_mode_allowed|message_timeouts)"
    r"|\.(ext_authz|ratelimit)\.(failure_mode_allowed|error)"
    r"|\.jwt_authn\.jwks_fetch_(success|failed)"
    r"|^cluster\.xgate-jwks/[^.]+\.(upstream_rq_2xx|upstream_rq_4xx|upstream_rq_5xx|upstream_cx_connect_fail"
    r"|upstream_rq_timeout|ssl\.connection_error))$"
)
_FAIL_OPEN = re.compile(r"^(http|cluster)\.(?P<scope>.+)\.(?P<filter>ext_proc|ext_authz|ratelimit)\.(?P<counter>\w+)$")
_JWKS = re.compile(r"^cluster\.xgate-jwks/(?P<provider>[^.]+)\.(?P<counter>.+)$")
_JWKS_FAILURES = ("upstream_rq_4xx", "upstream_rq_5xx", "upstream_cx_connect_fail", "upstream_rq_timeout")
UPSTREAM_CLUSTER = "upstream/"

# What each counter means, in the words of a warning.
_MEANING = {
    ("ext_proc", "failure_mode_allowed"): "requests passed undyed: the dyeing service failed or was too slow",
    ("ext_proc", "message_timeouts"): "dyeing calls timed out",
    ("ext_authz", "failure_mode_allowed"): "requests let through without authz: the authz service failed",
    ("ext_authz", "error"): "authz calls failed",
    ("ratelimit", "failure_mode_allowed"): "requests not rate limited: the rate-limit service failed",
    ("ratelimit", "error"): "rate-limit calls failed",
}


@dataclass(frozen=True)
class Target:
    """A consumer whose figures the control plane can read: `url` is http://host:port of Envoy's stats (or
    admin) address, or of a service's status port."""

    kind: str
    node: str
    url: str


def node_addresses(metadata: Any) -> dict[str, str]:
    """The `xgate` fields of a node's metadata (a protobuf Struct): where its stats, admin or status are."""
    fields = metadata.fields.get("xgate") if metadata is not None else None
    if fields is None or not fields.HasField("struct_value"):
        return {}
    return {key: value.string_value for key, value in fields.struct_value.fields.items() if value.string_value}


def target_url(peer: str, addresses: Mapping[str, str], keys: Iterable[str]) -> str | None:
    """The first of `keys` in `addresses` this control plane can reach: a wildcard host means "at the address the
    consumer connected from"; a loopback host only when it connected from this machine's loopback."""
    peer_host = _peer_host(peer)
    for key in keys:
        host, sep, port = addresses.get(key, "").rpartition(":")
        if not sep or not port.isdigit():
            continue
        host = host.strip("[]")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return f"http://{host}:{port}"  # a host name
        if address.is_unspecified:
            host = peer_host
        elif address.is_loopback and not _is_loopback(peer_host):
            continue
        if host:
            return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    return None


def _peer_host(peer: str) -> str:
    """grpc's peer ("ipv4:10.0.0.1:5000", "ipv6:[::1]:5000") -> its host."""
    _, _, address = peer.partition(":")
    host, _, _ = address.rpartition(":")
    return host.strip("[]")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class _Seen:
    """One target's last reading and the history of its counters within the window."""

    target: Target
    read_at: float | None = None
    error: str | None = None
    counters: dict[str, float] = field(default_factory=dict)
    history: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)
    jwks_success_at: dict[str, float] = field(default_factory=dict)  # provider -> when a success was first seen
    services: dict[str, Any] = field(default_factory=dict)  # a service's own report (authz: "jwks")


class FleetStats:
    """Reads the fleet's figures every `interval` (see the module); `report()` and `families()` say them."""

    def __init__(
        self,
        targets: Callable[[], list[Target]],
        *,
        interval: float = 10.0,
        timeout: float = 2.0,
        window: float = 300.0,
        concurrency: int = 8,
    ) -> None:
        self._targets = targets
        self.interval, self.timeout, self.window = interval, timeout, window
        self._gate = asyncio.Semaphore(concurrency)
        self._seen: dict[tuple[str, str], _Seen] = {}
        self._poke = asyncio.Event()

    def poke(self) -> None:
        """Read again now, not at the end of the interval (after `interval` was changed, say)."""
        self._poke.set()

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session:
            while not stop.is_set():
                self._poke.clear()
                await self.poll(session)
                waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._poke.wait())}
                try:
                    await asyncio.wait(waits, timeout=self.interval, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiting in waits:
                        waiting.cancel()

    async def poll(self, session: aiohttp.ClientSession) -> None:
        """Read every target once (targets gone since the last poll are forgotten)."""
        targets = self._targets()
        keys = {(target.kind, target.node) for target in targets}
        for key in [key for key in self._seen if key not in keys]:
            del self._seen[key]
        await asyncio.gather(*(self._read(session, target) for target in targets))

    async def _read(self, session: aiohttp.ClientSession, target: Target) -> None:
        seen = self._seen.get((target.kind, target.node))
        if seen is None or seen.target != target:
            seen = self._seen[(target.kind, target.node)] = _Seen(target)
        async with self._gate:
            try:
                if target.kind == "envoy":
                    counters = await _envoy_counters(session, target.url)
                else:
                    seen.services = await _service_report(session, target.url)
                    counters = {}
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                seen.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                return
        now = time.time()
        previous_read, seen.read_at, seen.error = seen.read_at, now, None
        for provider in _jwks_providers(counters):
            name = f"cluster.xgate-jwks/{provider}.upstream_rq_2xx"
            if counters.get(name, 0) > seen.counters.get(name, 0):
                seen.jwks_success_at[provider] = now  # Envoy keeps no time: this reading is when it was seen
        for name, value in counters.items():
            history = seen.history.get(name)
            if history is None:
                # New since the last reading (a new listener or cluster): it started from 0 since then. On the
                # first reading of a consumer, when its counters grew is unknown: they are the baseline.
                history = seen.history[name] = deque([(previous_read, 0.0)] if previous_read else [])
            if history and value < history[-1][1]:
                history.clear()  # Envoy restarted: its counters started again from 0
            history.append((now, value))
            while len(history) > 1 and history[1][0] <= now - self.window:
                history.popleft()
        seen.counters = counters

    def _recent(self, seen: _Seen, name: str) -> float:
        """How much a counter grew within the window (0 on the first reading: when it grew is unknown)."""
        history = seen.history.get(name)
        if not history:
            return 0.0
        return history[-1][1] - history[0][1]

    def report(self) -> dict[str, Any]:
        """For GET /status: per consumer what was read and when, and the warnings."""
        consumers = [self._consumer(seen) for seen in self._seen.values()]
        return {
            "interval": self.interval,
            "window": self.window,
            "consumers": consumers,
            "warnings": [warning for consumer in consumers for warning in _warnings(consumer, self.window)],
        }

    def _consumer(self, seen: _Seen) -> dict[str, Any]:
        target = seen.target
        entry: dict[str, Any] = {
            "kind": target.kind,
            "node": target.node,
            "url": target.url,
            "read_at": seen.read_at,
            "error": seen.error,
        }
        if target.kind == "envoy":
            entry["fail_open"] = [
                {**parts, "total": value, "recent": self._recent(seen, name)}
                for name, value in sorted(seen.counters.items())
                if (parts := fail_open_parts(name)) is not None
            ]
            entry["jwks"] = [
                {
                    "provider": provider,
                    "fetch_success": seen.counters.get(f"cluster.xgate-jwks/{provider}.upstream_rq_2xx", 0),
                    "fetch_failed": _jwks_failures(seen.counters, provider),
                    "recent_failures": sum(
                        self._recent(seen, f"cluster.xgate-jwks/{provider}.{name}") for name in _JWKS_FAILURES
                    ),
                    "last_success_seen": seen.jwks_success_at.get(provider),
                }
                for provider in _jwks_providers(seen.counters)
            ]
        else:
            entry["jwks"] = seen.services.get("jwks") or []
        return entry

    def families(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("xgate_fleet_stats_up", "1 when the last read of the consumer's figures worked",
                               labels=["kind", "node"])  # fmt: skip
        fail_open = CounterMetricFamily(
            "xgate_envoy_fail_open",
            "Envoy's counters of requests that took a fail-open path (filter: ext_proc, ext_authz, ratelimit; "
            "scope: listener or upstream)",
            labels=["node", "filter", "scope", "counter"],
        )
        fetches = CounterMetricFamily("xgate_jwks_fetches", "JWKS fetches per provider and outcome",
                                      labels=["kind", "node", "provider", "outcome"])  # fmt: skip
        keys = GaugeMetricFamily("xgate_jwks_keys", "Keys held per provider (authz)", labels=["node", "provider"])
        success = GaugeMetricFamily(
            "xgate_jwks_last_success_timestamp_seconds",
            "When the provider's JWKS was last fetched well",
            labels=["kind", "node", "provider"],
        )
        for seen in self._seen.values():
            consumer = self._consumer(seen)
            up.add_metric([seen.target.kind, seen.target.node], 1 if seen.error is None and seen.read_at else 0)
            for item in consumer.get("fail_open", []):
                fail_open.add_metric([seen.target.node, item["filter"], item["scope"], item["counter"]], item["total"])
            for jwks in consumer["jwks"]:
                labels = [seen.target.kind, seen.target.node, jwks["provider"]]
                fetches.add_metric([*labels, "success"], jwks.get("fetch_success", 0))
                fetches.add_metric([*labels, "failed"], jwks.get("fetch_failed", 0))
                last = jwks.get("last_success") or jwks.get("last_success_seen")
                if last:
                    success.add_metric(labels, last)
                if "kids" in jwks:
                    keys.add_metric([seen.target.node, jwks["provider"]], len(jwks["kids"]))
        yield from (up, fail_open, fetches, keys, success)


def fail_open_parts(name: str) -> dict[str, str] | None:
    """`http.public.ext_proc.failure_mode_allowed` -> filter ext_proc, scope "listener public", counter ..."""
    found = _FAIL_OPEN.match(name)
    if found is None:
        return None
    scope = found.group("scope")
    if found.group(1) == "http":
        scope = f"listener {scope}"
    else:
        scope = f"upstream {scope.removeprefix(UPSTREAM_CLUSTER)}" if scope.startswith(UPSTREAM_CLUSTER) else scope
    return {"filter": found.group("filter"), "scope": scope, "counter": found.group("counter")}


def _jwks_providers(counters: Mapping[str, float]) -> list[str]:
    return sorted({found.group("provider") for name in counters if (found := _JWKS.match(name))})


def _jwks_failures(counters: Mapping[str, float], provider: str) -> float:
    return sum(counters.get(f"cluster.xgate-jwks/{provider}.{name}", 0) for name in _JWKS_FAILURES)


def _warnings(consumer: dict[str, Any], window: float) -> Iterator[str]:
    who = f"{consumer['kind']} {consumer['node']}"
    if consumer["error"] is not None:
        yield f"{who}: its figures could not be read at {consumer['url']} ({consumer['error']})"
    minutes = f"{window / 60:g} min"
    for item in consumer.get("fail_open", []):
        if item["recent"] > 0:
            meaning = _MEANING.get((item["filter"], item["counter"]), f"{item['filter']} {item['counter']}")
            yield (
                f"{who}: {item['recent']:.0f} {meaning} ({item['scope']}, last {minutes}; "
                f"Envoy's {item['filter']}.{item['counter']})"
            )
    for jwks in consumer["jwks"]:
        provider = jwks.get("provider")
        if consumer["kind"] == "envoy" and jwks.get("recent_failures", 0) > 0:
            yield f"{who}: jwt provider {provider}: {jwks['recent_failures']:.0f} JWKS fetches failed (last {minutes})"
        elif consumer["kind"] != "envoy" and jwks.get("failing"):
            kept = ", ".join(jwks.get("kids") or []) or "none"
            yield (
                f"{who}: jwt provider {provider}: JWKS fetch failing ({jwks.get('last_error')}); "
                f"keeping the last good keys ({kept})"
            )


async def _envoy_counters(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(f"{url}/stats", params={"format": "json", "filter": STATS_FILTER}) as answer:
        if answer.status != 200:
            raise ValueError(f"HTTP {answer.status}")
        body = await answer.json(content_type=None)
    return {
        item["name"]: float(item["value"])
        for item in body.get("stats", [])
        if isinstance(item, dict) and isinstance(item.get("value"), int | float) and "name" in item
    }


async def _service_report(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/metrics") as answer:
        if answer.status != 200:
            raise ValueError(f"HTTP {answer.status}")
        body = await answer.json(content_type=None)
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    return body
