"""testcontainers for integration tests: etcd, an Envoy bootstrapped to a given control plane, any xgate entry
point, and GatewayStack, which runs them all on a network of its own with `apply(config)`.

Images: those scripts/images.sh builds (localhost/xgate:local, localhost/xgate-envoy:local,
localhost/xgate-etcd:local), or others named by XGATE_IMAGE, XGATE_ENVOY_IMAGE and XGATE_ETCD_IMAGE. Every
published port is on 127.0.0.1 only. With podman, point testcontainers at its API service (DOCKER_HOST=unix://...,
TESTCONTAINERS_RYUK_DISABLED=true where Ryuk's image cannot be pulled); see the README.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network
from testcontainers.core.wait_strategies import LogMessageWaitStrategy

from xgate.proxy.bootstrap import DRAIN_ARGS, build_bootstrap
from xgate.testing.stack import SERVICES, ConfigRejected, complete_config, converged, etcd_revision_applied, wait_until

# A ready line of each entry point (what `xgate up` waits for too).
READY_LINES = {
    "controlplane": "control plane ready",
    "authz": "xgate authz ready",
    "dyeing": "xgate dyeing ready",
    "ratelimit": "xgate ratelimit ready",
    "demo-upstream": "listening on",
}
SERVICE_PORTS = {"authz": 18001, "dyeing": 18002, "ratelimit": 18003}
XDS_PORT, STATUS_PORT, LISTENER_PORT, ADMIN_PORT, ETCD_PORT = 18000, 18080, 10000, 9901, 2379
_T = TypeVar("_T")


@dataclass(frozen=True)
class Images:
    """The images the containers run."""

    xgate: str = "localhost/xgate:local"
    envoy: str = "localhost/xgate-envoy:local"
    etcd: str = "localhost/xgate-etcd:local"

    @classmethod
    def from_environment(cls) -> Images:
        """XGATE_IMAGE, XGATE_ENVOY_IMAGE and XGATE_ETCD_IMAGE where set, else scripts/images.sh's names."""
        default = cls()
        return cls(
            xgate=os.environ.get("XGATE_IMAGE", default.xgate),
            envoy=os.environ.get("XGATE_ENVOY_IMAGE", default.envoy),
            etcd=os.environ.get("XGATE_ETCD_IMAGE", default.etcd),
        )


def _on_network(container: DockerContainer, network: Network | None, alias: str | None) -> None:
    if network is not None:
        container.with_network(network)
        if alias:
            container.with_network_aliases(alias)


def _publish(container: DockerContainer, *ports: int) -> None:
    """Publish each port on 127.0.0.1 only (testcontainers' own calls publish on every interface)."""
    for port in ports:
        container.ports[f"{port}/tcp"] = ("127.0.0.1", None)  # type: ignore[assignment]  # docker-py's (ip, port)


def _ready_when(container: DockerContainer, line: str, timeout: float) -> None:
    container.waiting_for(
        LogMessageWaitStrategy(re.escape(line)).with_startup_timeout(timedelta(seconds=timeout)).with_poll_interval(0.1)
    )


class EtcdContainer(DockerContainer):
    """One etcd member. `address` is its client address from this host (127.0.0.1:PORT, for `xgate apply
    --etcd`), `internal_address` the one containers on its network use (ALIAS:2379)."""

    def __init__(
        self, image: str | None = None, *, alias: str = "etcd", network: Network | None = None, timeout: float = 60
    ) -> None:
        super().__init__(image or Images.from_environment().etcd)
        self.alias = alias
        self.with_command(
            [
                f"--name={alias}",
                f"--listen-client-urls=http://0.0.0.0:{ETCD_PORT}",
                f"--advertise-client-urls=http://{alias}:{ETCD_PORT}",
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                f"--initial-cluster={alias}=http://127.0.0.1:2380",
            ]
        )
        _on_network(self, network, alias)
        _publish(self, ETCD_PORT)
        _ready_when(self, "ready to serve client requests", timeout)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.get_exposed_port(ETCD_PORT)}"

    @property
    def internal_address(self) -> str:
        return f"{self.alias}:{ETCD_PORT}"


