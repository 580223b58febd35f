"""The rollout's order, without gRPC: consumers are ProxyStatus entries the test ACKs or NACKs by hand."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2 as core_v3
from envoy.service.discovery.v3 import discovery_pb2 as discovery_v3
from google.rpc import status_pb2
from tests.unit.discovery.checked import CheckedDeltaStream, CheckedStream

from xgate.api import DYEING_SETTINGS
from xgate.config.load import parse_document
from xgate.discovery import SnapshotCache, typeurls
from xgate.discovery.rollout import Refusal, Rollout
from xgate.discovery.snapshot import Snapshot
from xgate.discovery.status import ProxyStatus, Rejection, TypeStatus
from xgate.discovery.stream import Outgoing, Response
from xgate.pipeline import compile_config
from xgate.translate import Resources


def resources(percent: int, body: str = "one") -> Resources:
    text = f"""
plugins:
  dyeing: {{mode: ext_proc, rules: [{{stage: canary, sticky: {{percent: {percent}, key: {{header: x-user}}}}}}]}}
listeners: [{{name: public, port: 10000}}]
routes:
  - {{name: body, match: {{path: {{exact: /body}}}}, direct_response: {{status: 200, body: {body}}}}}
"""
    return compile_config(parse_document(text, "t")).resources


def consumer(cache: SnapshotCache, role: str) -> ProxyStatus:
    proxy = cache.status.connect(f"peer-{role}")
    proxy.node_id, proxy.role = f"{role}-1", role
    return proxy


def ack(cache: SnapshotCache, proxy: ProxyStatus) -> None:
    """The consumer holds what the current snapshot serves it."""
    snapshot = cache.snapshot
    assert snapshot is not None
    for url in typeurls.ROLES[proxy.role]:
        if url in snapshot.resources:
            state = proxy.types.setdefault(url, TypeStatus())
            state.acked_version = Snapshot.version_of(snapshot.select(url, None))
            state.rejection = None
    cache.status.answered()


def nack(cache: SnapshotCache, proxy: ProxyStatus, message: str) -> None:
    snapshot = cache.snapshot
    assert snapshot is not None
    version = Snapshot.version_of(snapshot.select(DYEING_SETTINGS, None))
    state = proxy.types.setdefault(DYEING_SETTINGS, TypeStatus())
    state.rejection = Rejection(version, snapshot.services_revision or "", message, (), 0.0)
    cache.status.answered()


def keys(cache: SnapshotCache) -> set[str]:
    assert cache.snapshot is not None
    return set(cache.snapshot.resources.get(DYEING_SETTINGS, {}))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_without_a_service_connected_a_change_goes_straight_to_the_envoys() -> None:
    cache = SnapshotCache()
    served: list[str] = []
    rollout = Rollout(cache, on_served=served.append)
    rollout.publish(resources(10), "r1")
    assert served == ["r1"] and cache.snapshot is not None and cache.snapshot.revision == "r1"
    await rollout.close()


async def test_a_new_key_reaches_the_service_first_and_leaves_it_last() -> None:
    cache = SnapshotCache()
    served: list[str] = []
    rollout = Rollout(cache, prune_delay=0.01, on_served=served.append)
    rollout.publish(resources(10), "r1")
    dyeing, envoy = consumer(cache, "dyeing"), consumer(cache, "envoy")
    ack(cache, dyeing)
    ack(cache, envoy)
    first = keys(cache)
    rollout.publish(resources(20), "r2")
    # Staged: the service is offered the new key beside the old; the Envoys still have r1.
    assert cache.snapshot is not None and cache.snapshot.revision == "r1" and served == ["r1"]
    assert len(keys(cache)) == 2 and first < keys(cache)
    ack(cache, dyeing)
    await settle()
    assert served == ["r1", "r2"] and cache.snapshot.revision == "r2"
    assert len(keys(cache)) == 2  # the old key stays until the Envoys have moved on
    ack(cache, envoy)
    await asyncio.sleep(0.05)
    assert keys(cache) == keys(cache) - first and len(keys(cache)) == 1
    await rollout.close()


async def test_a_nack_refuses_the_revision_and_no_envoy_gets_it() -> None:
    cache = SnapshotCache()
    refused: list[Refusal] = []
    rollout = Rollout(cache, on_refused=refused.append)
    rollout.publish(resources(10, "one"), "r1")
    dyeing = consumer(cache, "dyeing")
    ack(cache, dyeing)
    rollout.publish(resources(20, "two"), "r2")
    nack(cache, dyeing, "bad rule")
    await settle()
    assert [(r.revision, r.service, r.node, r.message) for r in refused] == [("r2", "dyeing", "dyeing-1", "bad rule")]
    assert cache.snapshot is not None and cache.snapshot.revision == "r1"
    # The next revision is offered without the refused one's resources, and goes through.
    rollout.publish(resources(30, "three"), "r3")
    assert len(keys(cache)) == 2  # r1's (still named by the Envoys) and r3's: not r2's
    ack(cache, dyeing)
    await settle()
    assert cache.snapshot.revision == "r3" and rollout.refusal is None
    await rollout.close()


async def test_a_silent_service_holds_the_envoys_back_only_until_the_timeout() -> None:
    cache = SnapshotCache()
    served: list[str] = []
    rollout = Rollout(cache, service_timeout=0.05, on_served=served.append)
    rollout.publish(resources(10), "r1")
    consumer(cache, "dyeing")  # connected, never answers
    rollout.publish(resources(20), "r2")
    await asyncio.sleep(0.01)
    assert served == ["r1"]
    await asyncio.sleep(0.1)
    assert served == ["r1", "r2"]
    await rollout.close()


async def test_a_newer_revision_supersedes_one_still_waiting() -> None:
    cache = SnapshotCache()
    served: list[str] = []
    rollout = Rollout(cache, on_served=served.append)
    rollout.publish(resources(10), "r1")
    dyeing = consumer(cache, "dyeing")
    ack(cache, dyeing)
    rollout.publish(resources(20), "r2")
    rollout.publish(resources(30), "r3")
    assert len(keys(cache)) == 2  # r1's and r3's; r2 was never served and is not offered any more
    ack(cache, dyeing)
    await settle()
    assert served == ["r1", "r3"]
    await rollout.close()


@pytest.mark.parametrize("percent", [10, 20])
async def test_a_change_the_services_already_have_is_not_held(percent: int) -> None:
    """Back to a key the services still hold (not pruned yet): straight to the Envoys."""
    cache = SnapshotCache()
    served: list[str] = []
    rollout = Rollout(cache, prune_delay=60, on_served=served.append)
    rollout.publish(resources(10), "r1")
    dyeing = consumer(cache, "dyeing")
    ack(cache, dyeing)
    rollout.publish(resources(20), "r2")
    ack(cache, dyeing)
    await settle()
    rollout.publish(resources(percent, "other"), "r3")
    assert served == ["r1", "r2", "r3"]
    await rollout.close()


class Consumer:
    """A consumer behind a real stream of either variant, following the cache: it asks as its kind asks (an
    Envoy by name for routes, a service for its types as a whole), then ACKs or NACKs what it is sent."""

    def __init__(self, cache: SnapshotCache, role: str, delta: bool) -> None:
        proxy = cache.status.connect(f"peer-{role}")
        self.stream: CheckedStream | CheckedDeltaStream = (CheckedDeltaStream if delta else CheckedStream)(proxy)
        self.cache, self.delta, self.outbox = cache, delta, list[Outgoing]()
        cache.follow(proxy.stream_id, lambda snapshot: self.outbox.extend(self.stream.responses(snapshot)))
        node = core_v3.Node(id=f"{role}-1", user_agent_name="envoy" if role == "envoy" else f"xgate-{role}")
        for url in sorted(typeurls.ROLES[role]):
            names = ("routes/public",) if url == typeurls.ROUTE else ()
            if delta:
                first: Any = discovery_v3.DeltaDiscoveryRequest(type_url=url, resource_names_subscribe=names)
            else:
                first = discovery_v3.DiscoveryRequest(type_url=url, resource_names=names)
            first.node.CopyFrom(node)
            self._ask(first)

    def _ask(self, message: Any) -> None:
        self.stream.on_request(message, self.cache.snapshot)
        self.outbox.extend(self.stream.responses(self.cache.snapshot))

    def answer(self, error: str | None = None) -> None:
        """ACK (or NACK with `error`) everything sent so far."""
        while self.outbox:
            response = self.outbox.pop(0)
            names = ("routes/public",) if response.type_url == typeurls.ROUTE else ()
            if self.delta:
                message: Any = discovery_v3.DeltaDiscoveryRequest(
                    type_url=response.type_url, response_nonce=response.nonce
                )
            else:
                assert isinstance(response, Response)
                version = response.version_info if error is None else ""
                message = discovery_v3.DiscoveryRequest(
                    type_url=response.type_url,
                    resource_names=names,
                    response_nonce=response.nonce,
                    version_info=version,
                )
            if error is not None:
                message.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
            self._ask(message)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_the_order_holds_for_consumers_of_either_variant(delta: bool) -> None:
    """The rollout reads only ProxyStatus: consumers on real streams, delta or not, take it through every step."""
    cache = SnapshotCache()
    served: list[str] = []
    refused: list[Refusal] = []
    rollout = Rollout(cache, prune_delay=0.01, on_served=served.append, on_refused=refused.append)
    rollout.publish(resources(10), "r1")
    dyeing, envoy = Consumer(cache, "dyeing", delta), Consumer(cache, "envoy", delta)
    dyeing.answer()
    envoy.answer()
    assert dyeing.stream.proxy.in_sync(cache.snapshot) and envoy.stream.proxy.in_sync(cache.snapshot)
    first = keys(cache)
    rollout.publish(resources(20), "r2")
    assert cache.snapshot is not None and cache.snapshot.revision == "r1" and served == ["r1"]
    assert envoy.outbox == []  # staged: the service is offered the new key, the Envoys nothing yet
    dyeing.answer()
    await settle()
    assert served == ["r1", "r2"] and [r.type_url for r in envoy.outbox] == [typeurls.ROUTE]
    envoy.answer()
    await asyncio.sleep(0.05)
    assert len(keys(cache)) == 1 and not keys(cache) & first  # pruned once the Envoys moved on
    dyeing.answer()
    assert all(c.stream.proxy.in_sync(cache.snapshot) for c in (dyeing, envoy))
    rollout.publish(resources(30, "three"), "r3")
    dyeing.answer(error="bad rule")
    await settle()
    assert [(r.revision, r.service, r.message) for r in refused] == [("r3", "dyeing", "bad rule")]
    assert cache.snapshot.revision == "r2" and envoy.outbox == []
    status = dyeing.stream.proxy.to_dict(cache.snapshot)["types"]["DyeingSettings"]
    assert status["rejection"]["message"] == "bad rule" and status["rejection"]["revision"] == "r3"
    await rollout.close()
