"""Declarative policies: conditions on claims, method, path, headers and source that Envoy itself can enforce.

Writing one
-----------
In a policy module, next to plain Python policies::

    from xgate.authz import Deny, claims, method, rule

    admins_read_write = rule(
        claims.groups.contains("admin") & method.any_of("GET", "POST"),
        deny=Deny(403, body="admins only"),
    )

Config names it like any policy (`"mypkg.policies:admins_read_write"`). The control plane imports the module,
finds a `Rule` and lowers it to Envoy's RBAC filter (native matchers, CEL for a claim's presence and a header's
value; see
translate/plugins/policy_rbac.py): no Python runs per request. A `Rule` is also a plain policy (an `@inline`
callable), so `xgate authz` runs it with the same decisions wherever it is not lowered.

What a condition may test (each test is false, never an error, when what it reads is missing or of another type):
- `claims.<name>` or `claims["<name>"]` (nested: `claims["realm"]["roles"]`), the verified JWT payload:
  `.exists()`, `.equals(v)`, `.contains(v)` (a list claim has v), `.any_of(v, ...)` (the claim is one of the
  values, or a list claim has one of them). Values are str, bool, int (within +-2**53) or float; numbers
  compare as numbers (1 equals 1.0), a bool never equals a number.
- `method`: `.equals(m)`, `.any_of(m, ...)`.
- `path` (without the query string): `.equals(p)`, `.startswith(p)`, `.any_of(p, ...)`.
- `header("<name>")`: `.exists()`, `.equals(v)`, `.startswith(v)`, `.any_of(v, ...)`; repeated headers are
  joined with ",".
- `source`: `.within("10.0.0.0/8", ...)`, the client's address (the connection's peer).
Combine with `&`, `|`, `~` or `all_of(...)`, `any_of(...)`, `not_(...)`; Python's `and`/`or`/`not` on conditions
raise (they cannot be overloaded and would silently keep one side).

What the API cannot express raises `RuleError` when the module is imported, with the reason: the control plane
refuses the config with it (at `plugins.policy.policies.<name>`), and so does `xgate authz`. For anything else
(a lookup, state, the time, the body) write a plain policy function.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from xgate.authz.conditions import (
    AllOf,
    AnyOf,
    Attribute,
    ClaimTest,
    Condition,
    Not,
    RequestOp,
    RequestTest,
    Scalar,
    SourceTest,
    all_of,
    kind,
)
from xgate.authz.policy import Allow, Decision, Deny, Request
from xgate.errors import RuleError

_MAX_EXACT = 2**53  # JSON numbers are doubles in Envoy: integers beyond this do not compare exactly
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
MAX_ALTERNATIVES = 16  # RBAC policies one rule may become (source ranges under and/or multiply them)
_ALLOW = Allow()

# -- what a condition may read --------------------------------------------------------------------------------


def _literal(value: object, what: str) -> Scalar:
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if abs(value) > _MAX_EXACT:
            raise RuleError(f"{what}: {value} is beyond +-2**53, where JSON numbers (doubles) stop comparing exactly")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RuleError(f"{what}: {value} is not a finite number")
        return value
    raise RuleError(f"{what} compares with a str, bool, int or float, not {kind(value)}")


def _strings(values: tuple[object, ...], what: str, *, at_least: int = 1) -> tuple[str, ...]:
    if len(values) < at_least:
        raise RuleError(f"{what} needs at least {at_least} value")
    for value in values:
        if not isinstance(value, str):
            raise RuleError(f"{what} compares with str values, not {kind(value)}")
    return tuple(values)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Claim:
    """A claim of the verified JWT payload, by its path of keys (not a condition: call one of its tests)."""

    path: tuple[str, ...]

    def __getitem__(self, key: str) -> Claim:
        if not isinstance(key, str) or not key:
            raise RuleError(f"claim keys are non-empty str, not {key!r}")
        return Claim((*self.path, key))

    def exists(self) -> Condition:
        return ClaimTest(self.path, "exists")

    def equals(self, value: Scalar) -> Condition:
        return ClaimTest(self.path, "equals", (_literal(value, f"claim {self._name}.equals"),))

    def contains(self, value: Scalar) -> Condition:
        return ClaimTest(self.path, "contains", (_literal(value, f"claim {self._name}.contains"),))

    def any_of(self, *values: Scalar) -> Condition:
        if not values:
            raise RuleError(f"claim {self._name}.any_of needs at least one value")
        return ClaimTest(self.path, "any_of", tuple(_literal(v, f"claim {self._name}.any_of") for v in values))

    @property
    def _name(self) -> str:
        return ".".join(self.path)

    def __bool__(self) -> bool:
        raise RuleError(f"claim {self._name} is not a condition: use .exists(), .equals(v), .contains(v), .any_of(...)")


class _Claims:
    """`claims.groups` or `claims["groups"]`: the claim of that name in the verified JWT payload."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Claim:
        if name.startswith("_"):
            raise AttributeError(name)
        return Claim((name,))

    def __getitem__(self, name: str) -> Claim:
        return Claim(())[name]