class XgateContainer(DockerContainer):
    """`xgate ENTRY_POINT ARGS...` in the xgate image (controlplane, authz, dyeing, ratelimit, demo-upstream, or
    any command), started once it printed its ready line (`ready`, default: the entry point's). `publish`: ports
    to publish on 127.0.0.1 (`url(port)`); `pythonpath`: host folders mounted read-only and put on PYTHONPATH
    (Python policies for authz; they must be readable by the image's user, uid 10001)."""

    def __init__(
        self,
        entry_point: str,
        *args: str,
        image: str | None = None,
        alias: str | None = None,
        network: Network | None = None,
        publish: Sequence[int] = (),
        pythonpath: Sequence[Path] = (),
        ready: str | None = None,
        timeout: float = 60,
    ) -> None:
        super().__init__(image or Images.from_environment().xgate)
        self.with_command([entry_point, *args])
        _on_network(self, network, alias)
        _publish(self, *publish)
        mounts = [f"/pythonpath/{index}" for index in range(len(pythonpath))]
        for host, inside in zip(pythonpath, mounts, strict=True):
            self.with_volume_mapping(str(Path(host).absolute()), inside, "ro")
        if mounts:
            self.with_env("PYTHONPATH", os.pathsep.join(mounts))
        line = ready or READY_LINES.get(entry_point)
        if line:
            _ready_when(self, line, timeout)

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{self.get_exposed_port(port)}"


class EnvoyContainer(DockerContainer):
    """A real Envoy bootstrapped to the control planes `xds` ("HOST:PORT" each, host names resolved by DNS on the
    container's network), its listener ports and admin API published on 127.0.0.1."""

    def __init__(
        self,
        xds: Sequence[str],
        *,
        image: str | None = None,
        node_id: str = "xgate-envoy",
        listener_ports: Sequence[int] = (LISTENER_PORT,),
        alias: str | None = "envoy",
        network: Network | None = None,
        timeout: float = 60,
    ) -> None:
        super().__init__(image or Images.from_environment().envoy)
        servers = [(host, int(port)) for host, _, port in (item.rpartition(":") for item in xds)]
        bootstrap = build_bootstrap(node_id=node_id, node_cluster="xgate", xds_servers=servers, admin_port=ADMIN_PORT)
        # Inside its own network namespace: reachable from this host only through the 127.0.0.1 publication.
        bootstrap["admin"]["address"]["socket_address"]["address"] = "0.0.0.0"
        config = json.dumps(bootstrap, separators=(",", ":"))
        self.with_command(["--config-yaml", config, *DRAIN_ARGS, "--concurrency", "1", "--log-level", "warn"])
        _on_network(self, network, alias)
        _publish(self, ADMIN_PORT, *listener_ports)
        self._timeout = timeout

    def start(self) -> EnvoyContainer:
        super().start()
        deadline = time.monotonic() + self._timeout
        while not _answers(self.admin_url + "/server_info"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"Envoy's admin API did not answer within {self._timeout} s: {self.get_logs()}")
            time.sleep(0.1)
        return self

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.get_exposed_port(ADMIN_PORT)}"

    def url(self, port: int = LISTENER_PORT) -> str:
        return f"http://127.0.0.1:{self.get_exposed_port(port)}"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError):
        return False


