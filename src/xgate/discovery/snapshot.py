"""Immutable, versioned snapshots of every Envoy resource; each resource serialized once for all proxies."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import xxhash
from google.protobuf import any_pb2
from google.protobuf.message import Message

from xgate.discovery import typeurls
from xgate.protowire import field_head, string_field
from xgate.translate import Resources

T = TypeVar("T")


@dataclass(frozen=True)
class Resource:
    """One Envoy resource, serialized once for every proxy; `version` is a digest of its bytes, so equal
    content is an equal version. As a google.protobuf.Any it is `any_head` then `data`, kept apart so a
    response copies a 600 KB route table once, when it joins its own bytes."""

    name: str
    version: str
    type_url: str
    data: bytes
    any_head: bytes
    # The message it was packed from: translation hands back the same object for what did not change, which
    # is then not serialized again (1,000 clusters cost ~3 ms a change otherwise).
    origin: object = field(default=None, compare=False, repr=False)

    @property
    def any_size(self) -> int:
        return len(self.any_head) + len(self.data)

    @property
    def packed(self) -> any_pb2.Any:
        return any_pb2.Any(type_url=self.type_url, value=self.data)


@dataclass(frozen=True)
class Snapshot:
    """Every resource served at one moment, by type URL: Envoy's of config revision `revision`, the services'
    of `services_revision` (the same, except while a change waits for the services: see discovery.rollout)."""

    serial: int
    revision: str
    resources: Mapping[str, Mapping[str, Resource]]
    created: float = field(default_factory=time.time)
    seen_at: float = 0.0  # time.perf_counter() when a source saw the change that made it (0: not known)
    services_revision: str | None = None
    # What every stream works out from this snapshot, worked out once for all of them: selections, their
    # versions, response bytes (a thousand Envoys in the same state get the same answer).
    _memo: dict[Hashable, Any] = field(default_factory=dict, compare=False, repr=False)

    def revision_for(self, role: str) -> str:
        """The config revision what a consumer of `role` is served comes from."""
        if role == typeurls.ENVOY or self.services_revision is None:
            return self.revision
        return self.services_revision

    def select(self, type_url: str, names: frozenset[str] | None) -> tuple[Resource, ...]:
        """The resources of `type_url` a proxy asked for (None: all of them), sorted by name."""
        return self.memo(("select", type_url, names), lambda: self._select(type_url, names))

    def _select(self, type_url: str, names: frozenset[str] | None) -> tuple[Resource, ...]:
        available = self.resources.get(type_url, {})
        if names is None:
            return tuple(available[name] for name in sorted(available))
        return tuple(available[name] for name in sorted(names) if name in available)

    def names(self, type_url: str) -> frozenset[str]:
        """The names of every resource of `type_url`."""
        return self.memo(("names", type_url), lambda: frozenset(self.resources.get(type_url, {})))

    def version(self, type_url: str, names: frozenset[str] | None) -> str:
        """The version of what `select` gives: what a proxy in sync with this snapshot has ACKed."""
        return self.memo(("version", type_url, names), lambda: Snapshot.version_of(self.select(type_url, names)))

    def memo(self, key: Hashable, make: Callable[[], T]) -> T:
        """`make()`'s result, made once per snapshot and `key` (the snapshot never changes, so neither does it)."""
        try:
            found: T = self._memo[key]
        except KeyError:
            found = self._memo[key] = make()
        return found

    @staticmethod
    def version_of(resources: Iterable[Resource]) -> str:
        """The version of a response: a digest of the names and versions in it, stable across restarts."""
        digest = hashlib.blake2b(digest_size=8)
        for resource in resources:
            digest.update(resource.name.encode())
            digest.update(b"=")
            digest.update(resource.version.encode())
            digest.update(b";")
        return digest.hexdigest()


def build_snapshot(
    resources: Resources, revision: str, serial: int, previous: Snapshot | None = None, seen_at: float = 0.0
) -> Snapshot:
    """Pack every resource once; an unchanged resource keeps the very object of the previous snapshot."""
    by_type: dict[str, dict[str, Resource]] = {}
    for kind, protos in resources.by_kind().items():
        type_url = typeurls.BY_KIND[kind]
        before = previous.resources.get(type_url, {}) if previous else {}
        packed: dict[str, Resource] = {}
        for name, message in protos.items():
            packed[name] = _pack(name, message, type_url, before.get(name))
        by_type[type_url] = packed
    return Snapshot(serial=serial, revision=revision, resources=by_type, seen_at=seen_at)


def _pack(name: str, message: Message | bytes, type_url: str, before: Resource | None) -> Resource:
    if before is not None and before.origin is message:
        return before
    data = message if isinstance(message, bytes) else message.SerializeToString(deterministic=True)
    # XXH3-128: 15 us for a 600 KB route table, where sha256 took 400 us of every change's few milliseconds.
    # A version only has to tell contents apart, and whoever could craft a collision can write the config.
    version = xxhash.xxh3_128_hexdigest(data)
    if before is not None and before.version == version:
        return before
    any_head = string_field(1, type_url) + field_head(2, len(data))  # google.protobuf.Any: type_url, value
    return Resource(name=name, version=version, type_url=type_url, data=data, any_head=any_head, origin=message)
