"""The pytest plugin xgate registers (entry point `pytest11`): `xgate_gateway`, a whole gateway for a test
session, run as local processes (default) or as containers (`--xgate-gateway=containers` or
XGATE_GATEWAY=containers).

The fixture yields an xgate.testing.stack.GatewayUnderTest: `url` (Envoy's listener), `status_url`,
`upstream_host` (where your test servers bind, and what the config names), `services` (their addresses for
the plugin defaults) and `apply(config)`, which returns once every Envoy and service ACKed it. The gateway is
shared by the session's tests; each `apply` replaces the whole config. Python policies are imported from the
folders the `xgate_pythonpath` fixture returns (the rootdir; override it in a conftest.py).
This module imports nothing heavy: pytest loads it in every session of an environment where xgate is installed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from xgate.testing.stack import GatewayUnderTest

BACKENDS = ("local", "containers")
ENVIRONMENT = "XGATE_GATEWAY"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("xgate").addoption(
        "--xgate-gateway",
        choices=BACKENDS,
        default=None,
        help=f"how the xgate_gateway fixture runs the gateway: local processes or containers [{ENVIRONMENT}, local]",
    )


def backend_of(config: pytest.Config) -> str:
    """The option, else the environment variable, else local. Errors: pytest.UsageError for another value."""
    chosen = config.getoption("--xgate-gateway") or os.environ.get(ENVIRONMENT) or "local"
    if chosen not in BACKENDS:
        raise pytest.UsageError(f"{ENVIRONMENT}={chosen!r}: use {' or '.join(BACKENDS)}")
    return str(chosen)


@pytest.fixture(scope="session")
def xgate_pythonpath(request: pytest.FixtureRequest) -> list[Path]:
    """Folders the gateway's authz service imports Python policies from: the rootdir. Override this fixture
    in a conftest.py to name others (with containers they are mounted read-only, so uid 10001 must read them)."""
    return [request.config.rootpath]


@pytest.fixture(scope="session")
def xgate_gateway(
    request: pytest.FixtureRequest, xgate_pythonpath: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayUnderTest]:
    """A whole gateway (Envoy, control plane, authz, dyeing, ratelimit) for the session; see the module."""
    from xgate.testing.stack import start_gateway

    backend = backend_of(request.config)
    with start_gateway(backend, tmp_path_factory.mktemp("xgate-gateway"), xgate_pythonpath) as gateway:
        yield gateway