class GatewayStack:
    """etcd, the control plane (`--etcd`), authz, dyeing, ratelimit and one Envoy, on a network of their own:
    `with GatewayStack() as gateway:` (see stack.GatewayUnderTest). Config lives in etcd, as in a fleet: `apply`
    writes it with `xgate apply --prune` (the given config becomes the whole config). `pythonpath`: host folders
    authz imports Python policies from. `etcd_address`: etcd from this host, for `xgate apply`/`get` of your own.
    """

    def __init__(
        self, *, images: Images | None = None, pythonpath: Sequence[Path] = (), start_timeout: float = 120
    ) -> None:
        self._images = images or Images.from_environment()
        self._pythonpath = list(pythonpath)
        self._timeout = start_timeout
        self._network: Network | None = None
        self.etcd: EtcdContainer | None = None
        self.controlplane: XgateContainer | None = None
        self.envoy: EnvoyContainer | None = None
        self.service_containers: dict[str, XgateContainer] = {}
        self._upstream_host = ""

    def start(self) -> GatewayStack:
        self._network = Network().create()
        network, images, timeout = self._network, self._images, self._timeout
        xds = f"controlplane:{XDS_PORT}"
        self.etcd = EtcdContainer(images.etcd, network=network, timeout=timeout)
        self.controlplane = XgateContainer(
            "controlplane", "--etcd", self.etcd.internal_address, "--xds", f"0.0.0.0:{XDS_PORT}",
            "--status", f"0.0.0.0:{STATUS_PORT}", "--allow-empty",  # a test replaces whole configs: no guard
            image=images.xgate, alias="controlplane", network=network, publish=[STATUS_PORT], timeout=timeout,
        )  # fmt: skip
        self.service_containers = {name: self._service(name, xds) for name in SERVICES}
        self.envoy = EnvoyContainer([xds], image=images.envoy, node_id="xgate-test-envoy", network=network)
        containers: list[DockerContainer] = [
            self.etcd,
            self.controlplane,
            *self.service_containers.values(),
            self.envoy,
        ]
        try:
            # All at once: each process retries until what it connects to is up.
            with ThreadPoolExecutor(len(containers)) as pool:
                for started in [pool.submit(container.start) for container in containers]:
                    started.result()
            wait_until(
                self.status_url,
                lambda report: converged(report, envoys=1, services=len(SERVICES)),
                "Envoy and the services to connect to the control plane",
                timeout,
            )
            settings = self.envoy.get_wrapped_container().attrs["NetworkSettings"]["Networks"][network.name]
            self._upstream_host = str(settings["Gateway"])
        except BaseException:
            self.stop()
            raise
        return self

    def _service(self, name: str, xds: str) -> XgateContainer:
        return XgateContainer(
            name, "--xds", xds, "--listen", f"0.0.0.0:{SERVICE_PORTS[name]}", "--status", "off",
            image=self._images.xgate, alias=name, network=self._network, timeout=self._timeout,
            pythonpath=self._pythonpath if name == "authz" else (),
        )  # fmt: skip

    def _require(self, part: _T | None) -> _T:
        if part is None:
            raise RuntimeError("the gateway stack is not started")
        return part

    @property
    def url(self) -> str:
        return self._require(self.envoy).url(LISTENER_PORT)

    @property
    def status_url(self) -> str:
        return self._require(self.controlplane).url(STATUS_PORT)

    @property
    def admin_url(self) -> str:
        return self._require(self.envoy).admin_url

    @property
    def etcd_address(self) -> str:
        return self._require(self.etcd).address

    @property
    def upstream_host(self) -> str:
        """The network's gateway: an address of this host that the containers reach (bind test servers to it)."""
        return self._upstream_host

    @property
    def listener_port(self) -> int:
        return LISTENER_PORT

    @property
    def services(self) -> Mapping[str, str]:
        return {name: f"{name}:{port}" for name, port in SERVICE_PORTS.items()}

    def apply(self, config: str | Mapping[str, Any], timeout: float = 30.0) -> str:
        """Write the config to etcd (`xgate apply --prune --force`: it becomes the whole config) and wait until
        every Envoy and service ACKed it; return the etcd revision id it was applied at (etcd-N)."""
        text = complete_config(config, "0.0.0.0", LISTENER_PORT)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="xgate-apply-", delete=False) as file:
            file.write(text)
        try:
            result = subprocess.run(
                [sys.executable, "-m", "xgate", "apply", "-f", file.name, "--etcd", self.etcd_address,
                 "--prune", "--force"],
                capture_output=True, text=True, timeout=timeout,
            )  # fmt: skip
        finally:
            os.unlink(file.name)
        output = (result.stdout + result.stderr).replace(file.name, "config")
        if result.returncode == 2:
            raise ConfigRejected(f"the gateway refused the config:\n{output}")
        if result.returncode != 0:
            raise RuntimeError(f"xgate apply exited with {result.returncode}:\n{output}")
        found = re.search(r"etcd revision (\d+)", result.stdout)
        if found is None:
            raise RuntimeError(f"xgate apply did not say which etcd revision it wrote:\n{output}")
        revision = int(found.group(1))

        def done(report: dict[str, Any]) -> bool:
            refused = report["config"].get("refused")
            if refused and refused["revision"] == f"etcd-{revision}":
                raise ConfigRejected(f"xgate {refused['service']} refused the config: {refused['message']}")
            return etcd_revision_applied(report) >= revision and converged(report, envoys=1, services=3)

        wait_until(self.status_url, done, f"etcd revision {revision} to reach Envoy and every service", timeout)
        return f"etcd-{revision}"

    def logs(self) -> dict[str, str]:
        """What each container printed (for a failing test's report)."""
        parts = {"etcd": self.etcd, "controlplane": self.controlplane, "envoy": self.envoy, **self.service_containers}
        logs: dict[str, str] = {}
        for name, container in parts.items():
            if container is not None and container.get_wrapped_container() is not None:
                out, err = container.get_logs()
                logs[name] = (out + err).decode(errors="replace")
        return logs

    def stop(self) -> None:
        for container in [self.envoy, *self.service_containers.values(), self.controlplane, self.etcd]:
            if container is not None:
                container.stop()  # removes it, if it was created
        if self._network is not None:
            self._network.remove()
            self._network = None

    def __enter__(self) -> GatewayStack:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


__all__ = ["EnvoyContainer", "EtcdContainer", "GatewayStack", "Images", "XgateContainer"]
