"""The one exception tree of xgate.

XgateError
├── ConfigError        a config revision was rejected; carries every ConfigIssue found
├── ProxyError         a child process (Envoy, a service) could not be started or answered badly
├── PortInUseError     a port a server needs is held by another process (named when it can be found)
├── PolicyLoadError    an auth policy's import path could not be imported or does not name a callable
└── RuleError          a declarative policy (xgate.authz.rules) asks what Envoy's RBAC filter cannot enforce
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class XgateError(Exception):
    """Root of every error xgate raises on purpose."""


@dataclass(frozen=True, order=True)
class ConfigIssue:
    """One problem in one config object, located as precisely as we can.

    `source` is the file path or etcd key, `obj` the object ("route hello"), `field` a dotted path
    inside it ("match.path.regex"), `line` the 1-based line in the source when known.
    """

    source: str
    obj: str
    field: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.source + (f":{self.line}" if self.line else "")
        what = self.obj + (f" field {self.field}" if self.field else "")
        return f"{where}: {what}: {self.message}"


class ConfigError(XgateError):
    """A config revision is invalid; nothing of it was applied."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: tuple[ConfigIssue, ...] = tuple(issues)
        count = len(self.issues)
        head = f"{count} config issue{'s' if count != 1 else ''}"
        super().__init__(head + "".join(f"\n  {issue}" for issue in self.issues))


class ProxyError(XgateError):
    """Envoy or a service process could not be started, or did not become ready."""


class PortInUseError(XgateError):
    """A port a server needs is held by another process; the message names the port, what it is for and the
    holder when it can be found (see xgate.listen)."""


class PolicyLoadError(XgateError):
    """An auth policy ("pkg.module:name") could not be loaded; `path` is the import path."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"policy {path!r}: {reason}")


class RuleError(XgateError, ValueError):
    """A condition or rule the declarative policy API cannot express, with the reason (raised where it is
    written, so importing the module fails with it)."""
