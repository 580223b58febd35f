"""Streams that check the xDS protocol's rules on every response they make (go-control-plane's test doubles do
the same). CheckedStream (state of the world): nonces never repeat and only grow, a response holds only
resources of its type, its version is the digest of what it holds, named types get only what was asked (and,
after clusters, every EDS cluster's endpoints), a batch goes clusters -> endpoints -> listeners -> routes (a
last CDS may remove clusters), and nothing already sent is sent again unless clusters changed before it.
CheckedDeltaStream: the same for the incremental variant (see its docstring)."""

from __future__ import annotations

import xxhash
from envoy.service.discovery.v3 import discovery_pb2 as discovery_v3

from xgate.discovery import typeurls
from xgate.discovery.delta import DeltaResponse, DeltaStream
from xgate.discovery.snapshot import Resource, Snapshot
from xgate.discovery.status import ProxyStatus
from xgate.discovery.stream import AdsStream, Response


class CheckedStream(AdsStream):
    def __init__(self, proxy: ProxyStatus) -> None:
        super().__init__(proxy)
        self.checked = 0
        self._last_nonce = 0
        self._subscribed: dict[str, frozenset[str] | None] = {}
        self._last_version: dict[str, str] = {}

    def on_request(self, request: discovery_v3.DiscoveryRequest, snapshot: Snapshot | None) -> None:
        wildcard = request.type_url in typeurls.WILDCARD_TYPES and not request.resource_names
        self._subscribed[request.type_url] = None if wildcard else frozenset(request.resource_names)
        super().on_request(request, snapshot)

    def responses(self, snapshot: Snapshot | None) -> list[Response]:
        batch = super().responses(snapshot)
        order = [typeurls.PUSH_ORDER.index(r.type_url) for r in batch if r.type_url in typeurls.PUSH_ORDER]
        final_cds = len(order) > 1 and order[-1] == typeurls.PUSH_ORDER.index(typeurls.CLUSTER)
        assert order[: -1 if final_cds else None] == sorted(order[: -1 if final_cds else None]), order
        clusters_sent = False
        for response in batch:
            self._check(response, snapshot, clusters_sent)
            clusters_sent |= response.type_url == typeurls.CLUSTER
        return batch

    def _check(self, response: Response, snapshot: Snapshot | None, after_clusters: bool) -> None:
        nonce = int(response.nonce)
        assert nonce > self._last_nonce, f"nonce {nonce} after {self._last_nonce}"
        self._last_nonce = nonce
        assert response.type_url in self._subscribed, f"{response.type_url} was not asked for"
        assert all(r.type_url == response.type_url for r in response.resources), "a resource of another type"
        assert response.version_info == Snapshot.version_of(response.resources), "version is not the content's"
        names = {r.name for r in response.resources}
        assert len(names) == len(response.resources), "a resource twice"
        asked = self._subscribed[response.type_url]
        if asked is not None:
            allowed = set(asked)
            if response.type_url == typeurls.ENDPOINT and after_clusters and snapshot is not None:
                allowed |= set(snapshot.resources.get(typeurls.ENDPOINT, {}))
            assert names <= allowed, f"not asked for: {sorted(names - allowed)}"
        resend = response.type_url == typeurls.ENDPOINT and after_clusters
        previous = self._last_version.get(response.type_url)
        assert resend or response.version_info != previous or response.type_url == typeurls.CLUSTER, (
            f"{response.type_url} sent again unchanged"
        )
        self._last_version[response.type_url] = response.version_info
        message = response.message()  # the bytes on the wire parse as the DiscoveryResponse they claim to be
        assert (message.version_info, message.type_url, message.nonce) == (
            response.version_info,
            response.type_url,
            response.nonce,
        )
        assert [packed.type_url for packed in message.resources] == [response.type_url] * len(response.resources)
        self.checked += 1


