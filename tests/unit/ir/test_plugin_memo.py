"""Routes with equal plugin settings share one validated and one resolved settings object; the IR is the same."""

from __future__ import annotations

import json

from xgate.config.load import parse_document
from xgate.ir import build_ir
from xgate.pipeline import compile_config
from xgate.plugins.jwt import JwtSettings
from xgate.translate import translate

MAIN = "main"
JWKS = {"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI"}]}


def route(name: str, plugins: dict[str, object]) -> dict[str, object]:
    return {"name": name, "direct_response": {"status": 200}, "plugins": plugins}


ROUTES = [
    *(route(f"r{n}", {"jwt": {"provider": MAIN}}) for n in range(3)),
    route("limited", {"rate_limit": {"local": {"requests": 1}}}),
    route("float", {"rate_limit": {"local": {"requests": 1.5}}}),
]
CONFIG = {
    "plugins": {"jwt": {"providers": [{"name": "main", "issuer": "https://i.example.com", "jwks": JWKS}]}},
    "listeners": [{"name": "l", "port": 80}],
    "routes": ROUTES,
}


def test_equal_settings_are_one_object_and_the_result_is_unchanged() -> None:
    config = parse_document(json.dumps(CONFIG), "t")
    [listener] = build_ir(config, lenient=True).listeners
    jwt = [route.plugins["jwt"] for route in listener.routes if route.name.startswith("r")]
    assert len(jwt) == 3 and jwt[0] is jwt[1] is jwt[2]
    assert isinstance(jwt[0], JwtSettings) and jwt[0].required() is not None  # resolved against the providers
    # 1.5 requests is not 1 request: the invalid one is reported, the valid one served.
    issues = build_ir(config, lenient=True).issues
    assert [issue.obj for issue in issues] == ["route float"]
    served = {route.name for route in listener.routes}
    assert "limited" in served and "float" not in served


def test_a_compile_with_shared_settings_translates_as_one_without() -> None:
    config = dict(CONFIG, routes=ROUTES[:4])
    parsed = parse_document(json.dumps(config), "t")
    assert compile_config(parsed).resources == translate(build_ir(parsed))