class _Attribute:
    """One attribute of the request (method, path or a header) and the tests it allows."""

    __slots__ = ("_attribute", "_header", "_name")

    def __init__(self, attribute: Attribute, header: str = "") -> None:
        self._attribute: Attribute = attribute
        self._header = header
        self._name = f"header({header!r})" if header else attribute

    def _test(self, op: RequestOp, values: tuple[object, ...], at_least: int = 1) -> Condition:
        checked = _strings(values, f"{self._name}.{op}", at_least=at_least)
        if self._attribute == "method":
            for value in checked:
                if not _TOKEN.fullmatch(value):
                    raise RuleError(f"method {value!r} is not an HTTP method")
        return RequestTest(self._attribute, op, checked, self._header)

    def equals(self, value: str) -> Condition:
        return self._test("equals", (value,))

    def any_of(self, *values: str) -> Condition:
        return self._test("any_of", values)


class _StartsWith(_Attribute):
    __slots__ = ()

    def startswith(self, prefix: str) -> Condition:
        return self._test("startswith", (prefix,))


class _Header(_StartsWith):
    __slots__ = ()

    def exists(self) -> Condition:
        return self._test("exists", (), at_least=0)


def header(name: str) -> _Header:
    """A request header by name (any case); pseudo-headers are `method` and `path`."""
    if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name.lower()):
        raise RuleError(f"header({name!r}): not an HTTP header name (for :method and :path use method and path)")
    return _Header("header", name.lower())


class _Source:
    """The client's address: the peer of the connection Envoy accepted."""

    __slots__ = ()

    def within(self, *networks: str) -> Condition:
        if not networks:
            raise RuleError("source.within needs at least one network")
        normalized: list[str] = []
        for network in _strings(networks, "source.within"):
            try:
                normalized.append(str(ipaddress.ip_network(network, strict=True)))
            except ValueError as exc:
                raise RuleError(f"source.within: {network!r} is not a network like 10.0.0.0/8 ({exc})") from None
        return SourceTest(tuple(normalized))


claims = _Claims()
method = _Attribute("method")
path = _StartsWith("path")
source = _Source()


# -- rules ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """A declarative policy: allow when `allow` holds, else answer `deny`. The control plane lowers it to Envoy;
    called, it is a plain `@inline` policy with the same decisions (how `xgate authz` runs one not lowered)."""

    allow: Condition
    deny: Deny
    __xgate_inline__: ClassVar[bool] = True  # policy.INLINE_ATTRIBUTE: pure and quick, no thread hop

    def __call__(self, request: Request, claims: dict[str, Any]) -> Decision:
        return _ALLOW if self.allow.evaluate(request, claims) else self.deny


def rule(allow: Condition, *, deny: Deny | None = None) -> Rule:
    """A policy allowing the requests `allow` holds for and answering the others with `deny` (default
    `Deny(403)`). Raises RuleError for anything Envoy's RBAC filter could not enforce as written."""
    if not isinstance(allow, Condition):
        raise RuleError(
            f"rule() allows on a condition built from claims, method, path, header and source, not {kind(allow)}; "
            "for logic of your own write a plain policy function"
        )
    if deny is None:
        deny = Deny(403)
    elif not isinstance(deny, Deny):
        raise RuleError(f"rule(deny=...) takes a Deny(status, body, headers), not {kind(deny)}")
    count = len(alternatives(allow))
    if count > MAX_ALTERNATIVES:
        raise RuleError(
            f"this rule needs {count} RBAC policies in Envoy (at most {MAX_ALTERNATIVES}): claims.x.exists() and "
            "header values mixed with other tests under | and & multiply them; test them once at the top, e.g. "
            "claims.x.exists() & (...), or a claim with .any_of/.equals of the values it may have"
        )
    return Rule(allow, deny)


