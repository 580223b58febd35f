"""Where a request carries its tokens, read as Envoy's jwt_authn extractor reads it, and the realm it names.

Every location the provider lists counts, and every token found there must verify (Envoy's rule: a good
token next to a bad one is refused, lest the upstream read the bad one). The order is Envoy's: header
locations sorted by name and prefix (each value of a repeated header on its own), then query parameters
sorted by name (the first value of each, percent-decoded), then cookies sorted by name (the first of a
name, over every Cookie header, quotes removed). In a header the prefix may stand anywhere in the value;
the token starts at the first base64url character or dot after it and runs to the end of the value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from envoy.service.auth.v3 import attribute_context_pb2 as attribute_v3

from xgate.plugins.jwt import Provider, header_locations

MAX_REALM_PATH = 256  # jwt_authn's MaximumUriLength
_TOKEN_START = re.compile(r"[A-Za-z0-9_.-]")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")


@dataclass(frozen=True, slots=True)
class Found:
    """The tokens of one request in Envoy's order, and the headers they came in (removed from the request
    to the upstream once the tokens verified, as jwt_authn does)."""

    tokens: tuple[str, ...]
    headers: tuple[str, ...]


def header_pairs(http: attribute_v3.AttributeContext.HttpRequest) -> list[tuple[str, str]]:
    """The request's headers as (lower-case name, value) pairs, a repeated header's values apart (Envoy sends
    them so with `encode_raw_headers`; otherwise each name once, its values joined)."""
    if http.header_map.headers:
        return [
            (header.key.lower(), header.raw_value.decode("utf-8", "replace") if header.raw_value else header.value)
            for header in http.header_map.headers
        ]
    return [(key.lower(), value) for key, value in http.headers.items()]


def find(provider: Provider, headers: Sequence[tuple[str, str]], path: str) -> Found | None:
    """The tokens in a request, or None when it carries none where the provider looks."""
    tokens: list[str] = []
    names: list[str] = []
    for name, prefix in header_locations(provider):
        for key, value in headers:
            if key != name:
                continue
            if prefix:
                at = value.find(prefix)
                if at < 0:
                    continue
                value = _after(value, at + len(prefix))
            tokens.append(value)
            if name not in names:
                names.append(name)
    if provider.query:
        params = _query(path)
        tokens += [params[name] for name in sorted(set(provider.query)) if name in params]
    if provider.cookies:
        jar = _cookies(value for key, value in headers if key == "cookie")
        tokens += [jar[name] for name in sorted(set(provider.cookies)) if name in jar]
    return Found(tuple(tokens), tuple(names)) if tokens else None


def realm(scheme: str, host: str, path: str) -> str:
    """The realm of a refusal's challenge: the request's URL, query included, its path cut at 256 bytes."""
    return f"{scheme or 'http'}://{host}{path[:MAX_REALM_PATH]}"


def _after(value: str, start: int) -> str:
    """From the first base64url character or dot at or after `start` to the end; the whole value if none."""
    found = _TOKEN_START.search(value, start)
    return value[found.start() :] if found is not None else value


def _query(path: str) -> dict[str, str]:
    """The first value of each query parameter, percent-decoded (a parameter without `=` has the value "")."""
    params: dict[str, str] = {}
    _, mark, query = path.partition("?")
    if not mark:
        return params
    for part in query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        params.setdefault(_unpercent(key), _unpercent(value))
    return params


def _unpercent(text: str) -> str:
    return _PERCENT.sub(lambda match: chr(int(match.group(1), 16)), text) if "%" in text else text


def _cookies(values: Iterable[str]) -> dict[str, str]:
    """Cookies by name over every Cookie header: the first of a name wins, a quoted value loses its quotes."""
    jar: dict[str, str] = {}
    for header in values:
        for part in header.split(";"):
            key, mark, value = part.lstrip(" ").partition("=")
            if not mark:
                continue
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            jar.setdefault(key, value)
    return jar
