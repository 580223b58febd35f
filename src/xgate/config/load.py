"""Read config documents (YAML or JSON) into validated objects, every issue located by source, object and line."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from itertools import repeat
from operator import attrgetter
from pathlib import Path
from typing import Any, TypeVar, cast

import yaml_rs
from pydantic import BaseModel, ValidationError

from xgate.config.compact import Compactor
from xgate.config.lines import FieldPath, duplicate_key_line, line_map, line_of
from xgate.config.messages import explain
from xgate.config.pieces import Items, Layout, Prior, Unsplit, load_piece, resplit, split_document
from xgate.config.pieces import ObjectCache as ObjectCache  # where the sources have always found it
from xgate.config.schema import KINDS, Listener, Route, Upstream
from xgate.config.tls import Secret
from xgate.errors import ConfigError, ConfigIssue

M = TypeVar("M", bound=BaseModel)
SECTIONS = {"listeners": "listener", "upstreams": "upstream", "routes": "route", "secrets": "secret"}
TOP_LEVEL = {"xgate", "plugins", *SECTIONS}
_LINE = re.compile(r"at line (\d+)")
# An alias bomb (anchors nested nine deep) took 84 s to reach yaml-rs's default limit of 1,000,000 replayed
# events; at 500,000 it is refused in ~30 ms, and 10,000 routes each naming a shared anchor stay far below.
_ALIAS_LIMITS = yaml_rs.AliasLimits(max_total_replayed_events=500_000, max_replay_stack_depth=64)


@dataclass(frozen=True)
class ObjectSource:
    """Where one object came from: a file path or an etcd key, and the line its object starts on."""

    source: str
    path: FieldPath = ()


@dataclass(frozen=True)
class ConfigSet:
    """Every object of one config revision, each validated on its own; references are checked by the IR."""

    listeners: tuple[Listener, ...] = ()
    upstreams: tuple[Upstream, ...] = ()
    routes: Sequence[Route] = ()  # a tuple, or a Chain sharing blocks with the source's (etcd)
    plugins: Mapping[str, Any] = field(default_factory=dict)
    secrets: tuple[Secret, ...] = ()
    source: str = ""
    paths: Mapping[tuple[str, str], FieldPath] = field(default_factory=dict)
    # Per-object sources where objects come from different places (etcd keys); default: `source`.
    sources: Mapping[tuple[str, str], str] = field(default_factory=dict)
    issues: tuple[ConfigIssue, ...] = ()
    broken: frozenset[tuple[str, str]] = frozenset()
    text: str = field(default="", repr=False, compare=False)
    # The text of each other source (the files of a directory), so issues found later get their lines too.
    texts: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def objects(self) -> tuple[tuple[str, Sequence[Any]], ...]:
        """(kind, its objects) for every kind of object."""
        return (
            ("listener", self.listeners),
            ("upstream", self.upstreams),
            ("route", self.routes),
            ("secret", self.secrets),
        )

    def source_of(self, kind: str, name: str) -> ObjectSource:
        """Where (kind, name) came from; the document's plugin defaults are ("document", "plugins")."""
        if kind == "document":
            return ObjectSource(self.sources.get((kind, name), self.source), (name,))
        return ObjectSource(self.sources.get((kind, name), self.source), self.paths.get((kind, name), ()))

    @cached_property
    def upstream_named(self) -> dict[str, Upstream]:
        """The upstreams by name (a canary check per route looked them up in a list: 50,000 x 1,000)."""
        return {upstream.name: upstream for upstream in self.upstreams}

    @cached_property
    def _line_maps(self) -> dict[str, dict[FieldPath, int]]:
        return {}

    def line_of(self, source: str, path: FieldPath) -> int | None:
        """The line of `path` (or of its nearest enclosing key) in `source`, when its text is known."""
        text = self.text if source == self.source else self.texts.get(source, "")
        if not text:
            return None
        if source not in self._line_maps:
            self._line_maps[source] = line_map(text)
        return line_of(self._line_maps[source], path)

    def issue(self, kind: str, name: str, field_path: str, message: str) -> ConfigIssue:
        """A located issue about object (kind, name); used by later stages such as reference checks."""
        where = self.source_of(kind, name)
        fields = tuple(int(part) if part.isdigit() else part for part in field_path.split(".") if part)
        if kind == "document":  # the field path starts at the top of the document ("plugins.jwt...")
            line = self.line_of(where.source, fields)
        else:
            line = self.line_of(where.source, (*where.path, *fields)) if where.path else None
        label = "document" if kind == "document" else f"{kind} {name}"
        return ConfigIssue(where.source, label, field_path, message, line)


