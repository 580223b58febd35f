"""JWT verification in the authz service (providers with `verify: python`): Envoy's jwt_authn, step for step.

For one request: every token where the provider looks (xgate.authz.extract), xgate's guard on each (size,
`crit`, `b64`, ECDSA signature length: xgate.authz.jose.guard, which the native path runs in Lua), then each
token from the last found to the first, as jwt_authn does: parsed as jwt_verify_lib parses it
(xgate.authz.jose), the issuer, nbf and exp with `clock_skew`, the audience (403), `require_exp` and
`max_lifetime` (exp at most that far from now), then the key (by `kid` and `alg`, from the provider's own
keys only) and the signature, whose crypto PyJWT does; then `required_claims` (Python path only). The first
refusal is the answer: 401 with `WWW-Authenticate: Bearer realm=..., error="invalid_token",
error_description=...` (RFC 6750; no error for a missing token), or 403 for a valid token whose audience is
not allowed. The order matters: it decides which of two faults a token is refused for, and so the status.

Each provider has its own cache of tokens that passed every check, keyed by a SHA-256 of the whole token,
trusted until the earlier of `exp` + clock skew and `CACHE_TTL` after verification; it is bounded (least
recently used out) and emptied when the provider's keys change, so a removed key stops verifying at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from xgate.authz import jose
from xgate.authz.extract import Found, find
from xgate.authz.keys import KeySource, RemoteKeys, StaticKeys
from xgate.plugins.jwt import Provider

log = logging.getLogger("xgate.authz")


class NeedsKeys:
    """Verifier.verify_now's answer when the provider's keys must be fetched again first."""


CACHE_ENTRIES = 10_000
CACHE_TTL = 300.0  # seconds a verified token is trusted without verifying again, at most


@dataclass(frozen=True, slots=True)
class Refusal:
    """A token refused: `status` 401 (missing or invalid) or 403 (valid, not for this audience)."""

    status: int
    description: str
    missing: bool = False

    def challenge(self, realm: str) -> str:
        """The WWW-Authenticate value (RFC 6750 section 3; quoted-strings escaped)."""
        if self.missing:
            return f'Bearer realm="{_quoted(realm)}"'
        return (
            f'Bearer realm="{_quoted(realm)}", error="invalid_token", error_description="{_quoted(self.description)}"'
        )


@dataclass(slots=True)
class TokenCache:
    """One provider's verified tokens: SHA-256 of the token -> (trusted until, claims); LRU-bounded. Safe to
    share between the service's threads."""

    max_entries: int = CACHE_ENTRIES
    ttl: float = CACHE_TTL
    clock: Callable[[], float] = time.time
    # The claims are kept as JSON text: json.loads hands every request a fresh copy at a tenth of deepcopy's cost.
    _entries: OrderedDict[bytes, tuple[float, str]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str) -> dict[str, Any] | None:
        key = _digest(token)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if self.clock() >= entry[0]:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
        claims: dict[str, Any] = json.loads(entry[1])
        return claims

    def put(self, token: str, claims: dict[str, Any], expires: float | None) -> None:
        """Trust `token` until `expires` (a Unix time; None: no exp) but never longer than `ttl` from now."""
        until = self.clock() + self.ttl
        if expires is not None:
            until = min(until, expires)
        key, text = _digest(token), json.dumps(claims)
        with self._lock:
            self._entries[key] = (until, text)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenVerifier:
    """One provider's verification: `find(headers, path)` the tokens, `verify(found)` them."""

    def __init__(
        self, provider: Provider, *, cache_entries: int = CACHE_ENTRIES, clock: Callable[[], float] = time.time
    ) -> None:
        self.provider = provider
        self.cache = TokenCache(max_entries=cache_entries, clock=clock)
        self.keys: KeySource = (
            RemoteKeys(provider, self.cache.clear) if provider.jwks_uri is not None else StaticKeys(provider)
        )
        self._clock = clock
        # jwt_authn reads a clock skew of 0 as its default, 60 s (the config refuses less than 1 s).
        self._skew = int(provider.clock_skew) or 60
        self._audiences = frozenset(_sanitized(audience) for audience in provider.audiences)

    def find(self, headers: list[tuple[str, str]], path: str) -> Found | None:
        """The request's tokens (headers as (lower-case name, value) pairs), or None when it has none."""
        return find(self.provider, headers, path)

    async def verify(self, found: Found) -> dict[str, Any] | Refusal:
        """The claims of the request's first token (a fresh copy) or why it is refused; never raises."""
        result = self.verify_now(found)
        if isinstance(result, NeedsKeys):
            await self.keys.refetch()
            result = self.verify_now(found, refetched=True)
        assert not isinstance(result, NeedsKeys)
        return result

    def verify_now(self, found: Found, refetched: bool = False) -> dict[str, Any] | Refusal | NeedsKeys:
        """As `verify`, without waiting for anything, from any thread: NeedsKeys when a token names a key the
        JWKS lacks and may be fetched again for; then `await keys.refetch()` and call again `refetched`."""
        cached = [self.cache.get(token) for token in found.tokens]
        for token, claims in zip(found.tokens, cached, strict=True):
            # A cached token passed the guard already (the cache belongs to this provider's settings).
            if claims is None and (reason := jose.guard(token, self.provider.max_token_bytes)) is not None:
                return Refusal(401, reason)
        result: dict[str, Any] | Refusal | NeedsKeys = {}
        for token, claims in reversed(list(zip(found.tokens, cached, strict=True))):
            result = claims if claims is not None else self._verified(token, refetched)
            if not isinstance(result, dict):
                return result
        return result

    def _verified(self, token: str, refetched: bool) -> dict[str, Any] | Refusal | NeedsKeys:
        parsed = jose.parse(token)
        if isinstance(parsed, str):
            return Refusal(401, parsed)
        result = self._check(parsed, refetched)
        if isinstance(result, dict):
            expires = float(parsed.exp + self._skew) if parsed.exp else None
            self.cache.put(token, result, expires)
        return result

    def _check(self, jwt: jose.Jwt, refetched: bool) -> dict[str, Any] | Refusal | NeedsKeys:
        provider = self.provider
        if provider.issuer is not None and jwt.iss != provider.issuer:
            return Refusal(401, "Jwt issuer is not configured")
        now = self._clock()
        if int(now) + self._skew < jwt.nbf:
            return Refusal(401, "Jwt not yet valid")
        if jwt.exp and int(now) > jwt.exp + self._skew:
            return Refusal(401, "Jwt is expired")
        if self._audiences and not any(_sanitized(audience) in self._audiences for audience in jwt.audiences):
            return Refusal(403, "Audiences in Jwt are not allowed")
        lifetime = provider.max_lifetime
        if (provider.require_exp or lifetime is not None) and not jwt.exp:
            return Refusal(401, "Jwt verification fails")  # jwt_authn's words for a missing exp
        if lifetime is not None and jwt.exp - now >= lifetime:
            return Refusal(401, "Jwt verification fails")
        keys = self.keys.keys.candidates(jwt.kid or None, jwt.alg)
        unknown_kid = bool(jwt.kid) and jwt.kid not in self.keys.keys.kids
        if not keys and unknown_kid and not refetched and self.keys.may_refetch():
            return NeedsKeys()
        if not keys:
            return Refusal(401, "Jwks doesn't have key to match kid or alg from Jwt")
        if not any(_signed(jwt, key) for key in keys):
            return Refusal(401, "Jwt verification fails")
        for name in provider.required_claims:
            if name not in jwt.payload:
                return Refusal(401, f"Jwt has no {name} claim")
        claims: dict[str, Any] = jose.plain(jwt.payload)
        return claims


