"""jwt_authn's config travels over ECDS: listeners name it, one config holds every listener's providers, and a
provider name that would mean two things is refused where it is written."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from envoy.config.core.v3 import extension_pb2 as extension_v3
from envoy.config.listener.v3 import listener_pb2 as listener_v3
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_v3
from jwt.algorithms import RSAAlgorithm

from xgate.config.load import parse_document
from xgate.discovery import typeurls
from xgate.discovery.consistency import filter_configs, problems
from xgate.discovery.snapshot import Snapshot, build_snapshot
from xgate.errors import ConfigError
from xgate.pipeline import compile_config
from xgate.plugins.jwt import JWT_FILTER
from xgate.translate.filterconfig import filter_config, merged
from xgate.translate.resources import Resources


def _jwks(kid: str) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    return {"keys": [{**json.loads(RSAAlgorithm.to_jwk(key)), "kid": kid}]}


KEYS = {"a": _jwks("a"), "b": _jwks("b")}


def _config(keys: dict[str, dict[str, Any]] = KEYS) -> str:
    providers = {name: [{"name": name, "issuer": f"https://{name}", "jwks": keys[name]}] for name in ("a", "b")}
    listeners = [
        {"name": name, "port": port, "plugins": {"jwt": {"providers": providers[name]}}}
        for name, port in (("a", 10001), ("b", 10002))
    ]
    routes = [
        {"name": f"to-{name}", "listeners": [name], "match": {"path": {"prefix": "/"}}, "upstream": "app",
         "plugins": {"jwt": {}}}
        for name in ("a", "b")
    ]  # fmt: skip
    upstreams = [{"name": "app", "endpoints": ["127.0.0.1:8001"]}]
    return json.dumps({"listeners": listeners, "upstreams": upstreams, "routes": routes})


def _resources(text: str) -> Resources:
    return compile_config(parse_document(text, "t")).resources


def test_every_listener_names_the_one_config_holding_all_their_providers() -> None:
    resources = _resources(_config())
    assert list(resources.filter_configs) == [JWT_FILTER]
    config = jwt_v3.JwtAuthentication()
    resources.filter_configs[JWT_FILTER].typed_config.Unpack(config)
    assert sorted(config.providers) == ["a", "b"]
    assert config.providers["b"].issuer == "https://b"
    assert sorted(config.requirement_map) == ["a", "a?", "b", "b?"]
    for listener in resources.listeners.values():
        assert isinstance(listener, listener_v3.Listener)
        assert list(filter_configs(listener)) == [JWT_FILTER]  # named, not held: a key change keeps the listener
    snapshot = build_snapshot(resources, "r", 1)
    assert problems(snapshot) == []
    kept = {url: dict(found) for url, found in snapshot.resources.items() if url != typeurls.FILTER_CONFIG}
    assert problems(Snapshot(serial=2, revision="r", resources=kept)) == [
        f"listener listener/{name} reads filter config {JWT_FILTER}, which is not served" for name in ("a", "b")
    ]


def test_a_key_change_changes_the_filter_config_and_no_listener() -> None:
    before, after = _resources(_config()), _resources(_config({**KEYS, "b": _jwks("b2")}))
    assert after.listeners == before.listeners
    assert after.filter_configs[JWT_FILTER] != before.filter_configs[JWT_FILTER]


def test_a_provider_name_defined_twice_differently_is_refused_where_written() -> None:
    text = (
        _config()
        .replace('"name": "b", "issuer"', '"name": "a", "issuer"')
        .replace('"jwt": {}', '"jwt": {"provider": "a"}')
    )
    with pytest.raises(ConfigError) as refused:
        compile_config(parse_document(text, "t"))
    assert [(issue.obj, issue.field) for issue in refused.value.issues] == [("listener b", "plugins.jwt.providers.0")]
    assert "jwt provider 'a' is defined differently in listener a" in refused.value.issues[0].message


def test_merged_is_deterministic_and_keeps_both() -> None:
    first = filter_config(JWT_FILTER, jwt_v3.JwtAuthentication(providers={"x": jwt_v3.JwtProvider(issuer="x")}))
    second = filter_config(JWT_FILTER, jwt_v3.JwtAuthentication(providers={"y": jwt_v3.JwtProvider(issuer="y")}))
    one, other = merged(first, second), merged(second, first)
    assert one.SerializeToString() == other.SerializeToString()  # the same bytes, so the same version
    config = jwt_v3.JwtAuthentication()
    one.typed_config.Unpack(config)
    assert sorted(config.providers) == ["x", "y"]
    assert merged(first, first) is first
    wrong = extension_v3.TypedExtensionConfig(name=JWT_FILTER)
    wrong.typed_config.Pack(jwt_v3.PerRouteConfig())
    with pytest.raises(ValueError, match="PerRouteConfig"):
        merged(first, wrong)
