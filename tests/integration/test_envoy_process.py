"""A real Envoy started by EnvoyProcess: admin on port 0, readiness states, listener ports, clean stop."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from xgate.errors import ProxyError
from xgate.proxy.bootstrap import build_bootstrap
from xgate.proxy.process import EnvoyProcess

pytestmark = pytest.mark.integration

TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def _closed_port() -> int:
    # Bound then released: nothing listens there, so Envoy's ADS stream keeps failing to connect.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _bootstrap(**dynamic_overrides: Any) -> dict[str, Any]:
    bootstrap = build_bootstrap(
        node_id="test", node_cluster="test", xds_servers=[("127.0.0.1", _closed_port())], admin_port=0
    )
    for kind, extra in dynamic_overrides.items():
        bootstrap["dynamic_resources"][kind].update(extra)
    return bootstrap


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"


@pytest.fixture
async def make_envoy(tmp_path: Path) -> AsyncIterator[Callable[..., EnvoyProcess]]:
    started: list[EnvoyProcess] = []

    def make(bootstrap: dict[str, Any], **kwargs: Any) -> EnvoyProcess:
        envoy = EnvoyProcess(bootstrap, tmp_path / f"envoy{len(started)}", concurrency=1, **kwargs)
        started.append(envoy)
        return envoy

    yield make
    for envoy in started:
        await envoy.stop(grace=2)
        if envoy.pid is not None:
            assert not _alive(envoy.pid)


async def test_admin_answers_while_waiting_for_control_plane(make_envoy: Callable[..., EnvoyProcess]) -> None:
    lines: list[str] = []
    envoy = make_envoy(_bootstrap(), output=lines.append, log_level="info")
    await envoy.start()
    assert envoy.admin_url.startswith("http://127.0.0.1:")
    assert not envoy.admin_url.endswith(":0")
    # No control plane: CDS never arrives, so Envoy waits in its init phase (15 s initial fetch timeout).
    state = await envoy.wait_admin(timeout=5)
    assert state in {"PRE_INITIALIZING", "INITIALIZING"}
    with pytest.raises(ProxyError, match="did not become LIVE"):
        await envoy.wait_ready(timeout=0.5)
    status, body = await envoy.admin_get("/server_info")
    assert status == 200 and '"state"' in body
    pid = envoy.pid
    assert pid is not None and _alive(pid)
    assert await envoy.stop(grace=5) == 0
    assert not _alive(pid)
    assert any("starting main dispatch loop" in line for line in lines), lines[-5:]


async def test_becomes_live_when_initial_fetch_times_out(make_envoy: Callable[..., EnvoyProcess]) -> None:
    # CDS timing out moves Envoy to INITIALIZING; only LDS timing out too makes it LIVE.
    fast = {"initial_fetch_timeout": "0.2s"}
    envoy = make_envoy(_bootstrap(cds_config=fast, lds_config=fast))
    async with envoy:
        await envoy.wait_ready(timeout=5)
        assert await envoy.server_state() == "LIVE"
        assert await envoy.listener_port("nope") is None


async def test_listener_port_of_port_zero_listener(make_envoy: Callable[..., EnvoyProcess]) -> None:
    bootstrap = _bootstrap(cds_config={"initial_fetch_timeout": "0.2s"})
    del bootstrap["dynamic_resources"]["lds_config"]
    bootstrap["static_resources"]["listeners"] = [
        {
            "name": "static-tcp",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [
                {
                    "filters": [
                        {
                            "name": "envoy.filters.network.tcp_proxy",
                            "typed_config": {
                                "@type": TCP_PROXY_TYPE,
                                "stat_prefix": "t",
                                "cluster": "xgate-xds",
                            },
                        }
                    ]
                }
            ],
        }
    ]
    envoy = make_envoy(bootstrap)
    await envoy.start()
    port = await envoy.wait_listener_port("static-tcp", timeout=5)
    assert port > 0
    # The port is bound (and reported) before Envoy is LIVE, but it accepts connections only once LIVE.
    await envoy.wait_ready(timeout=5)
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


async def test_bad_bootstrap_fails_start(make_envoy: Callable[..., EnvoyProcess]) -> None:
    bootstrap = _bootstrap()
    bootstrap["static_resources"]["clusters"][0]["type"] = "NOT_A_TYPE"
    lines: list[str] = []
    envoy = make_envoy(bootstrap, output=lines.append)
    with pytest.raises(ProxyError, match="exited with code"):
        await envoy.start()
    assert envoy.returncode not in (None, 0)
    assert any("NOT_A_TYPE" in line for line in lines)


async def test_stop_before_start_and_twice_is_harmless(make_envoy: Callable[..., EnvoyProcess]) -> None:
    envoy = make_envoy(_bootstrap())
    assert await envoy.stop() is None
    with pytest.raises(ProxyError, match="start"):
        _ = envoy.admin_url
    await envoy.start()
    first = await envoy.stop()
    assert first is not None
    assert await envoy.stop() == first
