"""The limit table: which Limit applies to a request descriptor, and the counter key it is counted under.

A pattern is (domain, ((key, value-or-None), ...)). It matches a descriptor of the same domain with the same
keys in the same order (Envoy sends descriptor entries in the order of the route's actions); a None value
matches any value, and the counter key then holds the actual value, so a pattern like
("api", (("client_ip", None),)) gives every client IP its own bucket. When several patterns match, the one
with the fewest wildcards wins (an exact entry for one API key beats the per-API-key default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from xgate.ratelimit.algorithms import Rate

Entries = tuple[tuple[str, str | None], ...]
Pattern = tuple[str, Entries]  # (domain, entries)


@dataclass(frozen=True, slots=True)
class Limit(Rate):
    """A Rate with what the service needs around it.

    `shadow`: count and report in metrics, never deny. `name` labels metrics (default: the pattern).
    """

    shadow: bool = False
    name: str = ""


@dataclass(frozen=True)
class Match:
    """The limit for one descriptor, its metrics label and the counter key (algorithm, domain, actual values)."""

    limit: Limit
    name: str
    key: str


@dataclass(frozen=True)
class LimitTable:
    """Limits by pattern; immutable, so the service swaps a whole table at once.

    A pattern without wildcards is found by one lookup in `limits` (the request's own entries are its key), so
    the table holds nothing else for the one exact limit per route a config makes, however many routes.
    Errors: ValueError for an empty domain or entry key.
    """

    limits: Mapping[Pattern, Limit] = field(default_factory=dict)
    # Patterns with a wildcard, by (domain, keys), fewest wildcards first: (entries, limit, metrics label).
    _wildcards: Mapping[tuple[str, tuple[str, ...]], tuple[tuple[Entries, Limit, str], ...]] = field(
        init=False, repr=False, compare=False
    )
    _labels: Mapping[Pattern, str] = field(init=False, repr=False, compare=False)  # exact patterns without a name

    def __post_init__(self) -> None:
        frozen = dict(self.limits)
        wildcards: dict[tuple[str, tuple[str, ...]], list[tuple[Entries, Limit, str]]] = {}
        labels: dict[Pattern, str] = {}
        for (domain, entries), limit in frozen.items():
            if not domain or any(not key for key, _ in entries):
                raise ValueError(f"limit pattern {pattern_label(domain, entries)}: domain and keys must be non-empty")
            label = limit.name or pattern_label(domain, entries)
            if all(value is not None for _, value in entries):
                if not limit.name:
                    labels[(domain, entries)] = label
                continue
            keys = tuple(key for key, _ in entries)
            wildcards.setdefault((domain, keys), []).append((entries, limit, label))
        for candidates in wildcards.values():
            candidates.sort(key=lambda item: sum(value is None for _, value in item[0]))
        object.__setattr__(self, "limits", MappingProxyType(frozen))
        object.__setattr__(self, "_wildcards", MappingProxyType({k: tuple(v) for k, v in wildcards.items()}))
        object.__setattr__(self, "_labels", MappingProxyType(labels))

    def __len__(self) -> int:
        return len(self.limits)

    def match(self, domain: str, entries: Sequence[tuple[str, str]]) -> Match | None:
        """The limit for a request descriptor (its entries as (key, value) pairs), or None if none applies."""
        pattern = (domain, tuple(entries))
        limit = self.limits.get(pattern)
        if limit is not None:  # no wildcard: nothing matches more closely
            return Match(limit, limit.name or self._labels[pattern], counter_key(limit, domain, entries))
        candidates = self._wildcards.get((domain, tuple(key for key, _ in entries)))
        if not candidates:
            return None
        for wanted, limit, name in candidates:
            if all(want is None or want == got for (_, want), (_, got) in zip(wanted, entries, strict=True)):
                return Match(limit, name, counter_key(limit, domain, entries))
        return None


def counter_key(limit: Limit, domain: str, entries: Sequence[tuple[str, str]]) -> str:
    """The counter's key: algorithm (a token bucket's state cannot be read as GCRA's), domain, actual values.

    repr() quotes and escapes every string, so the key is unambiguous whatever the values contain (and 10x
    cheaper than JSON on this hot path).
    """
    return f"{limit.algorithm}:{domain!r}:{tuple(entries)!r}"


def pattern_label(domain: str, entries: Entries) -> str:
    """`domain|key=value|key=*`, for metrics and messages."""
    return "|".join([domain, *(f"{key}={'*' if value is None else value}" for key, value in entries)])
