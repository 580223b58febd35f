"""The service skeleton: a service serves only once it holds its first config (before, a rate-limit service
answered OK to every descriptor it did not know yet, uncounted by Envoy), and a taken port still fails at once."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

import httpx
import pytest

from xgate.authz.config import AuthzService
from xgate.dyeing.config import DyeingService
from xgate.errors import PortInUseError
from xgate.ratelimit.config import RateLimitService
from xgate.service.runner import Service, ServiceOptions, run_service
from xgate.testing import free_port

SERVICES: dict[str, Callable[[], Service]] = {
    "authz": AuthzService,
    "dyeing": DyeingService,
    "ratelimit": RateLimitService,
}


def refuses(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("name", SERVICES)
async def test_no_config_yet_no_service(name: str) -> None:
    listen, status, nobody = free_port(), free_port(), free_port()  # no control plane answers at `nobody`
    options = ServiceOptions(listen=("127.0.0.1", listen), xds=(("127.0.0.1", nobody),), status=("127.0.0.1", status))
    stop = asyncio.Event()
    running = asyncio.create_task(run_service(SERVICES[name](), options, stop=stop))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{status}") as client:
            for _ in range(100):  # until the feed has failed at least once: the service had its chance to bind
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/metrics")).json()["xds"]["last_error"]:
                        break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the service never tried its control plane")
            assert (await client.get("/readyz")).status_code == 503
        assert refuses(listen), f"{name} accepts calls on :{listen} without any config"
    finally:
        stop.set()
        await asyncio.wait_for(running, 5)


@pytest.mark.parametrize("name", SERVICES)
async def test_a_taken_port_fails_before_any_config(name: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        options = ServiceOptions(listen=("127.0.0.1", taken), xds=(("127.0.0.1", free_port()),))
        with pytest.raises(PortInUseError, match=rf"127\.0\.0\.1:{taken} \({name} gRPC, --listen\) is in use"):
            await asyncio.wait_for(run_service(SERVICES[name](), options), 5)


async def test_a_taken_authz_http_port_fails_before_any_config() -> None:
    """`xgate authz --http-listen` on a taken port: the error at start, as for --listen, not once a config came."""
    from xgate.authz.config import run_authz

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        options = ServiceOptions(listen=("127.0.0.1", free_port()), xds=(("127.0.0.1", free_port()),))
        with pytest.raises(PortInUseError, match=rf"127\.0\.0\.1:{taken} \(authz HTTP checks, --http-listen\)"):
            await asyncio.wait_for(run_authz(options, http=("127.0.0.1", taken)), 5)
