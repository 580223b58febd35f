"""Dye rules in Python: the stage of one request, read the way Envoy reads it on the native path.

Header values of a repeated header are joined with "," (Envoy's header matchers see them so), a cookie rule
uses the same RE2 pattern the native path compiles, a query rule takes the first parameter of that name as
sent (not percent-decoded), and a regex must match the whole value. Tests hold both paths to the same stage.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import re2

from xgate.plugins.dyeing import SCALE, DyeingSettings, Rule, StickyKey, cookie_regex

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_BAGGAGE = 8192  # W3C baggage: a longer header may be dropped by the next hop, so ours replaces it


@dataclass(frozen=True)
class DyeRequest:
    """What the rules may look at: headers (lower-case names, `:path` included), the client's address and
    the verified JWT claims."""

    headers: Mapping[str, str]
    source: str = ""
    claims: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Dye:
    """The stage of a request; `kept`: a trusted client sent it and it stays as sent; `rule`: the index of
    the rule that gave it (None: the default, or kept)."""

    stage: str
    kept: bool = False
    rule: int | None = None


Condition = Callable[[DyeRequest], bool]


class Dyer:
    """Evaluates one DyeingSettings: first matching rule wins, else the default stage."""

    def __init__(self, settings: DyeingSettings) -> None:
        self.settings = settings
        self._conditions = [_condition(rule) for rule in settings.rules]
        trust = settings.trust
        self._trusted_ranges: tuple[Network, ...] = trust if isinstance(trust, tuple) else ()

    def dye(self, request: DyeRequest) -> Dye:
        sent = request.headers.get(self.settings.header)
        if sent is not None and self._trusted(request.source):
            return Dye(sent, kept=True)
        for index, (rule, condition) in enumerate(zip(self.settings.rules, self._conditions, strict=True)):
            if condition(request):
                return Dye(rule.stage, rule=index)
        return Dye(self.settings.default)

    def satisfies(self, index: int, request: DyeRequest) -> bool:
        """Whether rule `index` alone matches `request` (what Envoy's sticky filter records for each rule)."""
        return self._conditions[index](request)

    def _trusted(self, source: str) -> bool:
        if self.settings.trust == "all":
            return True
        return bool(self._trusted_ranges) and _in_ranges(source, self._trusted_ranges)


def baggage_with(current: str | None, key: str, stage: str) -> str:
    """`current` baggage with the member `key` set to `stage` (any earlier `key` member removed, the others
    kept in order); an over-long header is replaced rather than made longer."""
    ours = f"{key}={quote(stage, safe='')}"
    if not current or len(current) > MAX_BAGGAGE:
        return ours
    members = [member.strip() for member in current.split(",")]
    kept = [member for member in members if member and member.split("=", 1)[0].strip() != key]
    return ",".join([*kept, ours])


def sticky_bucket(seed: str, key: str) -> int:
    """The bucket (0 to SCALE-1) of a key: stable across processes and versions (no Python hash()). Envoy's
    Lua filter computes the same (translate/plugins/dyeing_sticky.py): change both or neither."""
    digest = hashlib.blake2b(f"{seed}\0{key}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % SCALE


def first_query_value(path: str, name: str) -> str | None:
    """The first value of query parameter `name` in `path`, as sent (Envoy's route matchers do the same)."""
    _, sep, query = path.partition("?")
    if not sep:
        return None
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key == name:
            return value
    return None


def cookie_value(cookies: str | None, name: str) -> str | None:
    """The value of the first cookie `name` in a Cookie header, or None (ASCII whitespace after a `;` is
    skipped, as the native path's Lua does)."""
    if not cookies:
        return None
    for part in re.split(r";[ \t\n\r\f\v]*", cookies):
        key, sep, value = part.partition("=")
        if sep and key == name:
            return value
    return None


def _in_ranges(source: str, ranges: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(source)
    except ValueError:
        return False
    return any(address in network for network in ranges)


def _fullmatch(pattern: str) -> Callable[[str], bool]:
    options = re2.Options()
    options.log_errors = False
    compiled = re2.compile(pattern, options)

    def matches(value: str) -> bool:
        try:
            return compiled.fullmatch(value) is not None
        except UnicodeEncodeError:  # a lone surrogate is no text Envoy could have sent: no match
            return False

    return matches


def _text(value: Any) -> str | None:
    """A claim value as the text a rule compares with: strings, integers and booleans (JSON spelling)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return None


def _sticky_key(key: StickyKey, request: DyeRequest) -> str | None:
    """The rule's key, or None. A key holding U+FFFD counts as none: header bytes that are not UTF-8 arrive
    here as U+FFFD, while Envoy's Lua hashes them as they are, so the two paths could not agree on them."""
    if key.claim is not None:
        found = _text(request.claims.get(key.claim))
    elif key.header is not None:
        found = request.headers.get(key.header)
    else:
        assert key.cookie is not None
        found = cookie_value(request.headers.get("cookie"), key.cookie)
    return None if found is None or "\ufffd" in found else found


def _condition(rule: Rule) -> Condition:
    if rule.header is not None:
        name, header = rule.header.name, rule.header
        if header.present:
            return lambda request: name in request.headers
        if header.regex is not None:
            matches = _fullmatch(header.regex)
            return lambda request: (value := request.headers.get(name)) is not None and matches(value)
        return lambda request: request.headers.get(name) == header.exact
    if rule.cookie is not None:
        matches = _fullmatch(cookie_regex(rule.cookie))
        return lambda request: (value := request.headers.get("cookie")) is not None and matches(value)
    if rule.query is not None:
        query = rule.query
        if query.present:
            return lambda request: first_query_value(request.headers.get(":path", ""), query.name) is not None
        return lambda request: first_query_value(request.headers.get(":path", ""), query.name) == query.exact
    if rule.source is not None:
        ranges = rule.source
        return lambda request: _in_ranges(request.source, ranges)
    if rule.claim is not None:
        claim = rule.claim
        if claim.equals is not None:
            wanted = _text(claim.equals)
            return lambda request: _text(request.claims.get(claim.name)) == wanted
        return lambda request: _contains(request.claims.get(claim.name), claim.contains or "")
    assert rule.sticky is not None
    sticky = rule.sticky
    seed = sticky.seed or rule.stage
    below = round(sticky.percent * SCALE / 100)

    def in_percentage(request: DyeRequest) -> bool:
        key = _sticky_key(sticky.key, request)
        return bool(key) and sticky_bucket(seed, key or "") < below

    return in_percentage


def _contains(value: Any, wanted: str) -> bool:
    if isinstance(value, list):
        return any(_text(item) == wanted for item in value)
    if isinstance(value, str):
        return wanted in value.split()
    return False