Alternative = tuple[Condition | None, Condition | None]


def native(test: Condition) -> bool:
    """Whether Envoy's RBAC matchers (principals) test this exactly as `evaluate` does: all but a claim's
    presence (a metadata matcher's present_match ignores lists and objects) and a header's value (since
    CVE-2026-26308 RBAC's header matcher meets a repeated header when one of its values does, where the Python
    path sees the values joined with ","; CEL's request.headers joins them too), which need CEL."""
    if isinstance(test, ClaimTest):
        return test.op != "exists"
    return not (isinstance(test, RequestTest) and test.attribute == "header" and test.op != "exists")


def alternatives(condition: Condition) -> list[Alternative]:
    """(native part, CEL part) pairs, the condition holding when one pair's two parts do (None: no test).

    An RBAC policy ANDs its principals (native matchers, much cheaper per request: measured 8% of a route's
    throughput against 27% for the same test in CEL) and its CEL condition; policies are ORed. So the tests only
    CEL can make (`claims.x.exists()`) are split from the rest, in as few pairs as the and/or/not structure
    allows: one when they sit apart (`claims.x.exists() & (...)`), none when there is none."""
    return _split(_negated(condition, negate=False))


def _negated(condition: Condition, *, negate: bool) -> Condition:
    """The condition with every `not` pushed down to a single test (De Morgan)."""
    if isinstance(condition, Not):
        return _negated(condition.part, negate=not negate)
    if isinstance(condition, AllOf | AnyOf):
        parts = tuple(_negated(part, negate=negate) for part in condition.parts)
        return AnyOf(parts) if isinstance(condition, AllOf) == negate else AllOf(parts)
    return Not(condition) if negate else condition


def _tests(condition: Condition) -> list[Condition]:
    if isinstance(condition, AllOf | AnyOf):
        return [test for part in condition.parts for test in _tests(part)]
    return _tests(condition.part) if isinstance(condition, Not) else [condition]


def _split(condition: Condition) -> list[Alternative]:
    kinds = [native(test) for test in _tests(condition)]
    if not any(kinds):
        return [(None, condition)]
    if all(kinds):
        return [(condition, None)]
    assert isinstance(condition, AllOf | AnyOf)  # a single test is one kind or the other
    natives = [part for part in condition.parts if all(native(t) for t in _tests(part))]
    cels = [part for part in condition.parts if not any(native(t) for t in _tests(part))]
    placed = {id(part) for part in natives + cels}
    mixed = [part for part in condition.parts if id(part) not in placed]
    if isinstance(condition, AnyOf):
        found: list[Alternative] = [(_joined(AnyOf, natives), None)] if natives else []
        found += [(None, _joined(AnyOf, cels))] if cels else []
        return found + [alternative for part in mixed for alternative in _split(part)]
    combined: list[Alternative] = [(_joined(AllOf, natives), _joined(AllOf, cels))]
    for part in mixed:
        combined = [(_both(s1, s2), _both(r1, r2)) for s1, r1 in combined for s2, r2 in _split(part)]
        if len(combined) > MAX_ALTERNATIVES:
            break  # too many already: rule() refuses it
    return combined


def _joined(kind_: type[AllOf | AnyOf], parts: list[Condition]) -> Condition | None:
    return None if not parts else parts[0] if len(parts) == 1 else kind_(tuple(parts))


def _both(first: Condition | None, second: Condition | None) -> Condition | None:
    if first is None:
        return second
    return first if second is None else all_of(first, second)
