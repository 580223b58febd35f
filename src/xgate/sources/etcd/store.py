"""Writing config to etcd: plan (validate the whole resulting state first), apply in one guarded
transaction, delete with reference checks. What `xgate apply / diff / delete` run."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from aetcd.rpc import rpc_pb2

from xgate.config.load import ConfigSet
from xgate.config.schema import Listener, Route, Upstream
from xgate.errors import ConfigError, ConfigIssue, XgateError
from xgate.ir import build_ir
from xgate.sources.etcd.client import EtcdClient
from xgate.sources.etcd.layout import PLUGIN, decode, encode, key_of, normalize_prefix, object_data, parse_key


class ConflictError(XgateError):
    """Someone else changed a key between our read and our write; nothing was written."""


@dataclass(frozen=True)
class Change:
    kind: str
    name: str
    key: str
    action: str  # "create", "update", "unchanged", "delete"
    old: Any = None
    new: Any = None


@dataclass
class Stored:
    """What etcd holds under the prefix, read at one revision."""

    revision: int
    values: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # key -> (mod_revision, raw value)
    objects: dict[tuple[str, str], Any] = field(default_factory=dict)  # valid objects and plugin settings
    issues: list[ConfigIssue] = field(default_factory=list)

    def config(self) -> ConfigSet:
        return _config_set(self.objects, {})


@dataclass
class Plan:
    stored: Stored
    changes: list[Change]
    warnings: list[str]  # problems of objects this apply does not touch
    prefix: str = "/xgate/"

    @property
    def pending(self) -> list[Change]:
        return [change for change in self.changes if change.action != "unchanged"]


async def read_stored(client: EtcdClient, prefix: str) -> Stored:
    prefix = normalize_prefix(prefix)
    revision, kvs = await client.get_prefix(prefix.encode())
    stored = Stored(revision)
    for kv in kvs:
        key = kv.key.decode(errors="replace")
        stored.values[key] = (kv.mod_revision, kv.value)
        parsed = parse_key(prefix, kv.key)
        if parsed is None:
            continue
        obj, issues = decode(*parsed, kv.value, key)
        if issues:
            stored.issues += issues
        else:
            stored.objects[parsed] = obj
    return stored


def desired_objects(config: ConfigSet) -> dict[tuple[str, str], Any]:
    objects: dict[tuple[str, str], Any] = {}
    for kind, items in (("listener", config.listeners), ("upstream", config.upstreams), ("route", config.routes)):
        for item in items:
            objects[(kind, item.name)] = item
    for plugin, settings in config.plugins.items():
        objects[(PLUGIN, plugin)] = settings
    return objects


def plan_apply(stored: Stored, config: ConfigSet, prefix: str) -> Plan:
    """The changes that make etcd hold `config`'s objects (others are left alone), after checking that the
    resulting whole config is valid. Raises ConfigError with every issue of the objects being applied."""
    desired = desired_objects(config)
    merged = {**stored.objects, **desired}
    ir = build_ir(replace(_config_set(merged, {}), broken=config.broken), lenient=True)
    labels = {f"{kind} {name}" for kind, name in desired}
    blocking = [issue for issue in ir.issues if issue.obj in labels or issue.obj == "document"]
    if config.issues or blocking:
        raise ConfigError([*config.issues, *blocking])
    warnings = [str(issue) for issue in ir.issues if issue not in blocking]
    warnings += [str(issue) for issue in stored.issues]
    changes = []
    for (kind, name), obj in desired.items():
        key = key_of(prefix, kind, name).decode()
        new = obj if kind == PLUGIN else object_data(obj)
        old_raw = stored.values.get(key)
        if old_raw is None:
            changes.append(Change(kind, name, key, "create", None, new))
            continue
        old, _ = decode(kind, name, old_raw[1], key)
        old_data = old if kind == PLUGIN or old is None else object_data(old)
        action = "unchanged" if encode(old_data) == encode(new) else "update"
        changes.append(Change(kind, name, key, action, old_data, new))
    return Plan(stored, changes, warnings, normalize_prefix(prefix))


async def execute(client: EtcdClient, plan: Plan) -> int:
    """Write every pending change in one transaction, guarded by the mod_revision of each key as read and
    of every object the new routes refer to. Returns etcd's revision; raises ConflictError."""
    compare: list[rpc_pb2.Compare] = []
    operations: list[rpc_pb2.RequestOp] = []
    guarded: set[str] = set()
    for change in plan.pending:
        compare.append(_unchanged_since_read(plan.stored, change.key))
        guarded.add(change.key)
        value = encode(change.new)
        operations.append(rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=change.key.encode(), value=value)))
    for key in _referenced_keys(plan) - guarded:
        compare.append(_unchanged_since_read(plan.stored, key))
    if not operations:
        return plan.stored.revision
    succeeded, revision = await client.txn(compare, operations)
    if not succeeded:
        raise ConflictError("another writer changed these keys since they were read; nothing was written")
    return revision


def references_to(stored: Stored, kind: str, name: str) -> list[str]:
    """The objects that would break if (kind, name) were deleted."""
    found = []
    for (other_kind, other_name), obj in stored.objects.items():
        if other_kind != "route":
            continue
        if (kind == "upstream" and name in obj.upstream_refs) or (kind == "listener" and name in obj.listeners):
            found.append(f"route {other_name}")
    return sorted(found)


async def delete_object(client: EtcdClient, stored: Stored, prefix: str, kind: str, name: str) -> int:
    key = key_of(prefix, kind, name).decode()
    if key not in stored.values:
        raise KeyError(key)
    succeeded, revision = await client.txn(
        [_unchanged_since_read(stored, key)],
        [rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key.encode()))],
    )
    if not succeeded:
        raise ConflictError(f"{key} changed since it was read; nothing was deleted")
    return revision


def _unchanged_since_read(stored: Stored, key: str) -> rpc_pb2.Compare:
    mod_revision = stored.values.get(key, (0, b""))[0]
    return rpc_pb2.Compare(
        key=key.encode(), result=rpc_pb2.Compare.EQUAL, target=rpc_pb2.Compare.MOD, mod_revision=mod_revision
    )


def _referenced_keys(plan: Plan) -> set[str]:
    prefix = plan.prefix
    keys: set[str] = set()
    for change in plan.pending:
        if change.kind != "route":
            continue
        route = Route.model_validate(change.new)
        keys |= {key_of(prefix, "upstream", ref).decode() for ref in route.upstream_refs}
        keys |= {key_of(prefix, "listener", ref).decode() for ref in route.listeners}
    return {key for key in keys if key in plan.stored.values}


def _config_set(objects: dict[tuple[str, str], Any], sources: dict[tuple[str, str], str]) -> ConfigSet:
    by_kind: dict[str, list[Any]] = {"listener": [], "upstream": [], "route": []}
    plugins: dict[str, Any] = {}
    for (kind, name), obj in sorted(objects.items()):
        if kind == PLUGIN:
            plugins[name] = obj
        else:
            by_kind[kind].append(obj)
    return ConfigSet(
        listeners=tuple[Listener, ...](by_kind["listener"]),
        upstreams=tuple[Upstream, ...](by_kind["upstream"]),
        routes=tuple[Route, ...](by_kind["route"]),
        plugins=plugins,
        source="etcd",
        sources=sources,
    )
