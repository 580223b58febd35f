"""`xgate schema`: the JSON schema accepts what `xgate validate` accepts, as to shapes and types, and refuses
what it refuses for them; every plugin's settings are typed in it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml_rs
from typer.testing import CliRunner

from xgate.cli.main import app
from xgate.config.load import parse_document
from xgate.errors import ConfigError
from xgate.pipeline import compile_config

ROOT = Path(__file__).parents[2]
GOLDEN = ROOT / "tests" / "golden" / "translate"
EXAMPLES = sorted((ROOT / "src" / "xgate" / "examples").glob("*.yaml")) + sorted((ROOT / "examples").rglob("*.yaml"))

# Golden cases `validate` refuses, and the fields where they break a shape or type rule (so the schema must
# refuse them there); a case with none breaks only rules a JSON schema cannot state.
SHAPE_ERRORS: dict[str, list[str]] = {
    "bad-schema": [
        "listeners.0.port",  # above 65535
        "upstreams.0.endpoints.0",  # not host:port
        "upstreams.0.protocol",  # not one of the protocols
        "routes.2.upstrem",  # unknown field
        "routes.3.name",  # not a name
        "routes.3.timeout",  # not a duration
    ],
    "dyeing-bad": ["plugins.dyeing.rules.0.sticky.percent", "plugins.dyeing.rules.1.stage"],
    "bad-references": ["routes.3.plugins.sparkles"],  # an unknown plugin
    "jwt-bad": [],  # a JWKS key's kty, and providers that do not exist
    "jwt-refused": [],  # what Envoy's jwt_authn cannot do natively
    "dyeing-stage-match-bad": [],  # rules Envoy cannot invert
    "per-host-bad": [],  # routes for any host on a per_host listener, a second per_host listener
    # a negative priority, a budget over 100%, an unknown retry condition (the others are cross-field rules)
    "resilience-bad": [
        "upstreams.3.endpoints.0",
        "upstreams.3.circuit_breakers.retry_budget.percent",
        "routes.0.retries.retry_on.1",
    ],
}


def config_schema() -> Any:
    """What `xgate schema` prints."""
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = config_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _leaf_paths(error: jsonschema.ValidationError) -> Iterator[str]:
    """The paths of the innermost errors (through anyOf branches); an unknown key's path names the key."""
    if error.context:
        for inner in error.context:
            yield from _leaf_paths(inner)
    path = [str(part) for part in error.absolute_path]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {})  # type: ignore[union-attr]
        for key in error.instance:
            if key not in known:
                yield ".".join([*path, key])
        return
    yield ".".join(path)


def _schema_errors(validator: jsonschema.Draft202012Validator, data: Any) -> set[str]:
    return {path for error in validator.iter_errors(data) for path in _leaf_paths(error)}


def _load(path: Path) -> Any:
    return yaml_rs.loads(path.read_text(), parse_datetime=False)


def test_the_schema_names_its_dialect_and_itself() -> None:
    schema = config_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == "urn:xgate:config:v1"


@pytest.mark.parametrize(
    "path",
    [
        case / "in.yaml"
        for case in sorted(GOLDEN.iterdir())
        if (case / "in.yaml").exists() and not (case / "out.errors.txt").exists()
    ]
    + EXAMPLES,
    ids=lambda path: f"{path.parent.name}/{path.name}",
)
def test_every_valid_golden_input_and_example_is_accepted(
    path: Path, validator: jsonschema.Draft202012Validator
) -> None:
    compile_config(parse_document(path.read_text(), str(path)))  # valid for xgate
    assert _schema_errors(validator, _load(path)) == set()


def test_every_refused_golden_case_is_classified() -> None:
    refused = {case.name for case in GOLDEN.iterdir() if (case / "out.errors.txt").exists()}
    assert refused == set(SHAPE_ERRORS), "say in SHAPE_ERRORS which fields of a new case break shapes or types"


@pytest.mark.parametrize("case", sorted(SHAPE_ERRORS))
def test_golden_cases_refused_for_shape_or_type_are_refused_by_the_schema(
    case: str, validator: jsonschema.Draft202012Validator
) -> None:
    errors = _schema_errors(validator, _load(GOLDEN / case / "in.yaml"))
    expected = SHAPE_ERRORS[case]
    if not expected:
        assert errors == set(), "refused only for rules the schema cannot state"
    for field in expected:
        assert field in errors, f"{field} not refused by the schema: {sorted(errors)}"


BASE: dict[str, Any] = {
    "listeners": [{"name": "l", "port": 1}],
    "upstreams": [{"name": "u", "endpoints": ["127.0.0.1:1"], "health_check": {}}],
    "plugins": {"dyeing": {"rules": [{"stage": "c", "header": {"name": "x-c", "present": True}}]}},
}


