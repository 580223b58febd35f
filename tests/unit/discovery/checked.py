"""An AdsStream that checks the xDS protocol's rules on every response it makes (go-control-plane's test doubles
do the same): nonces never repeat and only grow, a response holds only resources of its type, its version is
the digest of what it holds, named types get only what was asked (and, after clusters, every EDS cluster's
endpoints), a batch goes clusters -> endpoints -> listeners -> routes (a last CDS may remove clusters), and
nothing already sent is sent again unless clusters changed before it."""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2 as discovery_v3

from xgate.discovery import typeurls
from xgate.discovery.snapshot import Snapshot
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
