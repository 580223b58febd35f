"""A directory of config files read as one config: which files count, each parsed on its own, then merged."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xgate.config.lines import FieldPath
from xgate.config.load import ConfigSet, load_file, parse_document
from xgate.config.pieces import ObjectCache
from xgate.config.schema import KINDS
from xgate.config.secrets import resolve_secret_files
from xgate.errors import ConfigError, ConfigIssue

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def is_config_name(name: str) -> bool:
    """Whether a file of this name in a config directory is config: *.yaml, *.yml or *.json, and not hidden
    (a Kubernetes ConfigMap's `..data`, editors' `.name.swp` and `.#name` files)."""
    return name.endswith(CONFIG_SUFFIXES) and not name.startswith(".")


def config_files(root: Path) -> list[Path]:
    """The config files of a directory (see is_config_name), in name order, not in subdirectories."""
    return sorted(p for p in root.iterdir() if is_config_name(p.name) and p.is_file())


def load_path(path: str | Path) -> ConfigSet:
    """A config file, or a directory of them (see config_files) merged into one config; the same object name
    in two files is an error. The file source follows a directory by the same rules (parse_files). The files that
    secrets name are read into them (see config.secrets)."""
    root = Path(path)
    if not root.is_dir():
        return resolve_secret_files(load_file(root))
    documents: list[tuple[str, str]] = []
    unreadable: list[ConfigIssue] = []
    for file in config_files(root):
        try:
            documents.append((str(file), file.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            unreadable.append(ConfigIssue(str(file), "document", "", f"cannot read: {exc}"))
    if unreadable and not documents:
        raise ConfigError(unreadable)
    try:
        config = parse_files(str(root), documents)
    except ConfigError as exc:
        raise ConfigError(unreadable + list(exc.issues)) from None
    if unreadable:
        raise ConfigError(unreadable + list(config.issues))
    return resolve_secret_files(config)


def parse_files(
    root: str, documents: Sequence[tuple[str, str]], caches: dict[str, ObjectCache] | None = None
) -> ConfigSet:
    """The documents (source, text) of directory `root` parsed and merged into one config. With `caches`, each
    source keeps its own ObjectCache across calls (an unchanged file is not validated again).

    Errors: ConfigError when there is no document, or with every document-level issue of every document and
    the clashes between those that parsed."""
    if not documents:
        raise ConfigError([ConfigIssue(root, "document", "", "no *.yaml, *.yml or *.json file in this directory")])
    if caches is not None:
        for gone in caches.keys() - {source for source, _ in documents}:
            del caches[gone]
    parts: list[ConfigSet] = []
    errors: list[ConfigIssue] = []
    for source, text in documents:
        cache = caches.setdefault(source, ObjectCache()) if caches is not None else None
        try:
            parts.append(parse_document(text, source, cache))
        except ConfigError as exc:
            errors += exc.issues
    if errors:  # with the clashes between the files that did parse: every issue at once
        raise ConfigError(errors + (list(_merge_files(parts).issues) if parts else []))
    return _merge_files(parts)


def _merge_files(parts: list[ConfigSet]) -> ConfigSet:
    found: dict[str, list[Any]] = {kind: [] for kind in KINDS}
    sources: dict[tuple[str, str], str] = {}
    paths: dict[tuple[str, str], FieldPath] = {}
    texts = {part.source: part.text for part in parts}
    by_source = {part.source: part for part in parts}
    plugins: dict[str, Any] = {}
    issues = [issue for part in parts for issue in part.issues]
    for part in parts:
        for kind, objects in part.objects():
            for obj in objects:
                key = (kind, obj.name)
                if key in sources:
                    first = by_source[sources[key]].line_of(sources[key], (*paths[key], "name"))
                    also = f"{sources[key]}:{first}" if first is not None else sources[key]
                    issues.append(part.issue(kind, obj.name, "name", f"duplicate name: also defined in {also}"))
                    continue
                sources[key] = part.source
                paths[key] = part.paths.get(key, ())
                found[kind].append(obj)
        for plugin, settings in part.plugins.items():
            if plugin in plugins:
                issues.append(part.issue("document", "plugins", f"plugins.{plugin}", "set in two files"))
            plugins[plugin] = settings
    return ConfigSet(
        listeners=tuple(found["listener"]),
        upstreams=tuple(found["upstream"]),
        routes=tuple(found["route"]),
        plugins=plugins,
        secrets=tuple(found["secret"]),
        source=parts[0].source,
        paths=paths,
        sources=sources,
        issues=tuple(issues),
        text=parts[0].text,
        texts=texts,
    )
