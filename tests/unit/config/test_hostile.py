"""Hostile config input gets a clear, located error, quickly, and never an exception from deep inside."""

from __future__ import annotations

import time

import pytest

from xgate.config.load import parse_document
from xgate.errors import ConfigError

ALIAS_BOMB = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)


def issues_of(text: str) -> list[str]:
    try:
        config = parse_document(text, "gw.yaml")
    except ConfigError as exc:
        return [str(issue) for issue in exc.issues]
    return [str(issue) for issue in config.issues]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (ALIAS_BOMB, "alias replay limit exceeded"),
        ("a: " + "[" * 100_000 + "]" * 100_000, "recursion limit exceeded"),
        ("listeners: [\0]", "not valid YAML"),
        (
            "routes:\n  - {name: r, direct_response: {status: 200, body: '" + "x" * 65536 + "'}}\n",
            "route r field direct_response.body: must be at most 4096 characters long",
        ),
        (
            "routes:\n  - {name: r, upstream: u, headers: {request: {set: {x-big: '" + "x" * 65536 + "'}}}}\n",
            "the value is longer than 8192 characters",
        ),
        ("routes:\n  - {name: " + "r" * 300 + ", upstream: u}\n", "name: is not a valid name"),
        ("upstreams:\n  - {name: u, endpoints: ['127.0.0.1:99999']}\n", "endpoints.0.port: must be at most 65535"),
        ("routes: 17\n", "must be a list"),
        ("listeners:\n  - 17\n", "listener #1"),
    ],
    ids=[
        "alias-bomb",
        "deep-nesting",
        "nul",
        "64k-body",
        "64k-header",
        "long-name",
        "bad-port",
        "not-a-list",
        "not-a-mapping",
    ],
)
def test_hostile_input_is_refused_clearly_and_fast(text: str, expected: str) -> None:
    started = time.perf_counter()
    issues = issues_of(text)
    assert time.perf_counter() - started < 2.0
    assert any(expected in issue for issue in issues), issues
