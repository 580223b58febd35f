"""The Python auth policy API: what a policy receives, what it answers, and how policies are loaded and reloaded.

Writing a policy
----------------
A policy is a callable taking `(request, claims)` and returning `Allow(...)` or `Deny(...)`::

    from xgate.authz import Allow, Deny

    def allow_admins(request, claims):
        if "admin" in claims.get("roles", []):
            return Allow(headers={"x-xgate-user": claims["sub"]})
        return Deny(403, body="admins only")

- `request` is a frozen `Request`: `method`, `path` (with the query string), `headers` (read-only mapping,
  lower-case names; repeated headers joined with ","), `source` (the client's IP address), `route` (the name
  of the xgate route).
- `claims` is the JWT payload Envoy's jwt_authn already verified (a fresh dict per request), or `{}` when the
  route has no jwt plugin. Integral numbers (`exp`, `iat`) are ints.
- `Allow(headers)` lets the request through, setting `headers` on the request to the upstream (they replace
  any header of that name the client sent). `Deny(status=403, body="", headers={})` answers the client.
- The callable may be a function, an `async def` function, or a class: a class is instantiated once, with no
  arguments, when it is loaded, and its instance is called (state lives on the instance and survives reloads
  of the config as long as neither the import path nor the module's source changes).
- Config names it by import path, `"pkg.module:name"` (`name` may be dotted: `"pkg.module:Class.method"`).

How a policy runs (see runner.py)
---------------------------------
- `async def` policies run on the service's event loop under the per-call timeout (default 100 ms); they must
  not block (no `time.sleep`, no blocking I/O).
- Plain functions run in a bounded thread pool, so that one that hangs costs a thread, not the service.
  Decorate a plain function with `@inline` to run it in the thread handling the check instead (cheaper: no
  hop to the pool and back; for policies that only look at the request and claims): an inline policy cannot
  be interrupted, so a late answer is discarded, and one that hangs holds one of the server's threads.
  A plain function that provably only reads the request and claims (no module, no I/O, no `while`: see
  pure.py) runs inline without the mark; the log says which way each policy runs and why. Such a call that
  still takes over 5 ms sends that function back to the pool (runner.py).
- A policy that raises, answers after the timeout, or returns anything but Allow/Deny gets the service's
  failure answer: `Deny(403)` unless the service was configured otherwise (another status, or fail open).
  Every such event is logged with the route and the policy's import path, and counted.

Reloading
---------
`PolicyRegistry.load({name: import path})` replaces the whole set at once. A module whose source changed since
it was imported is re-imported (only that module, not what it imports). A policy that fails to load is
reported, and the version of it loaded before (if any) keeps serving.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import logging
import os
import re
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import Any, Literal, TypeAlias, TypeVar

from xgate.authz.pure import impurity
from xgate.errors import PolicyLoadError

log = logging.getLogger("xgate.authz")

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
_BAD_VALUE = re.compile(r"[\r\n\x00]")
_EMPTY: Mapping[str, str] = MappingProxyType({})


def _frozen_headers(headers: Mapping[str, str], what: str) -> Mapping[str, str]:
    """Validated, lower-cased, read-only copy: a header a policy sets must not smuggle a second one."""
    if not isinstance(headers, Mapping):
        raise TypeError(f"{what} headers must be a mapping, not {type(headers).__name__}")
    if not headers:
        return _EMPTY
    checked: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"{what} header {name!r}: names and values must be str")
        lowered = name.lower()
        if not _HEADER_NAME.fullmatch(lowered):
            raise ValueError(f"{what} header name {name!r} is not a valid HTTP header name")
        if _BAD_VALUE.search(value):
            raise ValueError(f"{what} header {name!r}: value contains CR, LF or NUL")
        checked[lowered] = value
    return MappingProxyType(checked)


@dataclass(frozen=True, slots=True)
class Request:
    """What a policy sees of the HTTP request. `headers` is read-only with lower-case names."""

    method: str
    path: str
    headers: Mapping[str, str]
    source: str
    route: str


@dataclass(frozen=True, slots=True)
class Allow:
    """Let the request through; `headers` are set on the request to the upstream (replacing the client's)."""

    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", _frozen_headers(self.headers, "Allow"))


@dataclass(frozen=True, slots=True)
class Deny:
    """Answer the client with `status` (300-599), `body` and `headers`."""

    status: int = 403
    body: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if type(self.status) is not int or not 300 <= self.status <= 599:
            raise ValueError(f"Deny status must be an int from 300 to 599, not {self.status!r}")
        if not isinstance(self.body, str):
            raise TypeError(f"Deny body must be str, not {type(self.body).__name__}")
        object.__setattr__(self, "headers", _frozen_headers(self.headers, "Deny"))


Decision: TypeAlias = Allow | Deny
Policy: TypeAlias = Callable[[Request, dict[str, Any]], Decision | Awaitable[Decision]]

F = TypeVar("F", bound=Callable[..., Any])
INLINE_ATTRIBUTE = "__xgate_inline__"
CACHE_ATTRIBUTE = "__xgate_cache_seconds__"


def inline(policy: F) -> F:
    """Mark a plain (non-async) policy to run where the check is handled instead of in the thread pool.

    For quick policies only: an inline policy cannot be interrupted, so one that hangs keeps one of the
    service's threads for good. A late answer is still discarded (the request gets the failure answer) and
    logged.
    """
    setattr(policy, INLINE_ATTRIBUTE, True)
    return policy


def cacheable(seconds: float) -> Callable[[F], F]:
    """Declare that a policy's decision depends on nothing but the route, the method and the verified claims, so
    `xgate authz` may answer the same (route, method, claims) from its last decision for `seconds` without
    calling it (on the HTTP transport, `transport: http`; up to 10,000 answers per process). A policy reading
    headers, the path, the source, the time or any state must not be cacheable."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not 0 < seconds <= 300:
        raise ValueError(f"cacheable(seconds): from 0 to 300 seconds, not {seconds!r}")

    def mark(policy: F) -> F:
        setattr(policy, CACHE_ATTRIBUTE, float(seconds))
        return policy

    return mark


# -- loading --------------------------------------------------------------------------------------------------

Mode: TypeAlias = Literal["async", "thread", "inline"]
_IDENTIFIERS = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    """A policy ready to run: `call` is the function or the class's instance, `mode` how runner.py calls it."""

    name: str
    path: str
    call: Callable[..., Any]
    mode: Mode
    generation: int = 0  # of its module: a reload of the module makes a new LoadedPolicy
    cache_seconds: float = 0.0  # how long a decision may be reused (`cacheable`); 0: never
    proven: bool = False  # a plain function run inline because pure.impurity found it only reads its arguments


def load_policy(path: str) -> Callable[..., Any]:
    """Import `"pkg.module:name"` and return the policy callable (a class is instantiated with no arguments).

    Errors: PolicyLoadError naming `path` when the path is malformed, the import fails (any exception the
    module raises), the attribute is missing, instantiating a class fails, or the object is not callable.
    """
    module_name, attributes = _split(path)
    return _resolve(path, _import(path, module_name), attributes)


def _split(path: str) -> tuple[str, str]:
    module_name, colon, attributes = path.partition(":") if isinstance(path, str) else ("", "", "")
    if not colon or not _IDENTIFIERS.fullmatch(module_name) or not _IDENTIFIERS.fullmatch(attributes):
        raise PolicyLoadError(str(path), 'not an import path of the form "pkg.module:name"')
    return module_name, attributes


def _import(path: str, module_name: str, *, reload: bool = False) -> ModuleType:
    try:
        module = sys.modules.get(module_name)
        if module is None:
            return importlib.import_module(module_name)
        if reload:
            _drop_bytecode(module)
            return importlib.reload(module)
        return module
    except (Exception, SystemExit) as exc:  # a policy module's import must not stop the control plane
        raise PolicyLoadError(path, f"importing {module_name} failed: {type(exc).__name__}: {exc}") from exc


def _resolve(path: str, module: ModuleType, attributes: str) -> Callable[..., Any]:
    target: Any = module
    for attribute in attributes.split("."):
        try:
            target = getattr(target, attribute)
        except AttributeError:
            raise PolicyLoadError(path, f"{module.__name__} has no attribute {attributes}") from None
    if isinstance(target, type):
        try:
            instance = target()
        except Exception as exc:
            raise PolicyLoadError(path, f"{attributes}() failed: {type(exc).__name__}: {exc}") from exc
        if not callable(instance):
            raise PolicyLoadError(path, f"class {attributes} has no __call__ method")
        return instance  # type: ignore[no-any-return]
    if not callable(target):
        raise PolicyLoadError(path, f"{attributes} is not callable (it is a {type(target).__name__})")
    return target  # type: ignore[no-any-return]


def _mode(call: Callable[..., Any]) -> Mode:
    dunder_call = getattr(call, "__call__", None)  # noqa: B004 - the bound method of a class-based policy
    if inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(dunder_call):
        return "async"
    if getattr(call, INLINE_ATTRIBUTE, False) or getattr(dunder_call, INLINE_ATTRIBUTE, False):
        return "inline"
    return "thread"


def _source_digest(module: ModuleType) -> bytes | None:
    filename = getattr(module, "__file__", None)
    if not filename or not filename.endswith(".py"):
        return None
    try:
        with open(filename, "rb") as source:
            return hashlib.sha256(source.read()).digest()
    except OSError:
        return None


def _drop_bytecode(module: ModuleType) -> None:
    # The bytecode cache is checked by mtime (whole seconds) and size: an edit within the same second that
    # keeps the size would otherwise reload the old code.
    filename = getattr(module, "__file__", None)
    if filename:
        with contextlib.suppress(OSError, NotImplementedError, ValueError):
            os.unlink(importlib.util.cache_from_source(filename))


class PolicyRegistry:
    """The policies by name. `load` swaps the whole set at once; `get` is what the service calls per request."""

    def __init__(self) -> None:
        self._policies: Mapping[str, LoadedPolicy] = MappingProxyType({})
        self._errors: Mapping[str, PolicyLoadError] = MappingProxyType({})
        self._modules = PolicyModules()

    def get(self, name: str) -> LoadedPolicy | None:
        return self._policies.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._policies

    @property
    def policies(self) -> Mapping[str, LoadedPolicy]:
        return self._policies

    @property
    def errors(self) -> Mapping[str, PolicyLoadError]:
        """The policies the last `load` could not load (those with a previous version still serve it)."""
        return self._errors

    def load(self, paths: Mapping[str, str], *, strict: bool = False) -> dict[str, PolicyLoadError]:
        """Make `paths` ({name: "pkg.module:name"}) the set of policies; returns {name: error} of those that
        failed to load, each also logged. Names absent from `paths` are dropped. `strict`: when any fails,
        nothing changes (the set as a whole is refused, as an xDS update is).

        A module already imported is re-imported when its source file changed; each module at most once per
        call. A policy whose path and module are unchanged keeps its object (a class's instance keeps its
        state). Blocking (imports run here): call it in a thread (`asyncio.to_thread`) if modules are slow.
        """
        importlib.invalidate_caches()
        modules: dict[str, ModuleType | PolicyLoadError] = {}
        loaded: dict[str, LoadedPolicy] = {}
        errors: dict[str, PolicyLoadError] = {}
        for name, path in paths.items():
            previous = self._policies.get(name)
            try:
                loaded[name] = self._load_one(name, path, previous, modules)
            except PolicyLoadError as exc:
                errors[name] = exc
                if strict:
                    log.error("policy %s failed to load (%s)", name, exc)
                elif previous is not None:
                    loaded[name] = previous
                    log.error("policy %s failed to load (%s); still serving %s", name, exc, previous.path)
                else:
                    log.error("policy %s failed to load (%s); requests for it are denied", name, exc)
        self._errors = MappingProxyType(dict(errors))
        if errors and strict:
            return errors
        self._policies = MappingProxyType(loaded)
        return errors

    def _load_one(
        self, name: str, path: str, previous: LoadedPolicy | None, modules: dict[str, ModuleType | PolicyLoadError]
    ) -> LoadedPolicy:
        module_name, attributes = _split(path)
        module = modules.get(module_name)
        if module is None:
            try:
                module = modules[module_name] = self._modules.fresh(path, module_name)
            except PolicyLoadError as exc:
                module = modules[module_name] = exc
        if isinstance(module, PolicyLoadError):
            raise PolicyLoadError(path, module.reason) from module.__cause__
        generation = self._modules.generation(module_name)
        if previous is not None and previous.path == path and previous.generation == generation:
            return previous
        call = _resolve(path, module, attributes)
        dunder_call = getattr(call, "__call__", None)  # noqa: B004 - a class-based policy's method may be marked
        seconds = float(getattr(call, CACHE_ATTRIBUTE, 0.0) or getattr(dunder_call, CACHE_ATTRIBUTE, 0.0))
        mode = _mode(call)
        if mode != "thread":
            return LoadedPolicy(name, path, call, mode, generation, seconds)
        why = impurity(call, (Allow, Deny, Request))
        if why is not None:
            log.info("policy %s (%s) runs in the policy pool: %s", name, path, why)
            return LoadedPolicy(name, path, call, mode, generation, seconds)
        log.info("policy %s (%s) runs inline: it only reads the request and the claims", name, path)
        return LoadedPolicy(name, path, call, "inline", generation, seconds, proven=True)


class PolicyModules:
    """The modules policies come from, imported once and again when their source changed (by content: see
    _drop_bytecode). Shared by `xgate authz` (PolicyRegistry) and the control plane (ir/policies.py); one
    thread at a time (imports hold Python's import lock anyway)."""

    def __init__(self) -> None:
        self._digests: dict[str, bytes | None] = {}  # module -> digest of the source it was (re)imported from
        self._generations: dict[str, int] = {}
        self._lock = threading.Lock()

    def generation(self, module_name: str) -> int:
        """How many times `fresh` (re)imported the module: a policy of another generation is another object."""
        return self._generations.get(module_name, 0)

    def fresh(self, path: str, module_name: str) -> ModuleType:
        """The module, re-imported if its source changed since this object last (re)imported it; raises
        PolicyLoadError (its cause: what the import raised), and the next call tries again."""
        with self._lock:
            known = module_name in self._digests
            current = sys.modules.get(module_name)
            changed = known and current is not None and _source_digest(current) != self._digests[module_name]
            module = _import(path, module_name, reload=changed)
            if changed or not known or current is None:
                self._digests[module_name] = _source_digest(module)
                self._generations[module_name] = self._generations.get(module_name, 0) + 1
            return module

    def find(self, path: str) -> object:
        """What `"pkg.module:name"` names, without instantiating a class (the control plane only looks)."""
        module_name, attributes = _split(path)
        target: Any = self.fresh(path, module_name)
        for attribute in attributes.split("."):
            try:
                target = getattr(target, attribute)
            except AttributeError:
                raise PolicyLoadError(path, f"{module_name} has no attribute {attributes}") from None
        return target
