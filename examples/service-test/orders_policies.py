"""The orders team's authorization rule, run by xgate's authz service for each request of the orders route:
anyone with a valid token reads, only tokens with the `orders:write` scope create orders."""

from __future__ import annotations

from typing import Any

from xgate.authz import Allow, Decision, Deny, Request, inline


@inline  # quick and pure: it runs in the check's own thread
def can_write_orders(request: Request, claims: dict[str, Any]) -> Decision:
    if request.method in ("GET", "HEAD"):
        return Allow()
    if "orders:write" in str(claims.get("scope", "")).split():
        return Allow()
    return Deny(403, body="creating orders needs the orders:write scope")
