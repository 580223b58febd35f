"""JWT verification in the authz service (providers with `verify: python`), with PyJWT doing the JOSE.

For one request: find the token where the provider says (headers with a prefix, cookies, query parameters;
the first found wins, as Envoy's extractor), look it up in the provider's verified-token cache, else verify:
header parsed, `alg` among the provider's algorithms, no `crit`, a key chosen by `kid`/`alg` from the
provider's own key set only, signature, `exp` (required unless `require_exp: false`), `nbf`, `clock_skew`,
`max_lifetime`, exact `iss`, `required_claims`, then the audience. The answers are the native path's: 401 with
`WWW-Authenticate: Bearer realm=..., error="invalid_token", error_description=...` (RFC 6750; no error for a
missing token) for a missing or invalid token, 403 for a valid token whose audience is not allowed.

Each provider has its own cache of tokens that passed every check, keyed by a SHA-256 of the whole token,
trusted until the earlier of `exp` + clock skew and `CACHE_TTL` after verification; it is bounded (least
recently used out) and emptied when the provider's keys change, so a removed key stops verifying at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl

import jwt
from jwt.types import Options

from xgate.authz.keys import KeySource, RemoteKeys, StaticKeys
from xgate.plugins.jwt import Provider

log = logging.getLogger("xgate.authz")


class NeedsKeys:
    """Verifier.verify_now's answer when the provider's keys must be fetched again first."""


MAX_TOKEN_BYTES = 16 * 1024  # Envoy refuses a whole header block over 60 KiB; a real token is < 4 KiB
CACHE_ENTRIES = 10_000
CACHE_TTL = 300.0  # seconds a verified token is trusted without verifying again, at most
_JWT_RUN = re.compile(r"[A-Za-z0-9_.-]+")


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
    """One provider's verification: `find(headers, path)` the token, `verify(token)` it."""

    def __init__(self, provider: Provider, *, cache_entries: int = CACHE_ENTRIES) -> None:
        self.provider = provider
        self.cache = TokenCache(max_entries=cache_entries)
        self.keys: KeySource = (
            RemoteKeys(provider, self.cache.clear) if provider.jwks_uri is not None else StaticKeys(provider)
        )
        # iss and aud are checked here (exact match, 403 for aud); iat, sub, jti are not checked, as in Envoy.
        self._options = Options(
            verify_aud=False, verify_iss=False, verify_iat=False, verify_sub=False, verify_jti=False,
            require=["exp"] if provider.require_exp else [],
        )  # fmt: skip

    def find(self, headers: Mapping[str, str], path: str) -> tuple[str, str | None] | None:
        """(token, header name it came in or None) from the first place the provider names that has one."""
        for source in self.provider.headers:
            value = headers.get(source.name.lower())
            if value is not None and (token := _after_prefix(value, source.prefix)):
                return token, source.name.lower()
        if self.provider.cookies and (cookie := headers.get("cookie")):
            jar = SimpleCookie()
            try:
                jar.load(cookie)
            except Exception:  # http.cookies raises CookieError on hostile input; treat as no cookie
                jar = SimpleCookie()
            for name in self.provider.cookies:
                if name in jar and jar[name].value:
                    return jar[name].value, None
        if self.provider.query and "?" in path:
            params = dict(parse_qsl(path.split("?", 1)[1], keep_blank_values=False))
            for name in self.provider.query:
                if params.get(name):
                    return params[name], None
        return None

    async def verify(self, token: str) -> dict[str, Any] | Refusal:
        """The token's claims (a fresh copy) or why it is refused; never raises for any token."""
        result = self.verify_now(token)
        if isinstance(result, NeedsKeys):
            await self.keys.refetch()
            result = self.verify_now(token, refetched=True)
        assert not isinstance(result, NeedsKeys)
        return result

    def verify_now(self, token: str, refetched: bool = False) -> dict[str, Any] | Refusal | NeedsKeys:
        """As `verify`, without waiting for anything, from any thread: NeedsKeys when the token names a key
        the JWKS lacks and may be fetched again for; then `await keys.refetch()` and call again `refetched`."""
        cached = self.cache.get(token)
        if cached is not None:
            return cached
        result = self._verify(token, refetched)
        if isinstance(result, Refusal | NeedsKeys):
            return result
        exp = result.get("exp")
        self.cache.put(token, result, float(exp) + self.provider.clock_skew if isinstance(exp, int | float) else None)
        return result  # PyJWT's own fresh dict; the cache keeps its JSON text

    def _verify(self, token: str, refetched: bool) -> dict[str, Any] | Refusal | NeedsKeys:
        if len(token) > MAX_TOKEN_BYTES:
            return Refusal(401, "Jwt is too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return Refusal(401, "Jwt is not in the form of Header.Payload.Signature")
        algorithm, kid = header.get("alg"), header.get("kid")
        if "crit" in header:
            return Refusal(401, "Jwt header has crit parameters this verifier does not understand")
        if not isinstance(algorithm, str) or (kid is not None and not isinstance(kid, str)):
            return Refusal(401, "Jwt header alg or kid is not a string")
        keys = self.keys.keys.candidates(kid, algorithm)
        unknown_kid = kid is not None and kid not in self.keys.keys.kids
        if not keys and unknown_kid and not refetched and self.keys.may_refetch():
            return NeedsKeys()
        if not keys:
            return Refusal(401, "Jwks doesn't have key to match kid or alg from Jwt")
        claims: dict[str, Any] | None = None
        for key in keys:
            try:
                with warnings.catch_warnings():
                    # A short HMAC secret is the operator's choice, logged when the keys load, not per request.
                    warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
                    claims = jwt.decode(
                        token, key, algorithms=[algorithm], options=self._options, leeway=self.provider.clock_skew
                    )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                return Refusal(401, "Jwt is expired")
            except jwt.ImmatureSignatureError:
                return Refusal(401, "Jwt not yet valid")
            except jwt.MissingRequiredClaimError as exc:
                return Refusal(401, f"Jwt has no {exc.claim} claim")
            except (jwt.PyJWTError, ValueError, TypeError, json.JSONDecodeError):
                return Refusal(401, "Jwt verification fails")
        if claims is None:
            return Refusal(401, "Jwt verification fails")
        return self._claims(claims)

    def _claims(self, claims: dict[str, Any]) -> dict[str, Any] | Refusal:
        provider = self.provider
        for name in ("exp", "nbf", "iat"):  # PyJWT would take "1700000000" (a string) for a date; Envoy does not
            if name in claims and (isinstance(claims[name], bool) or not isinstance(claims[name], int | float)):
                return Refusal(401, f"Jwt {name} claim is not a number")
        if provider.issuer is not None and claims.get("iss") != provider.issuer:
            return Refusal(401, "Jwt issuer is not configured")
        if provider.max_lifetime is not None:
            exp, iat = claims.get("exp"), claims.get("iat")
            if not isinstance(exp, int | float) or not isinstance(iat, int | float):
                return Refusal(401, "Jwt needs exp and iat for max_lifetime")
            if exp - iat > provider.max_lifetime:
                return Refusal(401, "Jwt lifetime is longer than allowed")
        for name in provider.required_claims:
            if name not in claims:
                return Refusal(401, f"Jwt has no {name} claim")
        if provider.audiences:
            audience = claims.get("aud")
            given = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
            if not any(isinstance(item, str) and item in provider.audiences for item in given):
                return Refusal(403, "Audiences in Jwt are not allowed")
        return claims


def _after_prefix(value: str, prefix: str) -> str:
    """The token in a header value, read as Envoy's extractor reads it: the value must start with `prefix`;
    the token is the first run of base64url characters and dots after it (the whole value when there is none,
    so garbage is refused as an invalid token, not as a missing one)."""
    if not value.startswith(prefix):
        return ""
    if not prefix:
        return value
    found = _JWT_RUN.search(value, len(prefix))
    return found.group() if found is not None else value


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
