"""What a gateway under test offers whatever runs it (local processes or containers): its addresses, a config
completed with its listener, and "wait until every Envoy and service holds it" read from the status API."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import yaml

from xgate.errors import XgateError

LISTENER_NAME = "gateway"
SERVICES = ("authz", "dyeing", "ratelimit")


class ConfigRejected(XgateError):
    """The gateway refused a config given to `apply`; the message has every issue, with its object and field."""


class GatewayUnderTest(Protocol):
    """A whole gateway for a test: Envoy, the control plane and the authz, dyeing and ratelimit services.

    - `url`: where the test reaches Envoy's listener, e.g. http://127.0.0.1:20417.
    - `status_url`: the control plane's status API (`xgate status --url`), GET /status, /metrics.
    - `admin_url`: Envoy's admin API (GET /stats, /clusters, ...), to read Envoy's own counters.
    - `upstream_host`: the address the test's own servers bind to and the config names as their host (Envoy
      reaches them there): 127.0.0.1 for local processes, the container network's gateway with containers.
    - `listener_port`: the port a config's listener must use; `apply` adds the listener when a config has none.
    - `services`: where Envoy reaches each service, to put in the plugin defaults' `service` (policy: authz,
      dyeing: dyeing, rate_limit: ratelimit), e.g. {"authz": "127.0.0.1:20418", ...}.
    - `apply(config)`: make `config` (YAML text or a mapping) the whole config and return once every Envoy and
      service ACKed it (its revision id). Errors: ConfigRejected (nothing changes), TimeoutError.
    """

    @property
    def url(self) -> str: ...

    @property
    def status_url(self) -> str: ...

    @property
    def admin_url(self) -> str: ...

    @property
    def upstream_host(self) -> str: ...

    @property
    def listener_port(self) -> int: ...

    @property
    def services(self) -> Mapping[str, str]: ...

    def apply(self, config: str | Mapping[str, Any], timeout: float = 30.0) -> str: ...


def complete_config(config: str | Mapping[str, Any], listener_address: str, listener_port: int) -> str:
    """The config as YAML text, with `xgate: v1` and, when it defines no listener, the gateway's listener.

    Errors: ConfigRejected when the text is not YAML or not a mapping."""
    if isinstance(config, str):
        try:
            loaded = yaml.safe_load(config)
        except yaml.YAMLError as exc:
            raise ConfigRejected(f"the config is not valid YAML: {exc}") from None
        data = {} if loaded is None else loaded
    else:
        data = dict(config)
    if not isinstance(data, dict):
        raise ConfigRejected(f"a config is a mapping (xgate: v1, listeners, upstreams, routes), not {data!r:.60}")
    data.setdefault("xgate", "v1")
    if not data.get("listeners"):
        data["listeners"] = [{"name": LISTENER_NAME, "address": listener_address, "port": listener_port}]
    return yaml.safe_dump(data, sort_keys=False)


def read_status(status_url: str) -> dict[str, Any] | None:
    """The control plane's GET /status, or None while it does not answer."""
    try:
        with urllib.request.urlopen(status_url.rstrip("/") + "/status", timeout=5) as response:
            report: dict[str, Any] = json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return report


def converged(report: dict[str, Any], *, envoys: int, services: int) -> bool:
    """Every expected Envoy and service instance is connected and holds what it is served."""
    return (
        len(report["proxies"]) >= envoys
        and len(report["services"]) >= services
        and bool(report["all_in_sync"])
        and all(entry["in_sync"] for entry in report["services"])
    )


def etcd_revision_applied(report: dict[str, Any]) -> int:
    """The etcd revision the control plane last applied (0 before any)."""
    _, _, number = str(report["config"]["applied_revision"] or "").rpartition("etcd-")
    return int(number) if number.isdigit() else 0


def wait_until(status_url: str, done: Callable[[dict[str, Any]], bool], what: str, timeout: float) -> dict[str, Any]:
    """Poll GET /status until `done(report)`; return that report. Errors: TimeoutError naming `what`, with the
    last report; ConfigRejected when `done` raises it."""
    deadline = time.monotonic() + timeout
    report: dict[str, Any] | None = None
    while True:
        report = read_status(status_url) or report
        if report is not None and done(report):
            return report
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}; last status: {json.dumps(report)}")
        time.sleep(0.05)


@contextlib.contextmanager
def start_gateway(backend: str, work_dir: Path, pythonpath: Sequence[Path] = ()) -> Iterator[GatewayUnderTest]:
    """A whole gateway until the block ends: `local` child processes (localstack.LocalGateway, files in
    `work_dir`) or `containers` (containers.GatewayStack: testcontainers and the images are needed).
    `pythonpath`: folders authz imports Python policies from."""
    if backend == "containers":
        from xgate.testing.containers import GatewayStack  # testcontainers is needed for this backend only

        with GatewayStack(pythonpath=pythonpath) as stack:
            yield stack
    elif backend == "local":
        from xgate.testing.localstack import LocalGateway

        with LocalGateway(work_dir, pythonpath=pythonpath) as local:
            yield local
    else:
        raise ValueError(f"gateway backend {backend!r}: use local or containers")


__all__ = [
    "LISTENER_NAME",
    "SERVICES",
    "ConfigRejected",
    "GatewayUnderTest",
    "complete_config",
    "converged",
    "etcd_revision_applied",
    "read_status",
    "start_gateway",
    "wait_until",
]
