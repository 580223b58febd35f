"""pydantic's validation errors in our words, one message per problem: the one place that phrases them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic_core import ErrorDetails

from xgate.config.types import NAME_PATTERN

Loc = tuple[str | int, ...]

# What a value of each pydantic error type should have been, as "must be ..." completes it.
_EXPECTED = {
    "string_type": "a string",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "none_required": "null",
    "ip_v4_network": "an IP network such as 10.0.0.0/8",
    "ip_v6_network": "an IP network such as 10.0.0.0/8",
    "ip_any_network": "an IP network such as 10.0.0.0/8",
    "ip_v4_address": "an IP address",
    "ip_v6_address": "an IP address",
    "ip_any_address": "an IP address",
}
# The types whose member names pydantic puts in an error's location when a union's branches all fail.
_PLAIN_TAGS = frozenset({"str", "int", "float", "bool", "none"})
_TOKEN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
_PATTERNS = {
    NAME_PATTERN: "is not a valid name: letters, digits, '_', '.' and '-', starting with a letter or digit, "
    "at most 63 characters",
    r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$": "is not a valid stage: letters, digits, '_', '.' and '-', starting "
    "with a letter or digit, at most 32 characters",
    r"^[^:\s]+:\d{1,5}$": "must be HOST:PORT",
    r"^/[^\s]*$": "must start with '/' and contain no spaces",
    _TOKEN: "must be a name of letters, digits and !#$%&'*+.^_`|~-",
    r"^[a-z0-9!#$%&'*+.^_`|~-]+$": "is not a valid HTTP header name",
    r"^:?[A-Za-z0-9!#$%&'*+.^_`|~-]+$": "is not a valid HTTP header name",
}


def explain(errors: Sequence[ErrorDetails]) -> list[tuple[Loc, str]]:
    """(field location, message) for each problem pydantic found: union branches folded into one problem,
    and a list's "too short" dropped when its items have problems of their own (it is their consequence)."""
    cleaned = [(*_clean(error), error) for error in errors]
    _strip_plain_tags(cleaned)
    found: list[tuple[Loc, str]] = []
    unions: dict[Loc, list[tuple[Loc, ErrorDetails]]] = {}
    for loc, anchor, error in cleaned:
        if anchor is None:
            if not _consequence(loc, error, cleaned):
                found.append((loc, _message(error)))
        else:
            unions.setdefault(anchor, []).append((loc, error))
    for anchor, branches in unions.items():
        deepest = max(len(loc) for loc, _ in branches)
        chosen = [(loc, error) for loc, error in branches if len(loc) == deepest]
        if deepest == len(anchor) or len({loc for loc, _ in chosen}) == 1:
            found.append((chosen[0][0], _alternatives([error for _, error in chosen])))
        else:
            found += [(loc, _message(error)) for loc, error in chosen]
    return _unique(found)


def _clean(error: ErrorDetails) -> tuple[Loc, Loc | None]:
    """The location without pydantic's schema tags ('tuple[...]', 'function-after[...]', '[key]'), and, when
    a tag was there, the location of the union the error is one branch of."""
    loc: list[str | int] = []
    anchor: Loc | None = None
    for part in error["loc"]:
        if isinstance(part, str) and "[" in part and part.endswith("]"):
            if part == "[key]":
                continue
            anchor = tuple(loc) if anchor is None else anchor
            continue
        loc.append(part)
    return tuple(loc), anchor


def _strip_plain_tags(cleaned: list[tuple[Loc, Loc | None, ErrorDetails]]) -> None:
    """`str | int | bool` fails as errors at `field.str`, `field.int`, `field.bool`: those last parts are
    union tags (not keys) when two or more of them share a parent."""
    parents: dict[Loc, set[str]] = {}
    for loc, _, _ in cleaned:
        if loc and loc[-1] in _PLAIN_TAGS:
            parents.setdefault(loc[:-1], set()).add(str(loc[-1]))
    for index, (loc, anchor, error) in enumerate(cleaned):
        if loc and loc[-1] in _PLAIN_TAGS and len(parents[loc[:-1]]) > 1:
            cleaned[index] = (loc[:-1], anchor if anchor is not None else loc[:-1], error)


def _consequence(loc: Loc, error: ErrorDetails, cleaned: list[tuple[Loc, Loc | None, ErrorDetails]]) -> bool:
    """A list left too short only because some of its items failed."""
    if error["type"] != "too_short":
        return False
    return any(len(other) > len(loc) and other[: len(loc)] == loc for other, _, _ in cleaned)


def _alternatives(errors: list[ErrorDetails]) -> str:
    phrases: list[str] = []
    for error in errors:
        phrase = _expected(error)
        if phrase is None:
            return _message(error)
        if phrase not in phrases:
            phrases.append(phrase)
    if len(phrases) == 1:
        return f"must be {phrases[0]}"
    last = ", or " if any(" or " in phrase for phrase in phrases) else " or "
    return f"must be {', '.join(phrases[:-1])}{last}{phrases[-1]}"


def _expected(error: ErrorDetails) -> str | None:
    if error["type"] == "literal_error":
        return str((error.get("ctx") or {}).get("expected", "one of the allowed values"))
    return _EXPECTED.get(error["type"])


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    if kind in ("value_error", "assertion_error"):
        return str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "unknown field"
    if (expected := _expected(error)) is not None:
        return f"must be {expected}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        words = {"ge": "at least", "le": "at most", "gt": "greater than", "lt": "less than"}
        bound = next(key for key in words if key in ctx)
        value = ctx[bound]
        return f"must be {words[bound]} {int(value) if isinstance(value, float) and value.is_integer() else value}"
    if kind in ("too_short", "too_long"):
        limit = ctx.get("min_length" if kind == "too_short" else "max_length")
        if kind == "too_short" and limit == 1:
            return "must not be empty"
        return f"must have {'at least' if kind == 'too_short' else 'at most'} {limit} item{'s' if limit != 1 else ''}"
    if kind in ("string_too_short", "string_too_long"):
        limit = ctx.get("min_length" if kind == "string_too_short" else "max_length")
        if kind == "string_too_short" and limit == 1:
            return "must not be empty"
        side = "at least" if kind == "string_too_short" else "at most"
        return f"must be {side} {limit} character{'s' if limit != 1 else ''} long"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        return _PATTERNS.get(pattern, f"must match the pattern {pattern}")
    # A type this table does not know yet: pydantic's words, made to read like ours.
    text = str(error["msg"])
    return text.replace("Input should be", "must be").replace("Input is not", "is not").removeprefix("Value error, ")


def _unique(found: list[tuple[Loc, str]]) -> list[tuple[Loc, str]]:
    return list(dict.fromkeys(found))
