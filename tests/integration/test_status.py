"""`xgate status` against a live control plane with two Envoys: in sync, then a rejected change."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from xgate.testing import free_port, run_cli, run_gateway, scrape, write_atomic

pytestmark = pytest.mark.integration


async def test_status_reports_every_envoy_and_a_rejected_change(
    make_config: Callable[..., str], work_dir: Path
) -> None:
    port = free_port()
    good = make_config(port)
    async with run_gateway(good, work_dir, envoys=2) as gateway:
        code, output, _ = await run_cli("status", "--url", f"http://127.0.0.1:{gateway.status_port}")
        assert code == 0, output
        assert output.count(": in sync, revision") == 2, output
        assert "test-envoy-0" in output and "test-envoy-1" in output
        metrics_url = f"http://127.0.0.1:{gateway.status_port}/metrics"
        scraped = await scrape(metrics_url)
        assert scraped["xgate_proxies"] == 2 and scraped["xgate_config_rejected"] == 0
        assert sorted(value for key, value in scraped.items() if key.startswith("xgate_proxy_in_sync")) == [1, 1]
        assert (
            scraped['xgate_config_propagation_seconds_count{kind="envoy"}'] == 0
        )  # connecting is not a change reaching them

        await gateway.apply(good.replace("body: ok", "body: changed"))  # returns once both Envoys ACKed it
        scraped = await scrape(metrics_url)
        assert scraped['xgate_config_propagation_seconds_count{kind="envoy"}'] == 2  # one per Envoy
        assert 0 < scraped['xgate_config_propagation_seconds_sum{kind="envoy"}'] < 10

        write_atomic(gateway.config_path, good.replace("upstream: v2\n", "upstream: missing\n"))
        await gateway.wait_for_rejection("upstream 'missing' does not exist")
        code, output, _ = await run_cli("status", "--url", f"http://127.0.0.1:{gateway.status_port}")
        assert code == 1, output
        assert "last change REJECTED" in output
        assert f"{gateway.config_path}:" in output and "route by-header field upstream" in output
        # Both Envoys still hold the last good revision.
        assert output.count(": in sync, revision") == 2, output
        assert (await scrape(metrics_url))["xgate_config_rejected"] == 1
