"""Golden tests: each folder holds in.yaml and the expected output, one file per resource kind (Envoy's, and
the services': rate_limits, dyeing_settings, policies, jwt_providers).

`pytest tests/golden --update-goldens` rewrites the expected files (and deletes stale ones); review the diff.
A case whose in.yaml is invalid expects `out.errors.txt` with every issue, one per line. A case with etcd.yaml
instead goes the etcd way: its transactions are applied to an etcd in memory that the real etcd source follows,
each object on its own (a bad one keeps its last good version), and `out.held_back.txt` lists what is not
served as configured, by key.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml_rs
from tests.unit.sources.fake_etcd import FakeEtcd

from xgate.cli.render import dump_yaml, ir_to_data, resources_to_data
from xgate.config.load import load_file
from xgate.config.schema import Route
from xgate.discovery.consistency import problems
from xgate.discovery.snapshot import build_snapshot
from xgate.errors import ConfigError
from xgate.pipeline import Compiled, compile_config
from xgate.sources.etcd.source import EtcdSource
from xgate.sources.revision import Revision

CASES = Path(__file__).parent / "translate"


def _outputs(case: Path) -> dict[str, str]:
    if (case / "etcd.yaml").exists():
        return asyncio.run(_etcd_outputs(case / "etcd.yaml"))
    source = case / "in.yaml"
    try:
        compiled = compile_config(load_file(source))
    except ConfigError as exc:
        # Paths in issues are relative to the case folder, so the files do not depend on the checkout.
        return {"out.errors.txt": "".join(f"{issue}\n".replace(str(source), "in.yaml") for issue in exc.issues)}
    # Every name one resource gives another is served (a cluster a route sends to, a key the dyeing service
    # must hold...): checked on every golden, as go-control-plane's tests check Snapshot.Consistent.
    assert problems(build_snapshot(compiled.resources, "golden", 1)) == []
    outputs = {
        f"out.{kind}.yaml": dump_yaml(data) for kind, data in resources_to_data(compiled.resources).items() if data
    }
    outputs["out.ir.yaml"] = dump_yaml(ir_to_data(compiled.ir))
    return outputs


async def _etcd_outputs(transactions: Path) -> dict[str, str]:
    compiled, held = await etcd_compiled(transactions)
    outputs = {
        f"out.{kind}.yaml": dump_yaml(data) for kind, data in resources_to_data(compiled.resources).items() if data
    }
    outputs["out.ir.yaml"] = dump_yaml(ir_to_data(compiled.ir))
    outputs["out.held_back.txt"] = "".join(f"{line}\n" for line in held)
    return outputs


async def etcd_compiled(transactions: Path) -> tuple[Compiled, list[str]]:
    """What the control plane serves after the transactions, and what it holds back: the etcd source's
    revisions through the same lenient compile, each route falling back to the version served before it went
    bad."""
    store, revisions = FakeEtcd(), list[Revision]()

    async def keep(revision: Revision) -> None:
        revisions.append(revision)

    source = EtcdSource(store, keep)
    served: dict[str, Route] = {}
    steps = yaml_rs.loads(transactions.read_text(), parse_datetime=False)
    assert isinstance(steps, list)
    for transaction in steps:
        puts: dict[str | bytes, str | bytes] = {key: value for key, value in transaction.items() if value is not None}
        store.txn(puts, [key for key, value in transaction.items() if value is None])
        await source.read_all()
        revision = revisions[-1]
        assert revision.config is not None
        compiled = compile_config(revision.config, revision.revision, lenient=True, fallback=served)
        served = {route.route.name: route.route for listener in compiled.ir.listeners for route in listener.routes}
    assert problems(build_snapshot(compiled.resources, "golden", 1)) == []
    return compiled, sorted({*map(str, revision.warnings), *map(str, compiled.ir.issues)})


@pytest.mark.parametrize("case", sorted(p for p in CASES.iterdir() if p.is_dir()), ids=lambda p: p.name)
def test_translate(case: Path, update_goldens: bool) -> None:
    outputs = _outputs(case)
    existing = {p.name for p in case.glob("out.*")}
    if update_goldens:
        for stale in existing - set(outputs):
            (case / stale).unlink()
        for name, text in outputs.items():
            (case / name).write_text(text, encoding="utf-8")
        return
    assert existing == set(outputs), "expected files differ; run pytest tests/golden --update-goldens"
    for name, text in outputs.items():
        assert (case / name).read_text(encoding="utf-8") == text, f"{case.name}/{name} differs"
