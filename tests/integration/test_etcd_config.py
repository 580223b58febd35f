"""etcd as the config store with a real etcd and a real Envoy: apply/diff/get/delete, per-key rejection,
file + etcd precedence."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from xgate.cli.etcdstore import ConflictError, execute, plan_apply, read_stored
from xgate.config.load import parse_document
from xgate.demo.upstream import DemoUpstream
from xgate.sources.etcd.client import EtcdClient, EtcdSettings
from xgate.testing import EtcdCluster, Gateway, free_port, run_cli, run_etcd, run_gateway

pytestmark = pytest.mark.integration


def fleet_config(port: int, v1: int, v2: int, body: str = "ok") -> str:
    return f"""
listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]
upstreams:
  - {{name: v1, endpoints: ["127.0.0.1:{v1}"]}}
  - {{name: v2, endpoints: ["127.0.0.1:{v2}"]}}
routes:
  - {{name: health, match: {{path: {{exact: /healthz}}}}, direct_response: {{status: 200, body: "{body}"}}}}
  - {{name: to-v2, match: {{path: {{prefix: /v2}}}}, upstream: v2}}
  - {{name: default, upstream: v1}}
"""


@pytest.fixture
async def etcd(tmp_path: Path) -> AsyncIterator[EtcdCluster]:
    async with run_etcd(tmp_path / "etcd") as cluster:
        yield cluster


@pytest.fixture
def settings(etcd: EtcdCluster) -> EtcdSettings:
    return EtcdSettings(endpoints=tuple(etcd.endpoints))


async def _apply(settings: EtcdSettings, text: str) -> int:
    async with EtcdClient(settings) as client:
        plan = plan_apply(await read_stored(client, "/xgate/"), parse_document(text, "test"), "/xgate/")
        return (await execute(client, plan))[0]


async def _body(port: int, path: str = "/healthz") -> str:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"http://127.0.0.1:{port}{path}")).text


async def test_cli_apply_diff_get_delete(etcd: EtcdCluster, upstreams: dict[str, DemoUpstream], tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gw.yaml"
    config.write_text(fleet_config(port, upstreams["v1"].port, upstreams["v2"].port))
    target = ",".join(etcd.endpoints)

    code, out, err = await run_cli("diff", "-f", str(config), "--etcd", target)
    assert code == 1, out + err
    assert "create route/default" in out and "envoy: + routes routes/public" in out
    code, out, err = await run_cli("apply", "-f", str(config), "--etcd", target)
    assert code == 0, out + err
    assert "created route/health" in out and "6 changed, 0 unchanged" in out
    stored = json.loads(await etcd.get("/xgate/route/to-v2") or "{}")
    assert stored == {"name": "to-v2", "match": {"path": {"prefix": "/v2"}}, "upstream": "v2"}
    code, out, _ = await run_cli("apply", "-f", str(config), "--etcd", target)
    assert (code, out.strip().splitlines()[-1].split(" (")[0]) == (0, "no changes: 6 unchanged")
    code, out, _ = await run_cli("diff", "-f", str(config), "--etcd", target)
    assert code == 0 and "0 objects would change" in out

    code, out, _ = await run_cli("get", "route", "to-v2", "--etcd", target, "-o", "json")
    assert code == 0 and json.loads(out)["routes"][0]["upstream"] == "v2"
    code, out, _ = await run_cli("get", "upstream", "--etcd", target)
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == ["UPSTREAM", "v1", "v2"], out

    # An upstream still in use is not deleted, unless forced.
    code, _, err = await run_cli("delete", "upstream", "v2", "--etcd", target)
    assert code == 2 and "route to-v2" in err
    assert await etcd.get("/xgate/upstream/v2") is not None
    code, out, _ = await run_cli("delete", "route", "to-v2", "--etcd", target)
    assert code == 0 and "deleted route/to-v2" in out
    code, out, _ = await run_cli("delete", "upstream", "v2", "--etcd", target)
    assert code == 0

    # Invalid config: every issue listed, nothing written.
    before = await etcd.get_prefix("/xgate/")
    config.write_text(fleet_config(port, 1, 2).replace("upstream: v2", "upstream: gone") + "  - {name: x}\n")
    code, _, err = await run_cli("apply", "-f", str(config), "--etcd", target)
    assert code == 2, err
    assert "upstream 'gone' does not exist" in err and "route x" in err and "nothing was written" in err
    assert await etcd.get_prefix("/xgate/") == before

    code, _, err = await run_cli("get", "route", "--etcd", "127.0.0.1:1")
    assert code == 4 and "etcd unreachable" in err


async def test_cli_shows_repairs_and_deletes_a_stored_value_that_is_not_valid(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    """A value written by another tool that is not a valid object is still the user's: `get` shows its problem
    and text instead of hiding it, `diff` shows it as the old side, `apply` replaces it without warning about
    it, and `delete` removes it."""
    target = ",".join(etcd.endpoints)
    await etcd.put("/xgate/route/broken", "{not json")
    await etcd.put("/xgate/route/wrong-type", '{"match": {"path": {"exact": 5}}, "direct_response": {"status": 200}}')
    await etcd.put("/xgate/route/fine", '{"direct_response": {"status": 204}}')

    code, out, err = await run_cli("get", "route", "broken", "--etcd", target)
    assert (code, out) == (2, ""), err
    assert "/xgate/route/broken: route broken: not valid YAML" in err and "stored value: '{not json'" in err
    code, out, err = await run_cli("get", "routes", "--etcd", target, "-o", "yaml")  # the plural is accepted
    assert code == 0 and yaml.safe_load(out) == {
        "xgate": "v1",
        "routes": [{"name": "fine", "direct_response": {"status": 204}}],
    }
    assert "/xgate/route/broken: route broken: not valid YAML" in err
    assert "/xgate/route/wrong-type: route wrong-type field match.path.exact:" in err
    code, _, err = await run_cli("get", "route", "missing", "--etcd", target)
    assert code == 2 and err.strip() == "route/missing not found under /xgate/"

    config = tmp_path / "broken.yaml"
    config.write_text("routes: [{name: broken, direct_response: {status: 200, body: repaired}}]\n")
    code, out, err = await run_cli("diff", "-f", str(config), "--etcd", target)
    assert code == 1, out + err
    assert "update route/broken" in out and "  -{not json" in out and "  +  body: repaired" in out
    code, out, err = await run_cli("apply", "-f", str(config), "--etcd", target)
    assert code == 0 and "updated route/broken" in out, out + err
    assert "route/broken" not in err  # replaced by this apply, so no warning about its old value
    assert "not touched by this apply): /xgate/route/wrong-type" in err
    code, out, _ = await run_cli("get", "route", "broken", "--etcd", target, "-o", "json")
    assert code == 0 and json.loads(out)["routes"][0]["direct_response"]["body"] == "repaired"

    code, out, err = await run_cli("delete", "route", "wrong-type", "--etcd", target)
    assert code == 0 and "deleted route/wrong-type" in out, err
    assert await etcd.get("/xgate/route/wrong-type") is None


async def test_apply_over_etcds_request_limit_says_which_limit(etcd: EtcdCluster, tmp_path: Path) -> None:
    public = json.loads(
        RSAAlgorithm.to_jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key())
    )
    keys = [dict(public, kid=f"k{index}", alg="RS256") for index in range(4_500)]  # ~1.8 MB, over etcd's 1.5 MiB
    provider = {"name": "main", "issuer": "https://big.test", "jwks": {"keys": keys}}
    config = tmp_path / "big.json"
    config.write_text(json.dumps({"plugins": {"jwt": {"providers": [provider]}}}))
    code, _, err = await run_cli("apply", "-f", str(config), "--etcd", ",".join(etcd.endpoints))
    assert code == 2 and "request is too large" in err and "--max-request-bytes" in err, err
    assert await etcd.get_prefix("/xgate/") == {}


async def test_apply_detects_a_concurrent_writer(etcd: EtcdCluster, settings: EtcdSettings) -> None:
    await _apply(settings, fleet_config(1000, 1, 2))
    async with EtcdClient(settings) as client:
        plan = plan_apply(
            await read_stored(client, "/xgate/"), parse_document(fleet_config(1000, 1, 3), "t"), "/xgate/"
        )
        await etcd.put("/xgate/upstream/v2", '{"endpoints": ["127.0.0.1:9"]}')  # someone else, meanwhile
        with pytest.raises(ConflictError):
            await execute(client, plan)
    assert json.loads(await etcd.get("/xgate/upstream/v2") or "{}") == {"endpoints": ["127.0.0.1:9"]}


async def test_changes_in_etcd_reach_envoy_and_bad_values_are_rejected_per_key(
    etcd: EtcdCluster, settings: EtcdSettings, upstreams: dict[str, DemoUpstream], tmp_path: Path
) -> None:
    port = free_port()
    await _apply(settings, fleet_config(port, upstreams["v1"].port, upstreams["v2"].port))
    async with run_gateway(None, tmp_path / "gw", etcd=settings) as gateway:
        assert await _body(port) == "ok"
        assert json.loads(await _body(port, "/v2/x"))["upstream"] == "v2"

        revision = await etcd.put(
            "/xgate/route/health",
            '{"match": {"path": {"exact": "/healthz"}}, "direct_response": {"status": 200, "body": "changed"}}',
        )
        await gateway.wait_etcd_revision(revision)
        assert await _body(port) == "changed"

        # Not JSON, a schema error and a bad reference, next to a good change: only the good one applies.
        await etcd.put("/xgate/route/health", "{not json")
        await etcd.put("/xgate/route/to-v2", '{"match": {"path": {"prefix": "/v2"}}, "upstream": "missing"}')
        await etcd.put("/xgate/upstream/v1", '{"endpoints": ["not-an-endpoint"]}')
        revision = await etcd.put("/xgate/route/new", '{"match": {"path": {"prefix": "/new"}}, "upstream": "v2"}')
        await gateway.wait_etcd_revision(revision)
        assert await _body(port) == "changed"  # last good version
        assert json.loads(await _body(port, "/v2/x"))["upstream"] == "v2"  # last good version
        assert json.loads(await _body(port, "/new"))["upstream"] == "v2"  # the good change applied
        assert json.loads(await _body(port, "/x"))["upstream"] == "v1"  # v1's last good endpoints
        warnings = "\n".join(gateway.plane.state.warnings)
        assert "/xgate/route/health" in warnings and "not valid YAML" in warnings
        assert "/xgate/upstream/v1" in warnings and "endpoints.0" in warnings
        assert "route to-v2 field upstream: upstream 'missing' does not exist" in warnings

        code, out, _ = await run_cli("status", "--url", f"http://127.0.0.1:{gateway.status_port}")
        assert code == 1 and "/xgate/route/health" in out

        # Fixing the keys clears the warnings.
        await etcd.put(
            "/xgate/route/health",
            '{"direct_response": {"status": 200, "body": "fixed"}, "match": {"path": {"exact": "/healthz"}}}',
        )
        await etcd.put("/xgate/route/to-v2", '{"match": {"path": {"prefix": "/v2"}}, "upstream": "v2"}')
        revision = await etcd.put("/xgate/upstream/v1", json.dumps({"endpoints": [upstreams["v1"].url[7:]]}))
        await gateway.wait_etcd_revision(revision)
        assert gateway.plane.state.warnings == []
        assert await _body(port) == "fixed"


async def test_file_overrides_etcd_and_the_conflict_is_reported(
    etcd: EtcdCluster, settings: EtcdSettings, upstreams: dict[str, DemoUpstream], tmp_path: Path
) -> None:
    port = free_port()
    await _apply(settings, fleet_config(port, upstreams["v1"].port, upstreams["v2"].port))
    local = """
