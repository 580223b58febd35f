"""The incremental ADS rules, without gRPC: per-resource versions, removals, subscriptions (named, wildcard,
legacy wildcard), initial_resource_versions, ACK/NACK by nonce, and the same push order, EDS re-send and
clusters-removed-last rules as state of the world; and a delta consumer's status reads as a SotW one's."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from envoy.service.discovery.v3 import discovery_pb2 as discovery_v3
from google.rpc import status_pb2
from tests.unit.discovery.checked import CheckedDeltaStream, CheckedStream
from tests.unit.discovery.test_stream import CONFIG, request, snapshot

from xgate.discovery import typeurls
from xgate.discovery.delta import DeltaResponse, DeltaStream, Held
from xgate.discovery.snapshot import Snapshot
from xgate.discovery.status import StatusRegistry

NAMES = {typeurls.ENDPOINT: ("upstream/a", "upstream/b"), typeurls.ROUTE: ("routes/public",)}


def delta_request(
    type_url: str,
    subscribe: tuple[str, ...] = (),
    unsubscribe: tuple[str, ...] = (),
    nonce: str = "",
    error: str | None = None,
    initial: dict[str, str] | None = None,
) -> discovery_v3.DeltaDiscoveryRequest:
    message = discovery_v3.DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=subscribe,
        resource_names_unsubscribe=unsubscribe,
        response_nonce=nonce,
        initial_resource_versions=initial or {},
    )
    if error is not None:
        message.error_detail.CopyFrom(status_pb2.Status(code=13, message=error))
    return message


def deltas(batch: list[DeltaResponse]) -> list[DeltaResponse]:
    return batch


def ack(stream: DeltaStream, batch: list[DeltaResponse], snap: Snapshot) -> None:
    for response in batch:
        stream.on_request(delta_request(response.type_url, nonce=response.nonce), snap)


def connected(snap: Snapshot, initial: dict[str, dict[str, str]] | None = None) -> CheckedDeltaStream:
    """A stream that asked as Envoy asks (legacy wildcard for clusters and listeners, names for the others)
    and ACKed everything it was sent."""
    stream = CheckedDeltaStream(StatusRegistry().connect("peer"))
    for type_url in typeurls.PUSH_ORDER:
        if (type_url not in typeurls.WILDCARD_TYPES and type_url not in NAMES) or type_url == typeurls.SCOPED_ROUTE:
            continue  # asked for by name only (secrets): this config names none; scopes: no per_host listener
        held = (initial or {}).get(type_url)
        stream.on_request(delta_request(type_url, NAMES.get(type_url, ()), initial=held), snap)
        ack(stream, stream.responses(snap), snap)
    return stream


def holds(stream: CheckedDeltaStream, type_url: str) -> dict[str, str]:
    return dict(stream.holds[type_url])


def test_first_requests_get_every_resource_and_acks_mark_the_consumer_in_sync() -> None:
    snap = snapshot()
    stream = connected(snap)
    assert set(holds(stream, typeurls.CLUSTER)) == {"upstream/a", "upstream/b"}
    assert set(holds(stream, typeurls.ROUTE)) == {"routes/public"}
    assert stream.proxy.in_sync(snap)
    assert stream.proxy.synced_revision == "rev1"
    assert stream.checked == 4


def test_nothing_is_sent_when_nothing_changed() -> None:
    snap = snapshot()
    stream = connected(snap)
    assert stream.responses(snapshot(CONFIG, 2, snap)) == []


def test_a_route_change_sends_only_the_route_configuration() -> None:
    snap = snapshot()
    stream = connected(snap)
    changed = snapshot(CONFIG.replace("/a}", "/aa}"), 2, snap)
    (response,) = deltas(stream.responses(changed))
    assert (response.type_url, [r.name for r in response.resources], response.removed) == (
        typeurls.ROUTE,
        ["routes/public"],
        (),
    )
    assert not stream.proxy.in_sync(changed)
    ack(stream, [response], changed)
    assert stream.proxy.in_sync(changed) and stream.proxy.synced_revision == "rev2"


def test_a_changed_cluster_goes_alone_and_its_endpoints_follow_even_unchanged() -> None:
    snap = snapshot()
    stream = connected(snap)
    lb = '{name: a, endpoints: ["127.0.0.1:8001"], lb: random}'
    changed = snapshot(CONFIG.replace('{name: a, endpoints: ["127.0.0.1:8001"]}', lb), 2, snap)
    clusters, endpoints = deltas(stream.responses(changed))
    assert [r.name for r in clusters.resources] == ["upstream/a"]
    assert (endpoints.type_url, [r.name for r in endpoints.resources]) == (typeurls.ENDPOINT, ["upstream/a"])
    assert endpoints.resources[0] is snap.resources[typeurls.ENDPOINT]["upstream/a"]  # unchanged, sent again


def test_a_removed_cluster_is_removed_after_the_routes_that_used_it() -> None:
    snap = snapshot()
    stream = connected(snap)
    without_b = CONFIG.replace('  - {name: b, endpoints: ["127.0.0.1:8002"]}\n', "").replace(
        "  - {name: to-b, match: {path: {prefix: /b}}, upstream: b}\n", ""
    )
    batch = deltas(stream.responses(snapshot(without_b, 2, snap)))
    assert [r.type_url for r in batch] == [typeurls.ENDPOINT, typeurls.ROUTE, typeurls.CLUSTER]
    assert batch[0].removed == ("upstream/b",)  # the endpoints a subscription names and no longer exist
    assert batch[-1].removed == ("upstream/b",) and not batch[-1].resources


def test_a_removed_cluster_alone_is_removed_at_once() -> None:
    two = CONFIG.replace("  - {name: to-b, match: {path: {prefix: /b}}, upstream: b}\n", "")
    snap = snapshot(two)
    stream = connected(snap)
    batch = deltas(stream.responses(snapshot(two.replace('  - {name: b, endpoints: ["127.0.0.1:8002"]}\n', ""), 2)))
    assert [(r.type_url, r.removed) for r in batch] == [
        (typeurls.CLUSTER, ("upstream/b",)),
        (typeurls.ENDPOINT, ("upstream/b",)),
    ]


def test_a_nack_is_recorded_with_its_message_and_objects_not_resent_and_cleared_by_a_fix() -> None:
    snap = snapshot()
    stream = connected(snap)
    bad = snapshot(CONFIG.replace("/a}", "/aa}"), 2, snap)
    (response,) = stream.responses(bad)
    stream.on_request(delta_request(typeurls.ROUTE, nonce=response.nonce, error="bad regex"), bad)
    status = stream.proxy.types[typeurls.ROUTE]
    assert status.rejection is not None
    assert (status.rejection.message, status.rejection.objects, status.rejection.revision) == (
        "bad regex",
        ("routes of listener public",),
        "rev2",
    )
    assert status.rejection.version == bad.version(typeurls.ROUTE, frozenset(NAMES[typeurls.ROUTE]))
    assert status.acked_version == snap.version(typeurls.ROUTE, frozenset(NAMES[typeurls.ROUTE]))
    assert not stream.proxy.in_sync(bad)
    assert stream.responses(bad) == []
    fixed = snapshot(CONFIG.replace("/a}", "/ab}"), 3, bad)
    ack(stream, stream.responses(fixed), fixed)
    assert status.rejection is None and stream.proxy.in_sync(fixed)


def test_an_ack_of_another_change_does_not_clear_a_nack() -> None:
    snap = snapshot()
    stream = connected(snap)
    bad = snapshot(CONFIG.replace("/a}", "/aa}"), 2, snap)
    (response,) = stream.responses(bad)
    stream.on_request(delta_request(typeurls.ROUTE, nonce=response.nonce, error="bad regex"), bad)
    endpoints = snapshot(CONFIG.replace("/a}", "/aa}").replace("8002", "8003"), 3, bad)
    batch = stream.responses(endpoints)
    assert [r.type_url for r in batch] == [typeurls.ENDPOINT]
    ack(stream, batch, endpoints)
    assert stream.proxy.types[typeurls.ROUTE].rejection is not None
    assert not stream.proxy.in_sync(endpoints)


def test_after_a_nack_the_next_change_is_planned_from_what_the_consumer_kept() -> None:
    """A refused removal is not taken as applied: the next change removes the cluster again, with the rest."""
    two = CONFIG.replace("  - {name: to-b, match: {path: {prefix: /b}}, upstream: b}\n", "")
    snap = snapshot(two)
    stream = connected(snap)
    without_b = two.replace('  - {name: b, endpoints: ["127.0.0.1:8002"]}\n', "")
    refused = snapshot(without_b, 2, snap)
    response = stream.responses(refused)[0]
    assert (response.type_url, response.removed) == (typeurls.CLUSTER, ("upstream/b",))
    stream.on_request(delta_request(typeurls.CLUSTER, nonce=response.nonce, error="no"), refused)
    assert holds(stream, typeurls.CLUSTER).keys() == {"upstream/a", "upstream/b"}
    again = snapshot(without_b, 3, refused)
    assert [r.type_url for r in stream.responses(again)] == []  # the refused state is not offered again
    changed = snapshot(without_b.replace('8001"]}', '8001"], lb: random}'), 4, again)
    batch = stream.responses(changed)
    clusters = [r for r in batch if r.type_url == typeurls.CLUSTER]
    assert [([x.name for x in r.resources], r.removed) for r in clusters] == [(["upstream/a"], ("upstream/b",))]
    ack(stream, batch, changed)
    assert holds(stream, typeurls.CLUSTER).keys() == {"upstream/a"} and stream.proxy.in_sync(changed)


def test_a_stale_nonce_answers_nothing_but_its_subscription_changes_apply() -> None:
    snap = snapshot()
    stream = connected(snap)
    changed = snapshot(CONFIG.replace("/a}", "/aa}"), 2, snap)
    (response,) = stream.responses(changed)
    stream.on_request(delta_request(typeurls.ENDPOINT, unsubscribe=("upstream/b",), nonce="1", error="old"), changed)
    assert stream.proxy.types[typeurls.ENDPOINT].rejection is None
    assert stream.proxy.types[typeurls.ENDPOINT].names == frozenset({"upstream/a"})
    stream.on_request(delta_request(typeurls.ROUTE, nonce=response.nonce), changed)
    assert stream.proxy.in_sync(changed) is False  # endpoints of b are served and no longer asked for
    stream.on_request(delta_request(typeurls.ENDPOINT, subscribe=("upstream/b",)), changed)
    (again,) = deltas(stream.responses(changed))
    assert [r.name for r in again.resources] == ["upstream/b"]  # forgotten on unsubscribe: sent afresh
    ack(stream, [again], changed)
    assert stream.proxy.in_sync(changed)


def test_a_reconnecting_consumer_is_sent_only_what_differs_from_what_it_holds() -> None:
    snap = snapshot()
    old = connected(snap)
    kept = {url: holds(old, url) for url in old.holds}
    fresh = connected(snap, kept)
    assert fresh.checked == 0 and fresh.proxy.in_sync(snap)
    kept[typeurls.CLUSTER]["upstream/a"] = "an older version"
    kept[typeurls.CLUSTER]["upstream/gone"] = "whatever"
    stream = CheckedDeltaStream(StatusRegistry().connect("peer"))
    stream.on_request(delta_request(typeurls.CLUSTER, initial=kept[typeurls.CLUSTER]), snap)
    (response,) = deltas(stream.responses(snap))
    assert ([r.name for r in response.resources], response.removed) == (["upstream/a"], ("upstream/gone",))


def test_a_name_that_does_not_exist_is_said_removed_once() -> None:
    snap = snapshot()
    stream = connected(snap)
    stream.on_request(delta_request(typeurls.ROUTE, subscribe=("routes/nowhere",)), snap)
    (response,) = deltas(stream.responses(snap))
    assert (response.resources, response.removed) == ((), ("routes/nowhere",))
    ack(stream, [response], snap)
    assert stream.responses(snapshot(CONFIG, 2, snap)) == []


def test_wildcard_by_star_and_its_unsubscription() -> None:
    snap = snapshot()
    stream = CheckedDeltaStream(StatusRegistry().connect("peer"))
    stream.on_request(delta_request(typeurls.CLUSTER, subscribe=("upstream/a",)), snap)
    (named,) = deltas(stream.responses(snap))
    assert [r.name for r in named.resources] == ["upstream/a"]  # names alone: not the wildcard
    ack(stream, [named], snap)
    stream.on_request(delta_request(typeurls.CLUSTER, subscribe=("*",)), snap)
    (rest,) = deltas(stream.responses(snap))
    assert [r.name for r in rest.resources] == ["upstream/b"] and stream.proxy.types[typeurls.CLUSTER].names is None
    ack(stream, [rest], snap)
    stream.on_request(delta_request(typeurls.CLUSTER, unsubscribe=("*",)), snap)
    assert stream.proxy.types[typeurls.CLUSTER].names == frozenset({"upstream/a"})
    assert stream.responses(snapshot(CONFIG.replace("8002", "8003"), 2, snap)) == []


def test_consumers_in_the_same_state_share_the_response_bytes_but_not_the_nonce() -> None:
    snap = snapshot()
    one, two = connected(snap), connected(snap)
    two._nonces = itertools.count(1000)
    changed = snapshot(CONFIG.replace("/a}", "/aa}"), 2, snap)
    (first,), (second,) = deltas(one.responses(changed)), deltas(two.responses(changed))
    assert first.plan is second.plan and first.nonce != second.nonce
    assert first.message().resources == second.message().resources


def test_response_bytes_parse_as_the_message_built_by_protobuf() -> None:
    snap = snapshot()
    stream = CheckedDeltaStream(StatusRegistry().connect("peer"))
    stream.on_request(delta_request(typeurls.ROUTE, ("routes/public", "routes/none")), snap)
    (response,) = deltas(stream.responses(snap))
    expected = discovery_v3.DeltaDiscoveryResponse(
        system_version_info=response.plan.after.version,
        resources=[
            discovery_v3.Resource(name=r.name, version=r.version, resource=r.packed) for r in response.resources
        ],
        type_url=typeurls.ROUTE,
        removed_resources=["routes/none"],
        nonce=response.nonce,
    )
    assert response.message() == expected


CHANGES = {
    "route": CONFIG.replace("/a}", "/aa}"),
    "endpoint": CONFIG.replace("8002", "8003"),
    "cluster": CONFIG.replace('{name: a, endpoints: ["127.0.0.1:8001"]}', '{name: a, endpoints: ["x:1"], lb: random}'),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_delta_consumer_reports_exactly_as_a_sotw_one(change: str) -> None:
    """The same snapshots and ACKs through both variants: the same status, in sync, revision, versions."""
    snap = snapshot()
    sotw = CheckedStream(StatusRegistry().connect("peer"))
    for type_url in typeurls.PUSH_ORDER:
        if (type_url not in typeurls.WILDCARD_TYPES and type_url not in NAMES) or type_url == typeurls.SCOPED_ROUTE:
            continue  # as `connected`: no secret is named, no per_host listener
        sotw.on_request(request(type_url, NAMES.get(type_url, ())), snap)
        for response in sotw.responses(snap):
            names = NAMES.get(response.type_url, ())
            sotw.on_request(request(response.type_url, names, response.nonce, response.version_info), snap)
    delta = connected(snap)
    changed = snapshot(CHANGES[change], 2, snap)
    for stream in (sotw, delta):
        assert not stream.proxy.in_sync(changed)
    for response in sotw.responses(changed):
        names = NAMES.get(response.type_url, ())
        sotw.on_request(request(response.type_url, names, response.nonce, response.version_info), changed)
    ack(delta, delta.responses(changed), changed)
    reports = [_comparable(stream.proxy.to_dict(changed)) for stream in (sotw, delta)]
    assert reports[0] == reports[1]
    assert reports[0]["in_sync"] and reports[0]["synced_revision"] == "rev2"


def _comparable(report: dict[str, object]) -> dict[str, object]:
    types = report["types"]
    assert isinstance(types, dict)
    return {
        "in_sync": report["in_sync"],
        "synced_revision": report["synced_revision"],
        "types": {kind: (t["sent"], t["acked"], t["acked_revision"], t["rejection"]) for kind, t in types.items()},
    }


def test_the_double_checks_every_response_and_catches_a_broken_rule() -> None:
    snap = snapshot()
    stream = connected(snap)
    stream._types[typeurls.ROUTE].held = Held.of({})  # a stream that forgot what it sent sends it again
    with pytest.raises(AssertionError, match="sent again unchanged"):
        stream.responses(snap)
    stream = connected(snap)
    stream._nonces = itertools.count(1)  # a stream that reuses nonces breaks the protocol
    with pytest.raises(AssertionError, match="nonce"):
        stream.responses(snapshot(CONFIG.replace("/a}", "/aa}"), 2, snap))


JWKS = '{"keys": [{"kty": "RSA", "kid": "k", "n": "up97uqrF9MWOPaPkwSaBeuAPLOr9FKcaWGdVEGzQ4f3Zq5WKVZowx9TCBxmImNJ1qmUi13pB8otwM_l5lfY1AFBMxVbQCUXntLovhDaiSvYp4wGDjFzQiYA-pUq8h6MUZBnhleYrkU7XlCBwNVyN8qNMkpLA7KFZYz-486GnV2NIJJx_4BGa3HdKwQGxi2tjuQsQvao5W4xmSVaaEWopBwMy2QmlhSFQuPUpTaywTqUcUq_6SfAHhZ4IDa_FxEd2c2z8gFGtfst9cY3lRYf-c_ZdboY3mqN9Su3-j3z5r2SHWlhB_LNAjyWlBGsvbGPlTqDziYQwZN4aGsqVKQb9Vw", "e": "AQAB"}]}'  # noqa: E501
# CONFIG with a jwt provider its route to-a requires: the listener names jwt_authn's config over ECDS.
WITH_JWT = f"plugins: {{jwt: {{providers: [{{name: p, issuer: https://i, jwks: {JWKS}}}]}}}}\n" + CONFIG.replace(
    "upstream: a}", "upstream: a, plugins: {jwt: {}}}"
)
JWT_CONFIG = "envoy.filters.http.jwt_authn"


def _asking(sotw: bool, snap: Snapshot) -> tuple[CheckedStream | CheckedDeltaStream, Callable[..., None]]:
    """A stream of either kind, and `ask(type_url, names, answered=None)`: subscribe to exactly `names` (a
    SotW request lists them all; a delta one says what changed), ACKing `answered`."""
    registry = StatusRegistry()
    if sotw:
        sotw_stream = CheckedStream(registry.connect("peer"))

        def ask_sotw(type_url: str, names: tuple[str, ...], answered: Any = None, at: Snapshot = snap) -> None:
            nonce, version = (answered.nonce, answered.version_info) if answered is not None else ("", "")
            sotw_stream.on_request(request(type_url, names, nonce, version), at)

        return sotw_stream, ask_sotw
    delta_stream = CheckedDeltaStream(registry.connect("peer"))
    asked: dict[str, tuple[str, ...]] = {}

    def ask_delta(type_url: str, names: tuple[str, ...], answered: Any = None, at: Snapshot = snap) -> None:
        before = asked.get(type_url, ())
        subscribe = tuple(n for n in names if n not in before)
        unsubscribe = tuple(n for n in before if n not in names)
        asked[type_url] = names
        nonce = answered.nonce if answered is not None else ""
        delta_stream.on_request(delta_request(type_url, subscribe, unsubscribe, nonce=nonce), at)

    return delta_stream, ask_delta


@pytest.mark.parametrize("sotw", [False, True], ids=["delta", "sotw"])
def test_a_filter_config_is_not_removed_while_envoy_asks_for_it(sotw: bool) -> None:
    """A config change that takes jwt off: the listener changes, and jwt_authn's config stays with Envoy until it
    stops asking (its draining listener still runs the filter: without its config Envoy answers 500)."""
    snap = snapshot(WITH_JWT)
    stream, ask = _asking(sotw, snap)
    ask(typeurls.FILTER_CONFIG, (JWT_CONFIG,))
    ask(typeurls.LISTENER, ())
    first = stream.responses(snap)
    assert [(r.type_url, [x.name for x in r.resources]) for r in first] == [
        (typeurls.FILTER_CONFIG, [JWT_CONFIG]),
        (typeurls.LISTENER, ["listener/public"]),
    ]
    answered = {r.type_url: r for r in first}
    ask(typeurls.FILTER_CONFIG, (JWT_CONFIG,), answered[typeurls.FILTER_CONFIG])
    ask(typeurls.LISTENER, (), answered[typeurls.LISTENER])
    without = snapshot(CONFIG, 2, snap)
    assert JWT_CONFIG not in without.resources.get(typeurls.FILTER_CONFIG, {})
    (listener,) = stream.responses(without)
    assert listener.type_url == typeurls.LISTENER  # and no removal of jwt_authn's config
    ask(typeurls.LISTENER, (), listener, without)
    ask(typeurls.FILTER_CONFIG, (), answered[typeurls.FILTER_CONFIG], without)  # no listener names it: not asked
    assert all(not r.resources for r in stream.responses(without))
