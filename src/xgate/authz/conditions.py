"""Conditions of declarative policies: their types, and what each means in Python (Envoy's meaning, see
translate/plugins/policy_rbac.py, is held to it by tests)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from xgate.authz.policy import Request
from xgate.errors import RuleError

Scalar: TypeAlias = str | bool | int | float
_URL_PATH = re.compile(r"[?#]")  # Envoy's request.url_path: the path without query string or fragment


class Condition:
    """A test on one request; combine with `&`, `|`, `~`. `evaluate` is the Python meaning Envoy's matches."""

    __slots__ = ()

    def evaluate(self, request: Request, claims: Mapping[str, Any]) -> bool:
        raise NotImplementedError

    def __and__(self, other: object) -> Condition:
        return all_of(self, _condition(other, "&"))

    def __or__(self, other: object) -> Condition:
        return any_of(self, _condition(other, "|"))

    def __invert__(self) -> Condition:
        return not_(self)

    def __bool__(self) -> bool:
        raise RuleError("a condition has no truth value: combine conditions with &, |, ~ (or all_of, any_of, not_)")


def _condition(value: object, where: str) -> Condition:
    if not isinstance(value, Condition):
        raise RuleError(f"{where} combines conditions, not {kind(value)}")
    return value


def kind(value: object) -> str:
    """What a value given where a condition belongs is, for an error message."""
    if isinstance(value, bool):
        return "bool (== on a claim, method, path or header is not a test: use .equals(v))"
    name = type(value).__name__
    return "a claim (call .exists(), .equals(v), ...)" if name == "Claim" else name


# -- tests ----------------------------------------------------------------------------------------------------

MISSING: Any = object()


def same(value: Any, expected: Scalar) -> bool:
    """CEL's equality of a JSON value with a literal: numbers as doubles, a bool only with a bool."""
    if isinstance(expected, bool) or isinstance(value, bool):
        return type(value) is type(expected) and value == expected
    if isinstance(expected, str):
        return isinstance(value, str) and value == expected
    return isinstance(value, int | float) and float(value) == float(expected)


def claim_value(claims: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The claim at `path`, or MISSING (an object is not a map on the way: missing too)."""
    value: Any = claims
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return MISSING
        value = value[key]
    return value


ClaimOp: TypeAlias = Literal["exists", "equals", "contains", "any_of"]
RequestOp: TypeAlias = Literal["exists", "equals", "startswith", "any_of"]
Attribute: TypeAlias = Literal["method", "path", "header"]


@dataclass(frozen=True, slots=True)
class ClaimTest(Condition):
    path: tuple[str, ...]
    op: ClaimOp
    values: tuple[Scalar, ...] = ()

    def evaluate(self, request: Request, claims: Mapping[str, Any]) -> bool:
        value = claim_value(claims, self.path)
        if value is MISSING:
            return False
        if self.op == "exists":
            return True
        if self.op == "equals":
            return same(value, self.values[0])
        if self.op == "contains":
            return isinstance(value, list) and any(same(item, self.values[0]) for item in value)
        if any(same(value, expected) for expected in self.values):
            return True
        return isinstance(value, list) and any(same(item, expected) for item in value for expected in self.values)


@dataclass(frozen=True, slots=True)
class RequestTest(Condition):
    attribute: Attribute
    op: RequestOp
    values: tuple[str, ...] = ()
    header: str = ""  # the lower-case header name, for attribute "header"

    def evaluate(self, request: Request, claims: Mapping[str, Any]) -> bool:
        if self.attribute == "method":
            value: str | None = request.method
        elif self.attribute == "path":
            value = _URL_PATH.split(request.path, 1)[0]
        else:
            value = request.headers.get(self.header)
        if value is None:
            return False
        if self.op == "exists":
            return True
        if self.op == "equals":
            return value == self.values[0]
        if self.op == "startswith":
            return value.startswith(self.values[0])
        return value in self.values


@dataclass(frozen=True, slots=True)
class SourceTest(Condition):
    networks: tuple[str, ...]  # normalized CIDRs

    def evaluate(self, request: Request, claims: Mapping[str, Any]) -> bool:
        try:
            address = ipaddress.ip_address(request.source)
        except ValueError:
            return False
        return any(address in ipaddress.ip_network(network) for network in self.networks)


@dataclass(frozen=True, slots=True)
class AllOf(Condition):
    parts: tuple[Condition, ...]

    def evaluate(self, request: Request, claims: Mapping[str, Any]) -> bool:
        return all(part.evaluate(request, claims) for part in self.parts)


@dataclass(frozen=True, slots=True)
class AnyOf(Condition):
    parts: tuple[Condition, ...]

    def evaluate(self, request: Request, claims: Mapping[str, Any]) -> bool:
        return any(part.evaluate(request, claims) for part in self.parts)


@dataclass(frozen=True, slots=True)
class Not(Condition):
    part: Condition

    def evaluate(self, request: Request, claims: Mapping[str, Any]) -> bool:
        return not self.part.evaluate(request, claims)


def all_of(*conditions: Condition) -> Condition:
    """True when every condition is."""
    return AllOf(_flat(AllOf, conditions, "all_of"))


def any_of(*conditions: Condition) -> Condition:
    """True when one condition is."""
    return AnyOf(_flat(AnyOf, conditions, "any_of"))


def not_(condition: Condition) -> Condition:
    """True when the condition is not."""
    checked = _condition(condition, "not_")
    return checked.part if isinstance(checked, Not) else Not(checked)


def _flat(kind: type[AllOf | AnyOf], conditions: tuple[object, ...], name: str) -> tuple[Condition, ...]:
    if not conditions:
        raise RuleError(f"{name}() needs at least one condition")
    flat: list[Condition] = []
    for condition in conditions:
        checked = _condition(condition, f"{name}()")
        flat.extend(checked.parts if isinstance(checked, kind) else (checked,))
    return tuple(flat)
