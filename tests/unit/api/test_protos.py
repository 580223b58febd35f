"""xgate's resource types: the committed modules are what protos/ compiles to, and settings survive the trip."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from xgate.api import authz_pb2
from xgate.plugins.dyeing import DyeingSettings, settings_from_resource, settings_resource
from xgate.plugins.jwt import Provider, TokenHeader, provider_from_resource, provider_resource

ROOT = Path(__file__).parents[3]


def test_generated_modules_match_the_protos(tmp_path: Path) -> None:
    subprocess.run(["bash", str(ROOT / "scripts" / "protos.sh"), str(tmp_path)], check=True, cwd=ROOT)
    generated = {path.relative_to(tmp_path): path.read_bytes() for path in tmp_path.rglob("*_pb2.py*")}
    committed = {
        path.relative_to(ROOT / "src"): path.read_bytes() for path in (ROOT / "src" / "xgate").rglob("*_pb2.py*")
    }
    assert generated, "protoc wrote nothing"
    assert sorted(generated) == sorted(committed), "run scripts/protos.sh and commit src/xgate/api"
    stale = [str(path) for path, data in generated.items() if committed[path] != data]
    assert not stale, f"run scripts/protos.sh and commit: {stale}"


@pytest.mark.parametrize(
    "data",
    [
        {"rules": []},
        {
            "header": "x-stage",
            "baggage": None,
            "default": "prod",
            "trust": ["10.0.0.0/8", "::1/128"],
            "rules": [
                {"stage": "a", "header": {"name": "x-a", "regex": "^1$"}},
                {"stage": "b", "header": {"name": "x-b", "present": True}},
                {"stage": "c", "cookie": {"name": "rel", "exact": "c"}},
                {"stage": "d", "query": {"name": "q", "present": True}},
                {"stage": "e", "source": ["192.168.0.0/16"]},
                {"stage": "f", "claim": {"name": "groups", "contains": "testers"}},
                {"stage": "g", "claim": {"name": "level", "equals": 3}},
                {"stage": "h", "claim": {"name": "admin", "equals": True}},
                {"stage": "i", "claim": {"name": "org", "equals": "acme"}},
                {"stage": "j", "sticky": {"percent": 12.5, "key": {"cookie": "uid"}, "seed": "s"}},
            ],
        },
        {"trust": "all", "rules": [{"stage": "k", "sticky": {"percent": 50, "key": {"claim": "sub"}}}]},
    ],
)
def test_dyeing_settings_survive_their_resource(data: dict[str, object]) -> None:
    settings = DyeingSettings.model_validate(data)
    back = settings_from_resource(settings_resource(settings))
    for field in ("header", "baggage", "default", "trust", "rules"):
        assert getattr(back, field) == getattr(settings, field), field
    assert settings_resource(back).rules == settings_resource(settings).rules


def test_a_python_provider_survives_its_resource(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')
    providers = [
        Provider(
            name="inline", verify="python", jwks={"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, algorithms=("HS256",)
        ),
        Provider(
            name="full",
            verify="python",
            issuer="https://issuer.example",
            audiences=("a", "b"),
            jwks_file=str(jwks),
            required_claims=("sub",),
            headers=(TokenHeader(name="x-token", prefix=""),),
            cookies=("session",),
            query=("token",),
            forward_claims={"sub": "x-user"},
            clock_skew=1.5,
            require_exp=False,
            max_lifetime=3600,
            max_token_bytes=4096,
        ),
        Provider(name="remote", verify="python", jwks_uri="https://idp.example/jwks", jwks_refresh=60),
    ]
    for provider in providers:
        back = provider_from_resource(provider_resource(provider))
        if provider.jwks_file is None:
            assert back == provider
        else:  # the file's keys travel inline: the service never reads the control plane's files
            assert back.jwks == provider.key_set and back.jwks_file is None
            assert back.model_dump(exclude={"jwks", "jwks_file"}) == provider.model_dump(exclude={"jwks", "jwks_file"})


def test_a_jwks_file_is_read_by_the_control_plane_and_sent_inline(tmp_path: Path) -> None:
    """The service gets the keys, not a path: a file missing on its machine no longer matters."""
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')
    resource = provider_resource(Provider(name="p", verify="python", jwks_file=str(jwks)))
    jwks.unlink()
    assert resource.WhichOneof("keys") == "jwks_json"
    assert provider_from_resource(resource).key_set == {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}


def test_a_resource_naming_a_file_missing_here_is_refused(tmp_path: Path) -> None:
    """A resource from an older control plane may still name a file: read here, and refused when missing."""
    resource = authz_pb2.JwtProvider(name="p", jwks_file=str(tmp_path / "gone.json"))
    with pytest.raises(ValueError, match="does not exist"):
        provider_from_resource(resource)
