"""Server ports: bound by one process only unless sharing is asked for, and a taken port named with its holder.

gRPC's servers turn SO_REUSEPORT on by default, so a second control plane on a taken xDS port binds it too
and the kernel hands each new Envoy connection to either one. xgate's servers ask for that only where
sharing is the point (several service processes behind one address, `--reuse-port`).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
from typing import Any

import psutil

from xgate.errors import PortInUseError

# Leaves the xDS and status ports unshared; several processes on one service port is opt-in.
_NO_REUSE_PORT = ("grpc.so_reuseport", 0)
_LONGEST_COMMAND = 120


def grpc_options(*, reuse_port: bool = False) -> list[tuple[str, Any]]:
    """The options every xgate gRPC server starts with: SO_REUSEPORT only when sharing was asked for."""
    return [("grpc.so_reuseport", 1)] if reuse_port else [_NO_REUSE_PORT]


def check_free(host: str, port: int, what: str) -> None:
    """Raise PortInUseError when `host:port` cannot be bound because something listens there already.

    Port 0 (any port) is always free. Binding first with a plain socket gives our own message instead of
    grpc's C-core error lines. Errors: PortInUseError."""
    if port == 0:
        return
    with contextlib.suppress(socket.gaierror):
        for family, kind, proto, _, address in socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM):
            with socket.socket(family, kind, proto) as probe:
                # As the servers do: connections of an earlier run in TIME_WAIT do not make the port taken.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(address)
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        raise PortInUseError(taken_message(host, port, what)) from None
                    # Another reason (an address not on this machine): the server's own bind reports it.
                    return


def bind_grpc(server: Any, host: str, port: int, what: str, *, reuse_port: bool = False) -> int:
    """`server.add_insecure_port(host:port)` with a taken port reported in our words; returns the bound port.

    Errors: PortInUseError when the port is taken (and not shared on purpose), RuntimeError from grpc when
    the address cannot be bound for another reason."""
    if not reuse_port:
        check_free(host, port, what)
    try:
        bound: int = server.add_insecure_port(f"{_bracketed(host)}:{port}")
    except RuntimeError:
        # Taken between our check and grpc's bind, or held by another process without SO_REUSEPORT.
        if port and holder(host, port) is not None:
            raise PortInUseError(taken_message(host, port, what)) from None
        raise
    return bound


def taken_message(host: str, port: int, what: str) -> str:
    """`HOST:PORT (WHAT) is in use by pid N (its command line)`, or `... is in use by another process`."""
    found = holder(host, port)
    return f"{_bracketed(host)}:{port} ({what}) is in use by {found or 'another process'}"


def holder(host: str, port: int) -> str | None:
    """The process listening on `port` at `host` (or at every address), e.g. `pid 42 (xgate controlplane ...)`,
    with the `xgate up` that runs it; None when no listener is visible (another user's process, no /proc)."""
    wanted = _addresses(host)
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    for connection in connections:
        if connection.status != psutil.CONN_LISTEN or not connection.laddr or connection.laddr.port != port:
            continue
        ip = _unmapped(connection.laddr.ip)
        if wanted and ip not in wanted and not _is_any(ip):
            continue
        if connection.pid is None:
            return "another process (not ours to see)"
        return _describe(connection.pid)
    return None


def _describe(pid: int) -> str:
    try:
        process = psutil.Process(pid)
        command = _command(process.cmdline()) or process.name()
        parents = process.parents()
    except psutil.Error:
        return f"pid {pid}"
    described = f"pid {pid} ({command})"
    for parent in parents:
        with contextlib.suppress(psutil.Error):
            if _command(parent.cmdline()).startswith("xgate up"):
                return f"{described}, run by `xgate up` (pid {parent.pid})"
    return described


def _command(argv: list[str]) -> str:
    """A command line as a user would recognise it: `python -m xgate authz ...` shown as `xgate authz ...`."""
    for index, arg in enumerate(argv):
        if (arg == "xgate" and index > 0 and argv[index - 1] == "-m") or arg.endswith("/xgate"):
            argv = ["xgate", *argv[index + 1 :]]
            break
    text = " ".join(argv)
    return text if len(text) <= _LONGEST_COMMAND else text[: _LONGEST_COMMAND - 3] + "..."


def _addresses(host: str) -> set[str]:
    """The IP addresses `host` stands for (empty for a wildcard: any listener on the port counts)."""
    if _is_any(host.strip("[]")):
        return set()
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host.strip("[]"), None, type=socket.SOCK_STREAM)}
    except socket.gaierror:
        return set()


def _unmapped(ip: str) -> str:
    """`::ffff:127.0.0.1` (grpc binds IPv4 addresses on a dual-stack socket) as `127.0.0.1`."""
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(ip)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
    return ip


def _is_any(ip: str) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(ip).is_unspecified
    return ip == ""


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