def _with_base(text: str) -> Any:
    """The snippet's document, its sections added to a valid base (lists joined, plugin defaults replaced)."""
    data = yaml_rs.loads(text, parse_datetime=False)
    assert isinstance(data, dict)
    merged = dict(BASE)
    for key, value in data.items():
        base = BASE.get(key)
        if isinstance(base, list) and isinstance(value, list):
            merged[key] = base + value
        elif isinstance(base, dict) and isinstance(value, dict):
            merged[key] = {**base, **value}
        else:
            merged[key] = value
    return merged


@pytest.mark.parametrize(
    "text",
    [
        # short forms validate reads
        "upstreams: [{name: v, endpoints: ['10.0.0.1:80', {host: b.example, port: 81, weight: 2}]}]",
        "routes: [{name: r, upstream: u, canary: {stage: c, upstream: u}}]",
        "routes: [{name: r, upstream: u, canary: [{stage: c, upstream: u, fallback: false}]}]",
        "routes: [{name: r, upstream: u, timeout: 5s, retries: {per_try_timeout: 250ms}}]",
        "routes: [{name: r, upstream: u, timeout: 1.5}]",
        "routes: [{name: r, upstream: u, match: {methods: [get, Post]}}]",
        "upstreams: [{name: v, endpoints: ['[::1]:80']}]",
        # plugins on, off and with settings, at every level
        "plugins: {cors: {allow_origins: ['*'], max_age: 10m}, rate_limit: {timeout: 50ms, local: {requests: 1}}}",
        "listeners: [{name: m, port: 2, plugins: {cors: false, jwt: null}}]",
        "routes: [{name: r, upstream: u, plugins: {rate_limit: {local: {requests: 5, per: 1s}, global: "
        "{requests: 9, per: 1m, algorithm: gcra, burst: 2}}}}]",
        "plugins: {dyeing: {trust: [10.0.0.0/8], rules: [{stage: c, header: {name: X-Canary, exact: '1'}}]}}",
        "plugins: {jwt: {providers: [{name: a, issuer: i, jwks_file: JWKS_FILE, clock_skew: 30s}]}}",
        # empty sections
        "routes:\nupstreams: []\nplugins:",
        # refused on shape or type: by both
        "listeners: [{name: m, port: '80'}]",
        "routes: [{name: r, upstream: u, websocket: 'yes'}]",
        "routes: [{name: r, upstream: u, timeout: soon}]",
        "routes: [{name: r, upstream: u, canary: c}]",
        "routes: [{name: r, upstream: u, match: {methods: [FETCH]}}]",
        "upstreams: [{name: v, endpoints: ['10.0.0.1']}]",
        "upstreams: [{name: v, endpoints: '10.0.0.1:80'}]",
        "upstreams: [{name: v, endpoints: ['a:1'], health_check: {interval: 2x}}]",
        "plugins: {sparkles: {}}",
        "plugins: {cors: {allow_origin: ['*']}}",
        "plugins: {rate_limit: {local: {requests: many}}}",
        "routes: [{name: r, upstream: u, plugins: {jwt: {optional: 'no'}}}]",
        "plugins: {dyeing: {mode: fast}}",
        "plugins: {policy: {policies: {'bad name': 'm:f'}}}",
        "xgate: v2",
        "extra: 1",
    ],
)
def test_schema_and_validate_agree(text: str, validator: jsonschema.Draft202012Validator, tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"  # validation reads a jwks_file: it must hold keys
    jwks.write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')
    document = _with_base(text.replace("JWKS_FILE", str(jwks)))
    try:
        compile_config(parse_document(json.dumps(document), "gw.json"))
        valid = True
    except ConfigError as exc:
        valid, issues = False, exc.issues
    errors = _schema_errors(validator, document)
    if valid:
        assert errors == set()
    else:
        assert errors, f"validate refuses it ({issues[0]}), the schema does not"


def test_every_plugins_settings_are_typed_at_every_level() -> None:
    schema = config_schema()
    definitions = schema["$defs"]
    plugins = definitions["Plugins"]["properties"]
    assert sorted(plugins) == ["cors", "dyeing", "grpc_web", "jwt", "policy", "rate_limit", "tracing"]
    for name, spec in plugins.items():
        assert {"type": "boolean"} in spec["anyOf"] and {"type": "null"} in spec["anyOf"], name
        (ref,) = [branch["$ref"] for branch in spec["anyOf"] if "$ref" in branch]
        assert definitions[ref.rsplit("/", 1)[1]]["additionalProperties"] is False, name
    for where in (schema, definitions["Listener"], definitions["Route"]):
        assert "#/$defs/Plugins" in json.dumps(where["properties"]["plugins"])
    assert "global" in definitions["RateLimitSettings"]["properties"]  # by its alias, as users write it
