"""Read the files that secrets name (certificates, keys, CA bundles) into the secrets themselves.

A secret written with `cert_file`/`key_file`/`ca_file` becomes one holding the PEM text, checked like an
inline one (the key belongs to the certificate, each part parses), so the control plane serves file-based
and etcd-stored secrets alike: inline, over SDS. A file that cannot be read or does not hold what it should is
an issue of the secret, with the config file and line; for a config file that refuses the revision, so a
half-done rotation (a new certificate next to the old key) is never served and the last good one stays.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from xgate.config.load import ConfigSet
from xgate.config.messages import explain
from xgate.config.tls import REVEAL, Secret
from xgate.errors import ConfigIssue

log = logging.getLogger("xgate.config.secrets")
_INLINE = {"cert_file": "cert", "key_file": "key", "ca_file": "ca"}
MAX_FILE = 1024 * 1024  # a PEM bundle is kilobytes; a bigger file is a wrong path


def _read(path: Path) -> bytes:
    with path.open("rb") as file:
        data = file.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise OSError(f"larger than {MAX_FILE // 1024} KiB: not a PEM file")
    return data


@dataclass
class SecretFiles:
    """Resolves secrets' files; remembers every path it read (`read`: path -> bytes, None when unreadable) so
    the file source can watch them and tell a rotation from no change. Warns once per key file that every
    user may read. `reader` reads one file (tests and the file source may supply their own)."""

    reader: Callable[[Path], bytes] = _read
    read: dict[Path, bytes | None] = field(default_factory=dict)
    _warned: set[Path] = field(default_factory=set)
    _resolved: dict[str, tuple[Secret, tuple[bytes | None, ...], Secret]] = field(default_factory=dict)

    def resolve(self, config: ConfigSet) -> ConfigSet:
        """`config` with each file-based secret holding its files' content; the ones that fail are left out
        and their issues added (located at the file and line of the secret)."""
        self.read = {}
        if not any(secret.files for secret in config.secrets):
            self._resolved = {}
            return config
        secrets: list[Secret] = []
        issues: list[ConfigIssue] = []
        broken: set[tuple[str, str]] = set()
        resolved: dict[str, tuple[Secret, tuple[bytes | None, ...], Secret]] = {}
        for secret in config.secrets:
            if not secret.files:
                secrets.append(secret)
                continue
            base = Path(config.source_of("secret", secret.name).source).parent
            contents: dict[str, bytes | None] = {}
            problems: list[tuple[str, str]] = []
            for field_name, written in secret.files.items():
                path = (base / written).absolute()
                try:
                    contents[field_name] = self.read[path] = self.reader(path)
                except OSError as exc:
                    contents[field_name] = self.read[path] = None
                    problems.append((field_name, f"cannot read {written}: {exc.strerror or exc}"))
                    continue
                if field_name == "key_file":
                    self._check_mode(path, written)
            key = tuple(contents.values())
            previous = self._resolved.get(secret.name)
            if not problems and previous is not None and previous[0] is secret and previous[1] == key:
                secrets.append(previous[2])  # unchanged: the same object, so later stages see no change
                resolved[secret.name] = previous
                continue
            made = None if problems else _inline(secret, contents, problems)
            if made is None:
                broken.add(("secret", secret.name))
                issues += [config.issue("secret", secret.name, where, message) for where, message in problems]
                continue
            secrets.append(made)
            resolved[secret.name] = (secret, key, made)
        self._resolved = resolved
        return replace(
            config,
            secrets=tuple(secrets),
            issues=config.issues + tuple(issues),
            broken=config.broken | frozenset(broken),
        )

    def _check_mode(self, path: Path, written: str) -> None:
        try:
            mode = path.stat().st_mode
        except OSError:
            return
        if mode & stat.S_IROTH and path not in self._warned:
            self._warned.add(path)
            log.warning("private key %s is readable by every user (mode %o): chmod 600 it", written, stat.S_IMODE(mode))
        elif not mode & stat.S_IROTH:
            self._warned.discard(path)


def _inline(secret: Secret, contents: dict[str, bytes | None], problems: list[tuple[str, str]]) -> Secret | None:
    """The secret with its files' text in place of the paths; None (and `problems`) when that is not valid."""
    data: dict[str, Any] = secret.model_dump(mode="json", exclude_unset=True, context={REVEAL: True})
    for field_name, content in contents.items():
        del data[field_name]
        assert content is not None
        try:
            data[_INLINE[field_name]] = content.decode("ascii")
        except UnicodeDecodeError:
            problems.append((field_name, f"{secret.files[field_name]} is not PEM text"))
    if problems:
        return None
    try:
        return Secret.model_validate(data)
    except ValidationError as exc:
        for loc, message in explain(exc.errors()):
            part = str(loc[0]) if loc else message.split(" ", 1)[0]  # "key does not belong ..." is the key's
            where = next((f for f, i in _INLINE.items() if i == part and f in contents), next(iter(contents)))
            problems.append((where, message))
        return None


def resolve_secret_files(config: ConfigSet) -> ConfigSet:
    """SecretFiles().resolve(config): for one-off loads (validate, translate, apply)."""
    return SecretFiles().resolve(config)