@dataclass(frozen=True)
class _Problem:
    """An issue before its line is known: lines are only worked out when a document has issues."""

    label: str
    path: FieldPath
    message: str


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML 1.2 (JSON is YAML too) with yaml-rs: about 15x faster than PyYAML, duplicate keys refused,
    alias expansion bounded. A syntax error becomes a located ConfigError."""
    try:
        return yaml_rs.loads(text, parse_datetime=False, alias_limits=_ALIAS_LIMITS)
    except yaml_rs.YAMLDecodeError as exc:
        detail = str(exc)
        found = _LINE.search(detail)
        reason = detail.strip().splitlines()[-1] if detail.strip() else "parse error"
        line = int(found.group(1)) if found else duplicate_key_line(text) if "duplicate" in detail else None
        raise ConfigError([ConfigIssue(source, "document", "", f"not valid YAML: {reason}", line)]) from None


def validate_model(model: type[M], data: Any) -> M:
    """Validate plain config data the way JSON Schema reads it: a number, a boolean and a string are what they
    are (no "80" for a port, no "yes" for true), so `xgate validate` and the exported JSON schema accept the
    same files. A before-validator's result is checked as Python data, strictly: it must hand on a tuple where
    the field is a tuple. Errors: pydantic's ValidationError (see messages.explain)."""
    try:
        text = json.dumps(data, allow_nan=False)
    except (TypeError, ValueError):  # a YAML value JSON has no word for (binary, NaN): pydantic judges it
        return model.model_validate(data, strict=True)
    return model.model_validate_json(text, strict=True)


def validate_object(
    kind: str, data: Any, label: str, prefix: FieldPath = (), compactor: Compactor | None = None
) -> tuple[BaseModel | None, list[_Problem]]:
    """Validate one object of `kind`; on failure return every problem with its field path. With a `compactor`,
    the object shares what it holds alike with the others it compacted (see config.compact)."""
    try:
        obj = validate_model(KINDS[kind], data)
        return (compactor.compact(obj) if compactor is not None else obj), []
    except ValidationError as exc:
        return None, [_Problem(label, prefix + loc, message) for loc, message in explain(exc.errors())]


def parse_document(text: str, source: str, cache: ObjectCache | None = None) -> ConfigSet:
    """Parse one YAML/JSON document holding listeners, upstreams, routes and global plugin defaults.

    A document-level problem (bad YAML, unknown section) raises ConfigError. An invalid object is left out
    and its issues travel in `ConfigSet.issues`, so the next stage can still report every other problem.

    With a `cache` (kept by the caller from one revision to the next) a document in the plain layout (see
    config.pieces) is read piece by piece, and a piece whose text did not change is not read again; the
    result is the same as a whole parse (a randomized test holds it to that).
    """
    if cache is not None and cache.last is not None and cache.last[0] == text:
        return cache.last[1]
    config = parse_change(text, source, cache) if cache is not None else None
    if config is None:
        layout = split_document(text) if cache is not None else None
        try:
            config = _parse(text, source, cache, layout)
        except Unsplit:
            config = _parse(text, source, cache, None)
    if cache is not None:
        cache.last = (text, config)
    return config


def parse_change(text: str, source: str, cache: ObjectCache, most: int | None = None) -> ConfigSet | None:
    """parse_document for a save that changed a few items of one list of the last revision `cache` read without
    an issue (at most `most` items, if given): only the stretch of items that changed is cut and read, and
    spliced into that revision's lists, so a change of one route of 10,000 does not touch the other 9,999 (~1
    ms instead of ~10 in a running control plane, whose caches are cold). None when that does not apply: then
    call parse_document."""
    if cache.last is not None and cache.last[0] == text:
        return cache.last[1]
    prior = cache.prior
    if prior is None or prior.source != source:
        return None
    change = resplit(prior.text, prior.layout, text)
    if change is None or (most is not None and len(change.texts) > most):
        return None
    section, kind, first, stop = change.section, SECTIONS[change.section], change.first, change.stop
    known = cache.known(section, change.layout.lists[section].indent)
    objects: list[BaseModel] = []
    for index, piece in enumerate(change.texts, start=first):
        obj = known.get(piece)
        if obj is None:
            try:
                loaded = load_piece(" " * change.layout.lists[section].indent + "-" + piece)
            except Unsplit:
                return None
            if not isinstance(loaded, list) or len(loaded) != 1:
                return None
            obj, _ = validate_object(kind, loaded[0], kind, (section, index), cache.compactor)
            if obj is None:
                return None  # an invalid object: read as usual, which reports it
        objects.append(obj)
    names: list[str] = list(map(_NAME, objects))
    taken, gone = prior.taken[section], set(prior.names[section][first:stop])
    if len(set(names)) != len(names) or any(name in taken and name not in gone for name in names):
        return None  # a name given twice: read as usual, which reports it
    taken -= gone
    taken |= set(names)
    for piece in prior.layout.lists[section].texts[first:stop]:
        known.pop(piece, None)
    known.update(zip(change.texts, objects, strict=True))
    prior.names[section] = prior.names[section][:first] + names + prior.names[section][stop:]
    prior.objects[section] = prior.objects[section][:first] + objects + prior.objects[section][stop:]
    config = _config_of(prior, text, source)
    cache.prior = replace(prior, text=text, layout=change.layout, config=config)
    cache.last = (text, config)
    return config


