"""The intermediate representation: validated objects with references checked and plugins resolved."""

from __future__ import annotations

from xgate.ir.build import build_ir
from xgate.ir.model import GatewayIR, ListenerIR, RouteIR

__all__ = ["GatewayIR", "ListenerIR", "RouteIR", "build_ir"]
