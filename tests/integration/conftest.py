"""Fixtures for tests against a real Envoy: a gateway on loopback ports chosen at run time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from xgate.demo.upstream import DemoUpstream, start_upstream


@pytest.fixture
async def upstreams() -> AsyncIterator[dict[str, DemoUpstream]]:
    """Two echo upstreams, v1 and v2, that say which one answered."""
    started = {name: await start_upstream(name) for name in ("v1", "v2")}
    try:
        yield started
    finally:
        for upstream in started.values():
            await upstream.stop()


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    return tmp_path


ConfigMaker = Callable[..., str]


@pytest.fixture
def make_config(upstreams: dict[str, DemoUpstream]) -> ConfigMaker:
    """config(listener_port, extra_routes="") -> YAML text routing to the two echo upstreams."""

    def make(listener_port: int, extra_routes: str = "") -> str:
        return base_config(listener_port, upstreams["v1"].port, upstreams["v2"].port, extra_routes)

    return make


def base_config(listener_port: int, v1_port: int, v2_port: int, extra_routes: str = "") -> str:
    return f"""
listeners:
  - name: public
    address: 127.0.0.1
    port: {listener_port}
upstreams:
  - name: v1
    endpoints: ["127.0.0.1:{v1_port}"]
  - name: v2
    endpoints: ["127.0.0.1:{v2_port}"]
routes:
{extra_routes}
  - name: health
    match: {{path: {{exact: /healthz}}}}
    direct_response: {{status: 200, body: ok}}
  - name: by-header
    match:
      headers: [{{name: x-version, exact: v2}}]
    upstream: v2
  - name: cors
    match: {{path: {{prefix: /cors}}}}
    upstream: v1
    plugins:
      cors: {{allow_origins: ["https://app.example.com"], allow_methods: [GET, POST]}}
  - name: moved
    match: {{path: {{exact: /old}}}}
    redirect: {{path: /new, code: 301}}
  - name: split
    match: {{path: {{prefix: /split}}}}
    split: [{{upstream: v1, weight: 50}}, {{upstream: v2, weight: 50}}]
  - name: default
    upstream: v1
    headers:
      response: {{set: {{x-served-by: xgate}}}}
"""
