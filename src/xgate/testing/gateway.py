"""A real gateway for integration tests: the control plane in this process, a real Envoy as a child."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xgate.controlplane import ControlPlane
from xgate.discovery.snapshot import Snapshot
from xgate.proxy.bootstrap import DRAIN_ARGS, build_bootstrap
from xgate.proxy.process import EnvoyProcess
from xgate.runtime import Bound, run_controlplane
from xgate.sources.etcd.client import EtcdSettings
from xgate.sources.etcd.layout import DEFAULT_PREFIX
from xgate.sources.revision import revision_of
from xgate.testing.ports import free_ports


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1 (for config files that must name a port)."""
    return free_ports(1)[0]


def write_atomic(path: Path, text: str) -> None:
    """Save the way most editors do: write a temporary file, then rename it over the original."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


@dataclass
class Gateway:
    """A control plane serving `config_path` and/or etcd, and one or more Envoys connected to it."""

    config_path: Path | None
    work_dir: Path
    plane: ControlPlane
    etcd: EtcdSettings | None = None
    prefix: str = DEFAULT_PREFIX
    xds_port: int = 0
    status_port: int = 0
    envoys: list[EnvoyProcess] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event | None = None
    _output: Callable[[str], None] | None = None

    @property
    def snapshot(self) -> Snapshot | None:
        return self.plane.cache.snapshot

    async def start_controlplane(self, timeout: float = 10.0) -> None:
        ready: asyncio.Future[Bound] = asyncio.get_running_loop().create_future()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(
            run_controlplane(
                self.config_path,
                etcd=self.etcd,
                prefix=self.prefix,
                xds=("127.0.0.1", self.xds_port),
                status=("127.0.0.1", self.status_port),
                on_ready=lambda bound: None if ready.done() else ready.set_result(bound),
                stop=self._stop,
                plane=self.plane,
            )
        )
        bound = await asyncio.wait_for(_first(ready, self._task), timeout)
        self.xds_port, self.status_port = bound.xds[1], bound.status[1]

    async def stop_controlplane(self) -> None:
        if self._task is not None and self._stop is not None:
            self._stop.set()
            await self._task
            self._task = None

    async def start_envoy(
        self,
        node_id: str = "test-envoy",
        timeout: float = 20.0,
        xds_ports: list[int] | None = None,
        stats_port: int | None = None,
        delta: bool = True,
        drain_args: Sequence[str] = DRAIN_ARGS,
    ) -> EnvoyProcess:
        """Start a real Envoy bootstrapped to this control plane (or to every port in `xds_ports`), speaking delta
        ADS (`delta=False`: state of the world); with `stats_port`, its stats listener there (and its admin on a
        port chosen now, which the control plane reads its counters from). `drain_args`: how it drains a changed
        listener's connections (default: as `xgate envoy` runs it)."""
        servers = [("127.0.0.1", port) for port in (xds_ports or [self.xds_port])]
        stats = ("127.0.0.1", stats_port) if stats_port else None
        bootstrap = build_bootstrap(
            node_id=node_id, node_cluster="test", xds_servers=servers, admin_port=free_port() if stats else 0,
            stats=stats, delta=delta,
        )  # fmt: skip
        envoy = EnvoyProcess(
            bootstrap,
            self.work_dir / f"envoy-{node_id}-{len(self.envoys)}",
            concurrency=1,
            output=self._output,
            extra_args=list(drain_args),
        )
        await envoy.start()
        self.envoys.append(envoy)
        await envoy.wait_ready(timeout)
        return envoy

    async def apply(self, text: str, timeout: float = 10.0) -> str:
        """Save `text` as the config (atomic rename) and wait until every Envoy ACKed it; return its revision."""
        assert self.config_path is not None, "apply() writes the config file; this gateway has none"
        revision = revision_of(text)
        write_atomic(self.config_path, text)
        await self.wait_synced(revision, timeout)
        return revision

    async def wait_synced(self, revision: str, timeout: float = 10.0) -> None:
        async def synced() -> bool:
            report = self.plane.report()
            applied = str(report["config"]["applied_revision"])
            return (
                # A config whose secrets name files has revision <config digest>.<files digest>.
                (applied == revision or applied.startswith(revision + "."))
                and len(report["proxies"]) >= len([e for e in self.envoys if e.returncode is None])
                and report["all_in_sync"]
            )

        await wait_for(synced, timeout, f"revision {revision} to reach every Envoy")

    async def wait_etcd_revision(self, revision: int, timeout: float = 10.0) -> None:
        """Wait until the control plane applied etcd revision `revision` (or later) and every Envoy ACKed it."""

        def reached() -> bool:
            report = self.plane.report()
            applied = str(report["config"]["applied_revision"] or "")
            _, _, number = applied.rpartition("etcd-")
            alive = len([e for e in self.envoys if e.returncode is None])
            return (
                number.isdigit()
                and int(number) >= revision
                and len(report["proxies"]) >= alive
                and report["all_in_sync"]
            )

        await wait_for(reached, timeout, f"etcd revision {revision} to reach every Envoy")

    async def wait_for_rejection(self, containing: str = "", timeout: float = 10.0) -> list[str]:
        """Wait until the current config is rejected with an issue containing `containing`; return the issues."""

        def rejected() -> bool:
            return any(containing in issue for issue in self.plane.state.issues)

        await wait_for(rejected, timeout, f"a rejection mentioning {containing!r}")
        return list(self.plane.state.issues)

    async def close(self) -> None:
        for envoy in self.envoys:
            await envoy.stop()
        await self.stop_controlplane()


async def _first(ready: asyncio.Future[Bound], task: asyncio.Task[None]) -> Bound:
    waiting: set[asyncio.Future[Any]] = {ready, task}
    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if ready in done:
        return ready.result()
    task.result()  # raises what stopped the control plane
    raise RuntimeError("the control plane stopped before it was ready")


async def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> None:
    """Poll `check` (sync or async) until truthy; fail with `what` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def run_gateway(
    config_text: str | None,
    work_dir: Path,
    *,
    envoys: int = 1,
    output: Callable[[str], None] | None = None,
    etcd: EtcdSettings | None = None,
    prefix: str = DEFAULT_PREFIX,
    allow_empty: bool = False,
) -> AsyncIterator[Gateway]:
    """Start a control plane on `config_text` (a file) and/or `etcd`, and `envoys` real Envoys; wait until
    they serve it (with etcd: until they serve what etcd held at start). `allow_empty`: the control plane's
    --allow-empty."""
    work_dir.mkdir(parents=True, exist_ok=True)
    config_path = None
    if config_text is not None:
        config_path = work_dir / "gateway.yaml"
        config_path.write_text(config_text, encoding="utf-8")
    gateway = Gateway(
        config_path=config_path,
        work_dir=work_dir,
        plane=ControlPlane(allow_empty=allow_empty),
        etcd=etcd,
        prefix=prefix,
        _output=output,
    )
    try:
        await gateway.start_controlplane()
        for index in range(envoys):
            await gateway.start_envoy(node_id=f"test-envoy-{index}")
        if envoys == 0:
            await wait_for(lambda: gateway.plane.state.applied is not None, 10, "a config to be applied")
        elif etcd is None and config_text is not None:
            await gateway.wait_synced(revision_of(config_text))
        else:
            await wait_for(lambda: gateway.plane.report()["all_in_sync"], 10, "every Envoy to be in sync")
        yield gateway
    finally:
        await gateway.close()
