"""Golden tests: each folder holds in.yaml and the expected output, one file per Envoy resource kind.

`pytest tests/golden --update-goldens` rewrites the expected files (and deletes stale ones); review the diff.
A case whose in.yaml is invalid expects `out.errors.txt` with every issue, one per line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from xgate.cli.render import dump_yaml, ir_to_data, resources_to_data
from xgate.config.load import load_file
from xgate.discovery.consistency import problems
from xgate.discovery.snapshot import build_snapshot
from xgate.errors import ConfigError
from xgate.pipeline import compile_config

CASES = Path(__file__).parent / "translate"


def _outputs(case: Path) -> dict[str, str]:
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