def _config_of(prior: Prior, text: str, source: str) -> ConfigSet:
    """The config of a revision without issues, from its objects and names by section."""
    paths = _Paths()
    for section, kind in SECTIONS.items():
        paths.add(kind, section, prior.names.get(section, []))
    objects: dict[str, Any] = prior.objects
    return ConfigSet(
        listeners=tuple(objects.get("listeners", ())),
        upstreams=tuple(objects.get("upstreams", ())),
        routes=tuple(objects.get("routes", ())),
        plugins=prior.config.plugins,
        secrets=tuple(objects.get("secrets", ())),
        source=source,
        paths=paths,
        text=text,
    )


def _document_data(text: str, source: str, cache: ObjectCache | None, layout: Layout | None) -> dict[Any, Any]:
    if layout is None or cache is None:
        data = load_yaml(text, source)
        if data is None:
            return {}
        if not isinstance(data, dict):
            message = "the top level must be a mapping (one document per file)"
            raise ConfigError([ConfigIssue(source, "document", "", message, 1)])
        return data
    entries = {}
    for key, entry in layout.entries:
        found, value = cache.entry(entry)
        if found != key:
            raise Unsplit
        entries[key] = value
    lists = {key: Items(items.indent, items.texts) for key, items in layout.lists.items()}
    return {key: entries[key] if key in entries else lists[key] for key in layout.order}


def _parse(text: str, source: str, cache: ObjectCache | None, layout: Layout | None) -> ConfigSet:
    data = _document_data(text, source, cache, layout)
    compactor = cache.compactor if cache is not None else Compactor()
    problems = [_Problem("document", (key,), "unknown section") for key in data if key not in TOP_LEVEL]
    if (version := data.get("xgate", "v1")) != "v1":
        problems.append(_Problem("document", ("xgate",), f"unsupported version {version!r}; use v1"))
    plugins = data.get("plugins") or {}
    if not isinstance(plugins, dict):
        problems.append(_Problem("document", ("plugins",), "must be a mapping of plugin name to settings"))
        plugins = {}
    found: dict[str, list[Any]] = {kind: [] for kind in KINDS}
    broken: set[tuple[str, str]] = set()
    where = _Paths()
    lines: dict[FieldPath, int] | None = None  # worked out at the first duplicate name, if any
    clean: dict[str, tuple[list[str], list[BaseModel]]] = {}  # per section, when all valid with unique names
    for section, kind in SECTIONS.items():
        items = data.get(section) or []
        if not isinstance(items, list | Items):
            problems.append(_Problem("document", (section,), "must be a list"))
            continue
        names, objects, issues = _objects(kind, section, items, cache, compactor)
        if not issues and len(set(names)) == len(names):  # all valid, no name twice: no need to look at each
            where.add(kind, section, cast(list[str], names))
            found[kind] += objects
            clean[section] = (cast(list[str], names), cast(list[BaseModel], objects))
            continue
        seen: dict[tuple[str, str], FieldPath] = {}
        for index, (name, obj) in enumerate(zip(names, objects, strict=True)):
            problems += issues.get(index, ())
            if obj is None:
                if isinstance(name, str):
                    broken.add((kind, name))
                continue
            key = (kind, str(getattr(obj, "name", "")))
            if key in seen:
                lines = line_map(text) if lines is None else lines
                first = line_of(lines, (*seen[key], "name"))
                message = f"duplicate name: the first {kind} {key[1]} is at line {first}"
                problems.append(_Problem(_label(kind, name, index), (section, index, "name"), message))
                continue
            seen[key] = (section, index)
            found[kind].append(obj)
        where.found.update(seen)
    if cache is not None:
        cache.rotate()
        cache.prior = None
    document_problems = [problem for problem in problems if problem.label == "document"]
    if document_problems:
        raise ConfigError(_locate(problems, text, source))
    config = ConfigSet(
        listeners=tuple(found["listener"]),
        upstreams=tuple(found["upstream"]),
        routes=tuple(found["route"]),
        plugins=plugins,
        secrets=tuple(found["secret"]),
        source=source,
        paths=where,
        issues=tuple(_locate(problems, text, source)) if problems else (),
        broken=frozenset(broken),
        text=text,
    )
    if cache is not None and layout is not None and not problems:
        by_name = {section: listed for section, (listed, _) in clean.items()}
        taken = {section: set(listed) for section, listed in by_name.items()}
        cache.prior = Prior(text, source, layout, config, by_name, {s: o for s, (_, o) in clean.items()}, taken)
    return config


