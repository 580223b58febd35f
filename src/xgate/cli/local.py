"""What `xgate up` settles before it starts anything: which demo upstreams to run, and that every port it needs
is free (one line naming a taken port and its holder, rather than children failing one after another)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from xgate.config.directory import load_path
from xgate.config.load import ConfigSet
from xgate.errors import ConfigError, PortInUseError
from xgate.ir.tls import listener_ports
from xgate.listen import check_free

# The echo upstreams of the bundled example, on the ports its upstreams name.
DEMO_UPSTREAMS = (("demo-v1", 18081), ("demo-v2", 18082))
# The gRPC echo upstream (examples/edge.yaml): started when the config's upstreams point at it.
GRPC_DEMOS = (("demo-grpc", 18091),)
# Endpoint hosts that mean "this machine", where `xgate up` can start a demo upstream.
_THIS_MACHINE = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Port:
    """A port one of `xgate up`'s processes will bind, and what for (said when it is taken)."""

    host: str
    port: int
    what: str


# The services `xgate up` starts, on their commands' default addresses.
SERVICE_PORTS = (
    Port("127.0.0.1", 18001, "xgate authz gRPC"),
    Port("127.0.0.1", 18011, "xgate authz HTTP checks"),
    Port("127.0.0.1", 18085, "xgate authz /metrics"),
    Port("127.0.0.1", 18002, "xgate dyeing gRPC"),
    Port("127.0.0.1", 18084, "xgate dyeing /metrics"),
    Port("127.0.0.1", 18003, "xgate ratelimit gRPC"),
    Port("127.0.0.1", 18083, "xgate ratelimit /metrics"),
)


def load_or_none(path: Path | None) -> ConfigSet | None:
    """The config at `path` (a file or a directory), or None when there is none or it is invalid: the control
    plane reports its problems, this only looks for ports and demo upstreams."""
    if path is None:
        return None
    try:
        return load_path(path)
    except ConfigError:
        return None


def named_demos(config: ConfigSet) -> list[tuple[str, int]]:
    """The demo upstreams the config's upstreams point at: an endpoint on this machine at a demo port (a copy
    of the bundled example, or a config written from it)."""
    ports = {e.port for upstream in config.upstreams for e in upstream.endpoints if e.host in _THIS_MACHINE}
    return [(name, port) for name, port in DEMO_UPSTREAMS + GRPC_DEMOS if port in ports]


def taken_by(port: Port) -> str | None:
    """Why `port` cannot be bound (it names the holder), or None when it is free."""
    try:
        check_free(port.host, port.port, port.what)
    except PortInUseError as exc:
        return str(exc)
    return None


def first_taken(ports: Sequence[Port]) -> str | None:
    """One line about the first taken port of `ports` and how many more are taken; None when all are free."""
    taken = [reason for reason in map(taken_by, ports) if reason is not None]
    if not taken:
        return None
    more = len(taken) - 1
    if not more:
        return taken[0]
    return f"{taken[0]}; {more} more of the ports xgate up needs {'are' if more > 1 else 'is'} taken too"


def choose_demos(
    demo: bool | None, *, example: bool, config: ConfigSet | None, say: Callable[[str], None]
) -> list[tuple[str, int]]:
    """The demo upstreams `xgate up` starts: both HTTP ones with `--demo` or the bundled example (and the gRPC
    one when the config points at it), none with `--no-demo`; otherwise those the config's upstreams point at
    whose port is free (a server already there is taken to be the user's own). `say` tells the user what was
    decided when it was not asked for."""
    if demo is not None or example:
        grpc = [found for found in named_demos(config) if found in GRPC_DEMOS] if config is not None else []
        return list(DEMO_UPSTREAMS) + grpc if demo is not False else []
    chosen: list[tuple[str, int]] = []
    for name, port in named_demos(config) if config is not None else []:
        held = taken_by(Port("127.0.0.1", port, f"demo upstream {name}"))
        if held is None:
            chosen.append((name, port))
        else:
            say(f"[xgate] not starting demo upstream {name}: {held}")
    if chosen:
        listed = ", ".join(f"{name} on 127.0.0.1:{port}" for name, port in chosen)
        say(f"[xgate] starting {listed}: the config's upstreams point there (--no-demo: don't)")
    return chosen


def ports_needed(
    control_plane: Sequence[Port], config: ConfigSet | None, demos: Sequence[tuple[str, int]]
) -> list[Port]:
    """Every port `xgate up` will bind, in the order they are reported: the control plane's and Envoy's admin,
    the config's listeners (Envoy would share a listener port with another Envoy, each getting some of the
    connections), the services', the demo upstreams'."""
    listeners = (
        [
            Port(item.address, port, f"listener {item.name}" + (" (its HTTP redirect)" if field != "port" else ""))
            for item in config.listeners
            for port, field in listener_ports(item)
        ]
        if config
        else []
    )
    return [
        *control_plane,
        *listeners,
        *SERVICE_PORTS,
        *(Port("127.0.0.1", port, f"demo upstream {name}") for name, port in demos),
    ]