def _signed(jwt: jose.Jwt, key: Any) -> bool:
    try:
        return bool(key.Algorithm.verify(jwt.signing_input, key.key, jwt.signature))
    except (ValueError, TypeError):  # a signature the algorithm cannot even read
        return False


def _sanitized(audience: str) -> str:
    """An audience as jwt_verify_lib compares it: without an http:// or https:// scheme and one trailing slash."""
    for scheme in ("https://", "http://"):
        if audience.startswith(scheme):
            return audience[len(scheme) : -1 if audience.endswith("/") else None]
    return audience[:-1] if audience.endswith("/") else audience


def claim_headers(provider: Provider, claims: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """forward_claims as (headers to set, headers to remove): a claim that is absent or not a plain value
    removes the header, so a client cannot supply it itself."""
    headers: dict[str, str] = {}
    remove: list[str] = []
    for claim, header in sorted(provider.forward_claims.items()):
        value = claims.get(claim)
        text = (
            ("true" if value else "false") if isinstance(value, bool)
            else str(value) if isinstance(value, str | int | float)
            else None
        )  # fmt: skip
        if text is None or any(char in text for char in "\r\n\x00"):
            remove.append(header.lower())
        else:
            headers[header.lower()] = text
    return headers, remove


class JwtProviders:
    """The providers the service verifies for, by name; `load` swaps in a new set, keeping the verifier (its
    keys and cache) of every provider whose definition did not change."""

    def __init__(self) -> None:
        self._verifiers: dict[str, TokenVerifier] = {}

    def get(self, name: str) -> TokenVerifier | None:
        return self._verifiers.get(name)

    def health(self) -> list[dict[str, Any]]:
        """Each provider's keys: where from, key ids, fetches and failures (see keys.RemoteKeys.health)."""
        return [{"provider": name, **verifier.keys.health()} for name, verifier in sorted(self._verifiers.items())]

    async def load(self, providers: Mapping[str, Provider], *, strict: bool = False) -> None:
        """Swap in `providers`. A provider whose keys cannot be read (a jwks_file that went away or is not
        JSON) is left out and logged; `strict`: it raises ValueError instead and nothing changes."""
        old = self._verifiers
        new: dict[str, TokenVerifier] = {}
        for name, provider in providers.items():
            kept = old.get(name)
            if kept is not None and kept.provider == provider:
                new[name] = kept
                continue
            try:
                new[name] = TokenVerifier(provider)
            except (OSError, ValueError) as exc:
                if strict:
                    raise ValueError(f"jwt provider {name}: {exc}") from exc
                log.error("jwt provider %s not loaded: %s", name, exc)
                continue
        for verifier in new.values():
            if verifier not in old.values() and isinstance(verifier.keys, RemoteKeys):
                verifier.keys.start()
        self._verifiers = new
        for name, verifier in old.items():
            if new.get(name) is not verifier:
                await verifier.keys.close()

    async def close(self) -> None:
        await self.load({})