class _Paths(Mapping[tuple[str, str], FieldPath]):
    """Where each object of a document is, (kind, name) -> (section, index), worked out for a list of valid
    objects only when asked: issues ask, and a save of 10,000 routes would otherwise spend ~2 ms on it."""

    def __init__(self) -> None:
        self.found: dict[tuple[str, str], FieldPath] = {}
        self._lists: list[tuple[str, str, list[str]]] = []  # (kind, section, the names of its items in order)

    def add(self, kind: str, section: str, names: list[str]) -> None:
        self._lists.append((kind, section, names))

    def _all(self) -> dict[tuple[str, str], FieldPath]:
        for kind, section, names in self._lists:
            keys = zip(repeat(kind), names)
            self.found.update(zip(keys, zip(repeat(section), range(len(names))), strict=False))  # repeat() never ends
        self._lists.clear()
        return self.found

    def __getitem__(self, key: tuple[str, str]) -> FieldPath:
        return self._all()[key]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


def _objects(
    kind: str, section: str, items: list[Any] | Items, cache: ObjectCache | None, compactor: Compactor
) -> tuple[list[object], list[BaseModel | None], dict[int, list[_Problem]]]:
    """Each item's name (as written) and validated object (None when invalid), and the invalid ones' problems
    by index. Items read piece by piece are handled as lists: 10,000 unchanged routes cost a few C loops."""
    issues: dict[int, list[_Problem]] = {}
    if not isinstance(items, Items):
        names: list[object] = []
        objects: list[BaseModel | None] = []
        for index, item in enumerate(items):
            name, obj = _validated(kind, section, index, item, cache, issues, compactor)
            names.append(name)
            objects.append(obj)
        return names, objects, issues
    assert cache is not None
    known, kept = cache.items(section, items.indent)
    texts = items.texts
    objects = list(map(known.get, texts))
    prefix = " " * items.indent + "-"
    written: dict[int, object] = {}  # the names of invalid items, as written
    for index in [index for index, obj in enumerate(objects) if obj is None]:
        loaded = load_piece(prefix + texts[index])
        if not isinstance(loaded, list) or len(loaded) != 1:
            raise Unsplit
        # Not by data in the cache (the repr of each item): its text is the key here.
        written[index], objects[index] = _validated(kind, section, index, loaded[0], None, issues, compactor)
    if not issues:
        kept.update(zip(texts, cast(list[BaseModel], objects), strict=True))
        return list(map(_NAME, objects)), objects, issues
    kept.update((text, obj) for text, obj in zip(texts, objects, strict=True) if obj is not None)
    return [written[i] if obj is None else _NAME(obj) for i, obj in enumerate(objects)], objects, issues


_NAME = attrgetter("name")


def _validated(
    kind: str,
    section: str,
    index: int,
    item: Any,
    cache: ObjectCache | None,
    issues: dict[int, list[_Problem]],
    compactor: Compactor,
) -> tuple[object, BaseModel | None]:
    """An item's name (as written) and validated object (None: invalid, its problems are put in `issues`). With a
    `cache`, an item whose data the previous revision had is not validated again."""
    name = item.get("name") if isinstance(item, dict) else None
    cache_key, obj = cache.get(kind, item) if cache is not None else (None, None)
    if obj is None:
        obj, problems = validate_object(kind, item, _label(kind, name, index), (section, index), compactor)
        if problems:
            issues[index] = problems
    if cache is not None and cache_key is not None and obj is not None:
        cache.put(cache_key, obj)
    return name, obj


def _label(kind: str, name: object, index: int) -> str:
    return f"{kind} {name if isinstance(name, str) else f'#{index + 1}'}"


def load_file(path: str | Path) -> ConfigSet:
    """Read and parse one config file (see parse_document for which problems raise)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue(str(file), "document", "", f"cannot read: {exc}")]) from None
    return parse_document(text, str(file), ObjectCache())  # piece by piece: each item's YAML data is short-lived


def _locate(problems: list[_Problem], text: str, source: str) -> list[ConfigIssue]:
    """Turn problems into issues with lines; the field path drops the section/index the label already names."""
    lines = line_map(text)
    issues = []
    for problem in problems:
        path = problem.path
        line = line_of(lines, path)
        shown = path[2:] if problem.label != "document" else path
        issues.append(ConfigIssue(source, problem.label, ".".join(str(p) for p in shown), problem.message, line))
    return issues