class CheckedDeltaStream(DeltaStream):
    """A DeltaStream that checks the incremental protocol's rules on every response, against its own model of what the
    consumer holds (each response is applied, unless NACKed: then it holds what it had): nonces grow; a response
    holds only resources of its type, each named once, each versioned by the digest of its bytes, none also removed;
    nothing is sent that the consumer holds at that version, except endpoints right after their clusters; a named
    subscription gets only its names; a removal names something held, or a name asked for that does not exist; the
    response's version is the state's after it; a batch keeps the push order (a last CDS may only remove clusters);
    the bytes parse as the DeltaDiscoveryResponse they claim to be."""

    def __init__(self, proxy: ProxyStatus) -> None:
        super().__init__(proxy)
        self.checked = 0
        self._last_nonce = 0
        self._wildcard: dict[str, bool] = {}
        self._names: dict[str, set[str]] = {}
        self.holds: dict[str, dict[str, str]] = {}  # type URL -> name -> version, as the consumer has it
        self._given: dict[str, list[tuple[str, dict[str, str], DeltaResponse]]] = {}  # url -> (nonce, before, it)

    def on_request(self, request: discovery_v3.DeltaDiscoveryRequest, snapshot: Snapshot | None) -> None:
        url = request.type_url
        subscribe, unsubscribe = set(request.resource_names_subscribe), set(request.resource_names_unsubscribe)
        if url not in self._wildcard:
            self._wildcard[url] = not subscribe or "*" in subscribe
            self.holds[url] = dict(request.initial_resource_versions)
        else:
            self._wildcard[url] = (self._wildcard[url] or "*" in subscribe) and "*" not in unsubscribe
        self._names[url] = (self._names.get(url, set()) | subscribe) - unsubscribe - {"*"}
        if not self._wildcard[url]:
            self.holds[url] = {n: v for n, v in self.holds[url].items() if n in self._names[url]}
        if request.HasField("error_detail"):  # refused: it holds what it had, plus what was sent after
            sent = self._given.get(url, [])
            index = next((i for i, (nonce, _, _) in enumerate(sent) if nonce == request.response_nonce), None)
            if index is not None:
                holds = dict(sent[index][1])
                for _, _, later in sent[index + 1 :]:
                    for name in later.removed:
                        holds.pop(name, None)
                    holds.update((r.name, r.version) for r in later.resources)
                self.holds[url] = holds
        super().on_request(request, snapshot)

    def responses(self, snapshot: Snapshot | None) -> list[DeltaResponse]:
        batch = super().responses(snapshot)
        order = [typeurls.PUSH_ORDER.index(r.type_url) for r in batch if r.type_url in typeurls.PUSH_ORDER]
        final_cds = len(order) > 1 and order[-1] == typeurls.PUSH_ORDER.index(typeurls.CLUSTER)
        assert order[: -1 if final_cds else None] == sorted(order[: -1 if final_cds else None]), order
        if final_cds:
            assert not batch[-1].resources, "the last CDS only removes"
        clusters_sent: frozenset[str] = frozenset()
        for response in batch:
            self._check(response, clusters_sent)
            if response.type_url == typeurls.CLUSTER and not clusters_sent:
                clusters_sent = frozenset(r.name for r in response.resources)
        return batch

    def _check(self, response: DeltaResponse, clusters_sent: frozenset[str]) -> None:
        nonce = int(response.nonce)
        assert nonce > self._last_nonce, f"nonce {nonce} after {self._last_nonce}"
        self._last_nonce = nonce
        url = response.type_url
        assert url in self._wildcard, f"{url} was not asked for"
        holds = self.holds[url]
        names = [r.name for r in response.resources]
        assert len(set(names)) == len(names), "a resource twice"
        assert not set(names) & set(response.removed), "a resource both sent and removed"
        for resource in response.resources:
            assert resource.type_url == url, "a resource of another type"
            assert resource.version == xxhash.xxh3_128_hexdigest(resource.data), "version is not the content's"
            again = url == typeurls.ENDPOINT and resource.name in clusters_sent
            assert again or holds.get(resource.name) != resource.version, f"{resource.name} sent again unchanged"
            if not self._wildcard[url]:
                assert resource.name in self._names[url], f"not asked for: {resource.name}"
        for name in response.removed:
            asked = not self._wildcard[url] and name in self._names[url]
            assert name in holds or asked, f"removes {name}, which it does not hold"
        self._given.setdefault(url, []).append((response.nonce, dict(holds), response))
        for name in response.removed:
            holds.pop(name, None)
        holds.update((r.name, r.version) for r in response.resources)
        expected = Snapshot.version_of(Resource(n, v, url, b"", b"") for n, v in sorted(holds.items()))
        message = response.message()  # the bytes on the wire parse as the DeltaDiscoveryResponse they claim
        assert message.system_version_info == expected, "the version is not the consumer's state after it"
        assert (message.type_url, message.nonce) == (url, response.nonce)
        assert [r.name for r in message.resources] == names
        assert [r.version for r in message.resources] == [r.version for r in response.resources]
        assert [r.resource.type_url for r in message.resources] == [url] * len(names)
        assert list(message.removed_resources) == list(response.removed)
        self.checked += 1
