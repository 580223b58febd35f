"""The admin API over gRPC against a real Envoy: `--admin` answers what the status port's JSON answers, the status
stream follows a config change, and `explain --admin` asks the serving control plane what `explain -f` reads."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from tests.integration.conftest import ConfigMaker

from xgate.cli.admin import watch_reports
from xgate.sources.revision import revision_of
from xgate.testing import free_port, run_cli, run_gateway
from xgate.testing.gateway import wait_for

pytestmark = pytest.mark.integration


async def _json(*args: str) -> Any:
    code, out, err = await run_cli(*args)
    assert code in (0, 1), err
    return json.loads(out)


async def _same(first: tuple[str, ...], second: tuple[str, ...]) -> None:
    """Both commands print the same document, at one moment at least (the fleet's figures move between reads)."""
    seen: list[Any] = []

    async def equal() -> bool:
        seen[:] = [await _json(*first), await _json(*second)]
        return bool(seen[0] == seen[1])

    try:
        await wait_for(equal, 30, "the same document from both", interval=0.2)
    except AssertionError:
        assert seen[0] == seen[1]  # shows the difference
        raise


async def test_status_and_config_dump_over_grpc_equal_the_json(make_config: ConfigMaker, work_dir: Path) -> None:
    async with run_gateway(make_config(free_port()), work_dir) as gateway:
        url, admin = f"http://127.0.0.1:{gateway.status_port}", f"127.0.0.1:{gateway.xds_port}"
        await _same(("status", "--url", url, "-o", "json"), ("status", "--admin", admin, "-o", "json"))
        report = await _json("status", "--admin", admin, "-o", "json")
        assert report["all_in_sync"] is True and [proxy["node"] for proxy in report["proxies"]] == ["test-envoy-0"]
        code, text, err = await run_cli("status", "--admin", admin)
        assert code == 0 and "test-envoy-0 (" in text and "in sync" in text, err

        await _same(
            ("config-dump", "--url", url, "--node", "test-envoy-0", "--json"),
            ("config-dump", "--admin", admin, "--node", "test-envoy-0", "--json"),
        )
        dump = await _json("config-dump", "--admin", admin, "--json")
        assert dump["node"] == "test-envoy-0" and dump["versions"]["routes"]["acked"] is True

        code, out, err = await run_cli("config-dump", "--admin", admin, "--node", "nope")
        assert (code, out) == (2, "")
        assert err == "xgate config-dump: no consumer with node id 'nope' is connected (connected: test-envoy-0)\n"
    code, _, err = await run_cli("status", "--admin", f"127.0.0.1:{free_port()}")
    assert code == 2 and err.startswith("xgate status: cannot reach the control plane's admin API at ")


async def test_watch_status_sends_a_new_report_after_a_change(make_config: ConfigMaker, work_dir: Path) -> None:
    good = make_config(free_port())
    async with run_gateway(good, work_dir) as gateway:
        reports = watch_reports(f"127.0.0.1:{gateway.xds_port}", 100)
        try:
            first = await asyncio.to_thread(next, reports)
            assert first["revision"] == revision_of(good) and first["all_in_sync"] is True
            changed = good.replace("body: ok", "body: changed")
            await gateway.apply(changed)
            for _ in range(200):
                report = await asyncio.wait_for(asyncio.to_thread(next, reports), 10)
                if report["revision"] == revision_of(changed) and report["all_in_sync"]:
                    break
            else:
                pytest.fail("WatchStatus never sent the new revision in sync")
        finally:
            reports.close()


async def test_explain_over_grpc_is_explain_of_the_file(make_config: ConfigMaker, work_dir: Path) -> None:
    port = free_port()
    async with run_gateway(make_config(port), work_dir) as gateway:
        assert gateway.config_path is not None
        admin, config = f"127.0.0.1:{gateway.xds_port}", str(gateway.config_path)
        for request in (
            ("GET", f"http://127.0.0.1:{port}/split/a"),
            ("GET", f"http://127.0.0.1:{port}/any", "-H", "x-version: v2"),
            ("POST", f"http://127.0.0.1:{port}/cors/x"),
        ):
            served = await _json("explain", *request, "--admin", admin, "--json")
            assert served == await _json("explain", *request, "-f", config, "--json")
            assert served["route"] in ("split", "by-header", "cors")
        # After a change the control plane explains the new config, as the file now says.
        await gateway.apply(gateway.config_path.read_text().replace("prefix: /split", "prefix: /halves"))
        after = await _json("explain", "GET", f"http://127.0.0.1:{port}/split/a", "--admin", admin, "--json")
        assert after["route"] == "default"
        assert after == await _json("explain", "GET", f"http://127.0.0.1:{port}/split/a", "-f", config, "--json")
        code, out, err = await run_cli("explain", "GET", "not-a-url", "--admin", admin)
        assert (code, out) == (2, "") and err.startswith("xgate explain: URL 'not-a-url': give a full http://")
