"""Example xgate auth policies: copy this package, rename it, and name its policies in your config.

Config names a policy by import path, e.g. `xgate_example_policies:allow_admins`; the package must be
importable by the xgate process (installed, or its folder on PYTHONPATH). See ../README.md.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from xgate.authz import Allow, Decision, Deny, Request, cacheable, claims, header, inline, method, path, rule, source

# Declarative policies: the control plane lowers these to Envoy's RBAC filter, so no Python runs per request.

admins_read_write = rule(
    claims.groups.contains("admin") & method.any_of("GET", "POST"),
    deny=Deny(403, body="admins only"),
)
"""Members of the `admin` group may GET and POST; everyone else gets 403 "admins only"."""

internal_or_reader = rule(
    source.within("10.0.0.0/8", "127.0.0.0/8")
    | (claims.scope.any_of("read", "write") & path.startswith("/reports/") & header("x-tenant").exists()),
    deny=Deny(404, body="not found", headers={"cache-control": "no-store"}),
)
"""Internal clients, or a reader of reports naming its tenant; the others are told there is nothing here."""


@cacheable(30)
def allow_admins(request: Request, claims: dict[str, Any]) -> Decision:
    """Admins only; tells the upstream who they are. A plain function that only reads its arguments (no module,
    no I/O, no `while`), so xgate authz proves it cannot block and runs it inline, without the thread pool. It
    reads nothing but the claims, so it says so (`cacheable`): over the HTTP transport, xgate authz reuses its
    decision for the same route, method and token for 30 s instead of calling it."""
    if "admin" in claims.get("roles", []):
        return Allow(headers={"x-xgate-user": str(claims["sub"])})
    return Deny(403, body="admins only")


@inline
def read_only(request: Request, claims: dict[str, Any]) -> Decision:
    """GET and HEAD for everyone, other methods for admins. Quick and pure, so it runs inline (no thread hop)."""
    if request.method in ("GET", "HEAD") or "admin" in claims.get("roles", []):
        return Allow()
    return Deny(405, body="read only", headers={"allow": "GET, HEAD"})


async def tenant_header_matches(request: Request, claims: dict[str, Any]) -> Decision:
    """An async policy: the `x-tenant` header must be the token's tenant. Await I/O here (a cache, an HTTP
    call with a client created once at import), never block: it runs on the service's event loop."""
    await asyncio.sleep(0)  # stands for a lookup
    tenant = claims.get("tenant")
    if tenant is not None and request.headers.get("x-tenant") == tenant:
        return Allow(headers={"x-xgate-tenant": str(tenant)})
    return Deny(403, body="wrong tenant")


class QuotaPerSubject:
    """A class-based policy with state: at most `limit` requests per subject per `window` seconds.

    xgate instantiates the class once, with no arguments, and calls the instance; the state survives config
    reloads while neither the import path nor this module's source changes. Plain `__call__` methods run in a
    thread pool, hence the lock. (Per process only: use the rate_limit plugin for real limits.)
    """

    limit = 100
    window = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, int]] = {}

    def __call__(self, request: Request, claims: dict[str, Any]) -> Decision:
        subject = str(claims.get("sub", request.source))
        now = time.monotonic()
        with self._lock:
            started, count = self._seen.get(subject, (now, 0))
            if now - started >= self.window:
                started, count = now, 0
            self._seen[subject] = (started, count + 1)
        if count >= self.limit:
            retry_after = int(self.window - (now - started)) + 1
            return Deny(429, body="quota exceeded", headers={"retry-after": str(retry_after)})
        return Allow(headers={"x-xgate-quota-remaining": str(self.limit - count - 1)})
