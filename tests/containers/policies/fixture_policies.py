"""A Python policy for the gateway fixture's tests; authz imports it from this folder (mounted read-only into
the authz container with the containers backend)."""

from __future__ import annotations

from typing import Any

from xgate.authz import Allow, Decision, Deny, Request, inline


@inline
def needs_pass(request: Request, claims: dict[str, Any]) -> Decision:
    if request.headers.get("x-pass") == "yes":
        return Allow(headers={"x-passed": "yes"})
    return Deny(403, body="no pass")
