"""Which providers Envoy's filters guard without a Lua call per request, and the filters a listener gets."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.extensions.common.matching.v3 import extension_matcher_pb2 as extension_matcher_v3
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_v3
from envoy.extensions.filters.http.lua.v3 import lua_pb2 as lua_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_v3,
)

from xgate.plugins.jwt import JWT_FILTER, JwtSettings, Provider
from xgate.translate.plugins.jwt import JwtTranslator
from xgate.translate.plugins.jwt_guard import GUARD_FILTER
from xgate.translate.plugins.jwt_guard_native import (
    FORM_GUARD_FILTER,
    HEADER_METADATA,
    NATIVE_GUARD_FILTER,
    ROUTE_GUARD,
    is_native,
)

RSA: dict[str, Any] = {"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB"}
EC: dict[str, Any] = {"kty": "EC", "kid": "e", "crv": "P-256", "x": "AA", "y": "AA"}


def provider(name: str = "main", **fields: Any) -> Provider:
    return Provider.model_validate({"name": name, "issuer": "https://idp.test", "jwks": {"keys": [RSA]}, **fields})


@pytest.mark.parametrize(
    ("fields", "native"),
    [
        ({}, True),
        ({"headers": [{"name": "Authorization", "prefix": "Bearer "}]}, True),
        ({"jwks": {"keys": [RSA, EC]}}, False),  # ECDSA signature lengths: the Lua guard's
        ({"jwks": {"keys": [RSA, EC]}, "algorithms": ["RS256"]}, True),  # Envoy gets no EC key
        ({"audiences": ["api"]}, False),  # the guard's 401 must come before jwt_authn's 403
        ({"cookies": ["tok"]}, False),  # more than one token per request
        ({"query": ["access_token"]}, False),
        ({"headers": [{"name": "authorization", "prefix": "Bearer "}, {"name": "x-tok"}]}, False),
        ({"headers": [{"name": "x-tok", "prefix": "Bearer "}]}, False),  # a custom header may be repeated
        ({"headers": [{"name": "authorization", "prefix": "Token "}]}, False),
        ({"jwks": None, "jwks_uri": "https://idp.test/jwks"}, False),  # keys unknown when translating
    ],
)
def test_is_native(fields: dict[str, Any], native: bool) -> None:
    assert is_native(provider(**fields)) is native


def test_a_listener_guards_each_provider_one_way() -> None:
    """The Lua guard before jwt_authn for every request of a Lua-guarded provider; for a natively guarded one the
    same script behind a matcher, the verified header in the metadata, and after jwt_authn the refusal behind a
    matcher on it."""
    defaults = JwtSettings(providers=(provider("fast"), provider("slow", audiences=["api"])))
    manager = hcm_v3.HttpConnectionManager()
    filters = JwtTranslator().http_filters(defaults, manager)
    assert [f.name for f in filters] == [
        GUARD_FILTER,
        FORM_GUARD_FILTER,
        "envoy.filters.http.jwt_authn",
        NATIVE_GUARD_FILTER,
    ]
    lua = lua_v3.Lua()
    filters[0].typed_config.Unpack(lua)
    assert set(lua.source_codes) == {"slow"}
    wrapped = extension_matcher_v3.ExtensionWithMatcher()
    filters[1].typed_config.Unpack(wrapped)
    wrapped.extension_config.typed_config.Unpack(lua)
    assert set(lua.source_codes) == {"fast"}
    assert filters[1].disabled  # on for the routes of "fast" only
    assert "local MAX_TOKEN_BYTES = 8192" in lua.source_codes["fast"].inline_string
    authn = jwt_v3.JwtAuthentication()
    filters[2].typed_config.Unpack(authn)
    assert authn.providers["fast"].header_in_metadata == HEADER_METADATA
    assert not authn.providers["slow"].header_in_metadata
    assert filters[3].disabled  # on for the routes of "fast" only, and there only to refuse
    filters[3].typed_config.Unpack(wrapped)
    wrapped.extension_config.typed_config.Unpack(lua)
    guard = lua_v3.LuaPerRoute()
    ROUTE_GUARD.Unpack(guard)
    assert "crit" in lua.source_codes[guard.name].inline_string
    assert not manager.local_reply_config.mappers


def test_a_listener_without_native_providers_gets_no_native_guard() -> None:
    manager = hcm_v3.HttpConnectionManager()
    filters = JwtTranslator().http_filters(JwtSettings(providers=(provider(audiences=["api"]),)), manager)
    assert [f.name for f in filters] == [GUARD_FILTER, JWT_FILTER]
    assert not manager.local_reply_config.mappers
