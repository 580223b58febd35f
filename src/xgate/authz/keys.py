"""A provider's verification keys in the authz service: inline, from a file, or fetched from its HTTPS jwks_uri.

Keys are parsed once per key set, into one PyJWT key per (JWK, algorithm it may verify) as plugins/jwks.py
decides, so a request only looks keys up. A remote set is fetched when the provider is loaded, again every
`jwks_refresh`, and when a token names an unknown `kid`, at most once per `jwks_min_refetch` (a stream of
made-up kids cannot make the service hammer the issuer). A failed fetch (network, TLS, status, JSON, no usable
key) keeps the last good set. Only the configured URL is ever fetched: redirects are not followed, and nothing
in a token (`jku`, `x5u`, `x5c`, `jwk`) is ever used to find a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt

from xgate.plugins.jwks import Algorithm, key_algorithms
from xgate.plugins.jwt import Provider

log = logging.getLogger("xgate.authz")

MAX_JWKS_BYTES = 1 << 20
FETCH_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Key:
    kid: str | None
    algorithm: Algorithm
    key: jwt.PyJWK


class KeySet:
    """Parsed keys; `candidates(kid, alg)` are the keys a token with that header may be verified with."""

    def __init__(self, jwks: Any, allowed: tuple[Algorithm, ...] | None, *, secrets: bool = True) -> None:
        keys: list[Key] = []
        listed = jwks.get("keys") if isinstance(jwks, dict) else None
        for index, jwk in enumerate(listed if isinstance(listed, list) else ()):
            if not isinstance(jwk, dict) or (jwk.get("kty") == "oct" and not secrets):
                continue  # a shared secret never comes over the network
            kid = jwk.get("kid")
            for algorithm in key_algorithms(jwk, allowed):
                try:
                    parsed = jwt.PyJWK(jwk, algorithm)
                    keys.append(Key(kid if isinstance(kid, str) else None, algorithm, parsed))
                    if algorithm == "HS256" and len(parsed.key) < 32:
                        log.warning("jwks key %d (kid %r): HS256 secret shorter than 32 bytes", index, kid)
                except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
                    log.warning("jwks key %d (kid %r) unusable for %s: %s", index, kid, algorithm, exc)
        self.keys = tuple(keys)
        self.kids = frozenset(key.kid for key in keys if key.kid is not None)

    def candidates(self, kid: str | None, algorithm: str) -> list[jwt.PyJWK]:
        """The keys of the token's alg; a token naming a kid skips keys with another kid (keys without a kid
        are still tried, as Envoy's jwt_verify_lib does)."""
        return [
            key.key
            for key in self.keys
            if key.algorithm == algorithm and (kid is None or key.kid is None or key.kid == kid)
        ]


class StaticKeys:
    """Inline `jwks`, or the `jwks_file` the control plane read and sent inline (both are the provider's
    `key_set`); a changed file arrives as a new provider, with a new cache."""

    def __init__(self, provider: Provider) -> None:
        self.keys = KeySet(provider.key_set or {}, provider.algorithms)

    def may_refetch(self) -> bool:
        return False

    async def refetch(self) -> bool:
        return False

    def health(self) -> dict[str, Any]:
        """For status and metrics: the key ids held (no fetching, nothing to fail)."""
        return {"source": "static", "kids": sorted(self.keys.kids), "keys": len(self.keys.keys), "failing": False}

    async def close(self) -> None:
        return None


class RemoteKeys:
    """The key set at `jwks_uri`, kept fresh by a background task; `on_change` runs after each new set."""

    def __init__(
        self, provider: Provider, on_change: Callable[[], None], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        assert provider.jwks_uri is not None
        self.provider = provider
        self.uri = provider.jwks_uri
        self.keys = KeySet({}, provider.algorithms)
        self._jwks: Any = None
        self.fetches = 0  # attempts, for tests and logs
        # JWKS health, for status and metrics: good fetches (changed or not), failures, when and why.
        self.successes = 0
        self.failures = 0
        self.last_success: float | None = None
        self.last_error: str | None = None
        self._failing = False
        self._on_change = on_change
        self._clock = clock
        self._last_attempt = -float("inf")
        self._inflight: asyncio.Task[bool] | None = None
        self._ssl = ssl.create_default_context(cafile=provider.jwks_ca_file)
        self._session: aiohttp.ClientSession | None = None
        self._refresher: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._refresher = asyncio.create_task(self._refresh_loop(), name=f"jwks {self.provider.name}")

    async def close(self) -> None:
        for task in (self._refresher, self._inflight):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._session is not None:
            await self._session.close()

    def may_refetch(self) -> bool:
        """Whether `refetch` would fetch (or wait for a fetch under way) rather than answer False at once."""
        return self._inflight is not None or self._clock() - self._last_attempt >= self.provider.jwks_min_refetch

    async def refetch(self) -> bool:
        """For a token with an unknown kid: fetch now unless a fetch started less than `jwks_min_refetch` ago
        (then wait for that one if it is still running). True when the key set changed."""
        if self._inflight is not None:
            return await asyncio.shield(self._inflight)
        if self._clock() - self._last_attempt < self.provider.jwks_min_refetch:
            return False
        return await self._fetch()

    async def _refresh_loop(self) -> None:
        while True:
            await self._fetch()
            await asyncio.sleep(self.provider.jwks_refresh)

    async def _fetch(self) -> bool:
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._fetch_once())
            self._inflight.add_done_callback(lambda _: setattr(self, "_inflight", None))
        return await asyncio.shield(self._inflight)

    async def _fetch_once(self) -> bool:
        self._last_attempt = self._clock()
        self.fetches += 1
        try:
            jwks = await self._get()
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, ValueError) as exc:
            log.error("jwks of provider %s from %s: fetch failed (%s); keeping the last good keys",
                      self.provider.name, self.uri, exc or type(exc).__name__)  # fmt: skip
            self._failed(str(exc) or type(exc).__name__)
            return False
        keys = KeySet(jwks, self.provider.algorithms, secrets=False)
        if not keys.keys:
            log.error("jwks of provider %s from %s: no usable key; keeping the last good keys",
                      self.provider.name, self.uri)  # fmt: skip
            self._failed("no usable key")
            return False
        self.successes, self.last_success, self._failing = self.successes + 1, time.time(), False
        if jwks == self._jwks:
            return False
        self.keys, self._jwks = keys, jwks
        self._on_change()
        log.info("jwks of provider %s from %s: %d keys", self.provider.name, self.uri, len(keys.keys))
        return True

    def _failed(self, reason: str) -> None:
        self.failures, self.last_error, self._failing = self.failures + 1, reason, True

    def health(self) -> dict[str, Any]:
        """For status and metrics: fetches, failures, the last good fetch, whether the last one failed (the keys
        then are the last good ones), and the key ids held."""
        return {
            "source": self.uri,
            "kids": sorted(self.keys.kids),
            "keys": len(self.keys.keys),
            "fetch_success": self.successes,
            "fetch_failed": self.failures,
            "last_success": self.last_success,
            "last_error": self.last_error,
            "failing": self._failing,
        }

    async def _get(self) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT))
        async with self._session.get(self.uri, ssl=self._ssl, allow_redirects=False) as answer:
            if answer.status != 200:
                raise ValueError(f"HTTP {answer.status}")
            body = await answer.content.read(MAX_JWKS_BYTES + 1)
            if len(body) > MAX_JWKS_BYTES:
                raise ValueError(f"larger than {MAX_JWKS_BYTES} bytes")
            return json.loads(body)


KeySource = StaticKeys | RemoteKeys