routes:
  - {name: health, match: {path: {exact: /healthz}}, direct_response: {status: 200, body: local}}
  - {name: local-only, match: {path: {prefix: /local}}, direct_response: {status: 200, body: mine}}
"""
    async with run_gateway(local, tmp_path / "gw", etcd=settings) as gateway:
        assert await _body(port) == "local"
        assert await _body(port, "/local") == "mine"
        assert json.loads(await _body(port, "/x"))["upstream"] == "v1"
        assert any(
            "route health: defined in" in w and "the file version is served" in w for w in gateway.plane.state.warnings
        ), gateway.plane.state.warnings


async def _wait_gateway(gateway: Gateway, revision: int) -> None:
    await gateway.wait_etcd_revision(revision)


async def test_large_apply_goes_in_guarded_batches(etcd: EtcdCluster, settings: EtcdSettings, tmp_path: Path) -> None:
    routes = "".join(
        f"  - {{name: r{i}, match: {{path: {{prefix: /r{i}/}}}}, direct_response: {{status: 200}}}}\n"
        for i in range(300)
    )
    config = tmp_path / "big.yaml"
    config.write_text("listeners: [{name: public, port: 1}]\nroutes:\n" + routes)
    code, out, err = await run_cli("apply", "-f", str(config), "--etcd", ",".join(etcd.endpoints))
    assert code == 0, err
    assert "301 changed, 0 unchanged" in out and "in 3 transactions" in out
    assert len(await etcd.get_prefix("/xgate/route/")) == 300

    # Another writer between our read and a batch stops the apply at that batch.
    async with EtcdClient(settings) as client:
        text = config.read_text().replace("status: 200", "status: 204")
        plan = plan_apply(await read_stored(client, "/xgate/"), parse_document(text, "t"), "/xgate/")
        await etcd.put("/xgate/route/other", '{"direct_response": {"status": 200}}')
        with pytest.raises(ConflictError, match="nothing was written"):
            await execute(client, plan, max_ops=100)
    assert '"status":200' in (await etcd.get("/xgate/route/r5") or "")
