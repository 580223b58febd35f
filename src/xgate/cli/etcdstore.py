"""Writing config to etcd: plan (validate the whole resulting state first), apply in one guarded
transaction, delete with reference checks. What `xgate apply / diff / delete` run.

It lives with the commands, not in sources/etcd: a plan is validated by the IR (build_ir), and the sources
sit below the IR, feeding the control plane; they read etcd, the CLI writes it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aetcd.rpc import rpc_pb2

from xgate.config.load import ConfigSet
from xgate.config.schema import KINDS, Listener, Route, Upstream
from xgate.config.tls import Secret
from xgate.errors import ConfigError, ConfigIssue, XgateError
from xgate.ir import build_ir
from xgate.sources.etcd.client import EtcdClient, EtcdRequestError, EtcdUnavailableError, prefix_end
from xgate.sources.etcd.layout import PLUGIN, decode, encode, key_of, normalize_prefix, object_data, parse_key


class ConflictError(XgateError):
    """Someone else changed a key between our read and our write; nothing of this apply remains in etcd."""


class PartialApplyError(XgateError):
    """An apply in several transactions stopped after some of them, and what they wrote could not be undone
    (etcd became unreachable): `written` lists those changes, which are in etcd now."""

    def __init__(self, plan: Plan, written: list[tuple[int, list[Change]]], total: int, reason: str) -> None:
        self.written = [change for _, batch in written for change in batch]
        super().__init__(
            f"{_batches(len(written), total)} {'was' if len(written) == 1 else 'were'} written "
            f"({len(self.written)} changes) and {'is' if len(written) == 1 else 'are'} in etcd: {reason}"
        )
        self.plan = plan


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
    prefix: str = "/xgate/"
    values: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # key -> (mod_revision, raw value)
    objects: dict[tuple[str, str], Any] = field(default_factory=dict)  # valid objects and plugin settings
    issues: list[ConfigIssue] = field(default_factory=list)

    def config(self) -> ConfigSet:
        return _config_set(self.objects, self)


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
    stored = Stored(revision, prefix)
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
    for kind, items in config.objects():
        for item in items:
            objects[(kind, item.name)] = item
    for plugin, settings in config.plugins.items():
        objects[(PLUGIN, plugin)] = settings
    return objects


def plan_apply(stored: Stored, config: ConfigSet, prefix: str, *, prune: bool = False) -> Plan:
    """The changes that make etcd hold `config`'s objects, after checking that the resulting whole config is
    valid. Objects under the prefix that `config` lacks are left alone, or with `prune` deleted (keys that are
    not xgate objects stay either way). Raises ConfigError with every issue of the objects being applied, each
    located in the file it came from."""
    desired = desired_objects(config)
    merged = desired if prune else {**stored.objects, **desired}
    ir = build_ir(replace(_config_set(merged, stored, config), broken=config.broken), lenient=True)
    labels = {f"{kind} {name}" for kind, name in desired}
    blocking = [issue for issue in ir.issues if issue.obj in labels or issue.obj == "document"]
    if config.issues or blocking:
        raise ConfigError([*config.issues, *blocking])
    keys = {key_of(prefix, kind, name).decode(): (kind, name) for kind, name in desired}
    warnings = [str(issue) for issue in ir.issues if issue not in blocking]
    changes = []
    for key, (kind, name) in keys.items():
        obj = desired[(kind, name)]
        new = obj if kind == PLUGIN else object_data(obj)
        old_raw = stored.values.get(key)
        if old_raw is None:
            changes.append(Change(kind, name, key, "create", None, new))
            continue
        old_data = _stored_data(kind, name, key, old_raw[1])
        action = "unchanged" if encode(old_data) == encode(new) else "update"
        changes.append(Change(kind, name, key, action, old_data, new))
    if prune:
        for key, (_, value) in sorted(stored.values.items()):
            parsed = parse_key(prefix, key.encode())
            if parsed is not None and key not in keys:
                changes.append(Change(*parsed, key, "delete", _stored_data(*parsed, key, value), None))
    gone = {change.key for change in changes if change.action == "delete"}
    warnings += [str(issue) for issue in stored.issues if issue.source not in keys and issue.source not in gone]
    return Plan(stored, changes, warnings, normalize_prefix(prefix))


def planned_config(plan: Plan) -> ConfigSet:
    """The config etcd would hold once `plan` is written (what `diff` compiles to compare Envoy resources)."""
    merged = dict(plan.stored.objects)
    for change in plan.pending:
        if change.action == "delete":
            merged.pop((change.kind, change.name), None)
        else:
            merged[(change.kind, change.name)] = (
                change.new if change.kind == PLUGIN else KINDS[change.kind].model_validate(change.new)
            )
    return _config_set(merged, plan.stored)


def _stored_data(kind: str, name: str, key: str, value: bytes) -> Any:
    """A stored value as `get` shows it; None when it is not a valid object."""
    old, _ = decode(kind, name, value, key)
    return old if kind == PLUGIN or old is None else object_data(old)


# etcd refuses a transaction with more than --max-txn-ops (default 128) compares or operations.
MAX_TXN_OPS = 128
_ORDER = {PLUGIN: 0, "secret": 0, "listener": 1, "upstream": 2, "route": 3}
AfterBatch = Callable[[int], Awaitable[None]]


async def execute(
    client: EtcdClient, plan: Plan, max_ops: int = MAX_TXN_OPS, *, after_batch: AfterBatch | None = None
) -> tuple[int, int]:
    """Write every pending change; return (etcd revision, number of transactions).

    Up to `max_ops` changes go in one transaction, guarded by the mod_revision of each written key and of
    every object the new routes refer to: all or nothing. More changes go in batches, referenced objects
    before the routes that use them so every intermediate state is valid; each batch is guarded by "no key
    under the prefix changed since our read or our previous batch". When a later batch fails, the batches
    already written are undone (see `_undo`), so a failed apply leaves nothing of itself behind.
    `after_batch(number)` runs after each written batch but the last (tests use it to interleave a writer).

    Errors: ConflictError (another writer; nothing of this apply remains), EtcdRequestError (etcd refused a
    batch; nothing remains), PartialApplyError (batches written and not undone: etcd became unreachable).
    """
    pending = sorted(plan.pending, key=_write_order)
    if not pending:
        return plan.stored.revision, 0
    referenced = sorted(_referenced_keys(plan) - {change.key for change in pending})
    if len(pending) <= max_ops and len(pending) + len(referenced) <= max_ops:
        compare = [_unchanged_since_read(plan.stored, key) for key in [c.key for c in pending] + referenced]
        succeeded, revision = await client.txn(compare, [_write(change) for change in pending])
        if not succeeded:
            raise ConflictError("another writer changed these keys since they were read; nothing was written")
        return revision, 1
    revision = plan.stored.revision
    batches = [pending[start : start + max_ops] for start in range(0, len(pending), max_ops)]
    written: list[tuple[int, list[Change]]] = []
    for number, batch in enumerate(batches, 1):
        guard = [_nothing_changed_since(plan.prefix, revision)]
        if number == 1:
            guard += [_unchanged_since_read(plan.stored, key) for key in referenced[: max_ops - 1]]
        try:
            succeeded, revision = await client.txn(guard, [_write(change) for change in batch])
        except EtcdUnavailableError as exc:
            if not written:
                raise
            raise PartialApplyError(plan, written, len(batches), f"{exc} (batch {number}: not known)") from None
        except EtcdRequestError as exc:
            if not written:
                raise
            raise EtcdRequestError(f"{exc}; {await _undo_all(client, plan, written, len(batches))}") from None
        if not succeeded:
            what = f"another writer changed keys under {plan.prefix} meanwhile (batch {number} of {len(batches)})"
            if not written:
                raise ConflictError(f"{what}; nothing was written")
            raise ConflictError(f"{what}; {await _undo_all(client, plan, written, len(batches))}")
        written.append((revision, batch))
        if after_batch is not None and number < len(batches):
            await after_batch(number)
    return revision, len(batches)


def _write_order(change: Change) -> tuple[int, str]:
    """Objects before the routes that refer to them; deletions after every write, routes first, so no state in
    between has a route naming a missing upstream or listener."""
    rank = _ORDER[change.kind]
    return (4 + (3 - rank), change.name) if change.action == "delete" else (rank, change.name)


async def _undo_all(client: EtcdClient, plan: Plan, written: list[tuple[int, list[Change]]], total: int) -> str:
    """Undo the written batches, newest first; what happened, in words. Errors: PartialApplyError when etcd
    fails during the undo."""
    try:
        kept = await _undo(client, plan, written)
    except (EtcdUnavailableError, EtcdRequestError) as exc:
        raise PartialApplyError(plan, written, total, f"undoing them failed: {exc}") from None
    objects = sum(len(batch) for _, batch in written)
    done = f"the {objects} changes of {_batches(len(written), total)} were undone"
    if kept:
        keys = ", ".join(kept)
        verb = "was" if len(kept) == 1 else "were"
        done += f" ({keys} {verb} changed by another writer since and keeps that change)"
    return f"{done}: nothing of this apply remains"


async def _undo(client: EtcdClient, plan: Plan, written: list[tuple[int, list[Change]]]) -> list[str]:
    """Put back what each key held before the apply (or delete a key it created), newest batch first. Each key
    is restored only while it still holds what its batch wrote (its mod_revision is the batch's revision), so
    a later change by another writer is never overwritten; those keys are returned."""
    kept: list[str] = []
    for revision, batch in reversed(written):
        guards = [_written_by(change, revision) for change in batch]
        succeeded, _ = await client.txn(guards, [_restore(plan.stored, change) for change in batch])
        if succeeded:
            continue
        for change, guard in zip(batch, guards, strict=True):  # someone changed some of them: key by key
            succeeded, _ = await client.txn([guard], [_restore(plan.stored, change)])
            if not succeeded:
                kept.append(change.key)
    return sorted(kept)


def _batches(count: int, total: int) -> str:
    return f"batch 1 of {total}" if count == 1 else f"batches 1-{count} of {total}"


def _written_by(change: Change, revision: int) -> rpc_pb2.Compare:
    """The key still holds what the batch committed at `revision` wrote (a deleted key: still absent)."""
    mod_revision = 0 if change.action == "delete" else revision
    return rpc_pb2.Compare(
        key=change.key.encode(), result=rpc_pb2.Compare.EQUAL, target=rpc_pb2.Compare.MOD, mod_revision=mod_revision
    )


def _restore(stored: Stored, change: Change) -> rpc_pb2.RequestOp:
    old = stored.values.get(change.key)
    if old is None:
        return rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=change.key.encode()))
    return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=change.key.encode(), value=old[1]))


def _write(change: Change) -> rpc_pb2.RequestOp:
    if change.action == "delete":
        return rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=change.key.encode()))
    return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=change.key.encode(), value=encode(change.new)))


def _nothing_changed_since(prefix: str, revision: int) -> rpc_pb2.Compare:
    """Every key under `prefix` was last modified at or before `revision` (no new or changed key)."""
    start = prefix.encode()
    return rpc_pb2.Compare(
        key=start,
        range_end=prefix_end(start),
        result=rpc_pb2.Compare.LESS,
        target=rpc_pb2.Compare.MOD,
        mod_revision=revision + 1,
    )


def references_to(stored: Stored, kind: str, name: str) -> list[str]:
    """The objects that would break if (kind, name) were deleted."""
    found = []
    for (other_kind, other_name), obj in stored.objects.items():
        if other_kind != "route":
            continue
        if (kind == "upstream" and name in obj.upstream_refs) or (kind == "listener" and name in obj.listeners):
            found.append(f"route {other_name}")
    if kind == "secret":
        for (other_kind, other_name), obj in stored.objects.items():
            if other_kind in ("listener", "upstream") and obj.tls is not None and name in obj.tls.secrets:
                found.append(f"{other_kind} {other_name}")
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
        if change.kind != "route" or change.action == "delete":
            continue
        route = Route.model_validate(change.new)
        keys |= {key_of(prefix, "upstream", ref).decode() for ref in route.upstream_refs}
        keys |= {key_of(prefix, "listener", ref).decode() for ref in route.listeners}
    return {key for key in keys if key in plan.stored.values}


def _config_set(objects: dict[tuple[str, str], Any], stored: Stored, config: ConfigSet | None = None) -> ConfigSet:
    """One config of `objects`, each located where it came from: the file (and line) of `config`'s objects,
    the etcd key of the others, so an issue points at what the user has to fix."""
    by_kind: dict[str, list[Any]] = {"listener": [], "upstream": [], "route": [], "secret": []}
    plugins: dict[str, Any] = {}
    sources: dict[tuple[str, str], str] = {}
    mine = desired_objects(config) if config is not None else {}
    for (kind, name), obj in sorted(objects.items()):
        if kind == PLUGIN:
            plugins[name] = obj
            continue
        by_kind[kind].append(obj)
        if config is not None and (kind, name) in mine:
            sources[(kind, name)] = config.source_of(kind, name).source
        else:
            sources[(kind, name)] = f"{stored.prefix}{kind}/{name}"
    if config is not None and config.plugins:
        sources[("document", "plugins")] = config.source_of("document", "plugins").source
    else:
        sources[("document", "plugins")] = f"{stored.prefix}{PLUGIN}/"
    return ConfigSet(
        listeners=tuple[Listener, ...](by_kind["listener"]),
        upstreams=tuple[Upstream, ...](by_kind["upstream"]),
        routes=tuple[Route, ...](by_kind["route"]),
        plugins=plugins,
        secrets=tuple[Secret, ...](by_kind["secret"]),
        source=config.source if config is not None else "etcd",
        sources=sources,
        paths=dict(config.paths) if config is not None else {},
        text=config.text if config is not None else "",
        texts=dict(config.texts) if config is not None else {},
    )
