"""The sources sit below the IR: they read files and etcd and feed the control plane, and import nothing above."""

from __future__ import annotations

import grimp  # import-linter's import graph

ABOVE = (
    "xgate.ir",
    "xgate.translate",
    "xgate.discovery",
    "xgate.controlplane",
    "xgate.pipeline",
    "xgate.incremental",
    "xgate.runtime",
    "xgate.cli",
)


def test_sources_import_nothing_above_them() -> None:
    graph = grimp.build_graph("xgate", cache_dir=None)
    chains = {stage: graph.find_shortest_chains("xgate.sources", stage) for stage in ABOVE}
    assert {stage: found for stage, found in chains.items() if found} == {}
