"""`xgate status` against a live control plane with Envoys: in sync, a rejected change, an undecodable save, a
deleted file, a revision Envoy refused; each shown, each in the exit code."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from xgate.config.load import parse_document
from xgate.pipeline import compile_config
from xgate.sources.revision import revision_of
from xgate.testing import free_port, run_cli, run_gateway, scrape, write_atomic
from xgate.testing.gateway import wait_for

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

        assert gateway.config_path is not None
        write_atomic(gateway.config_path, good.replace("upstream: v2\n", "upstream: missing\n"))
        await gateway.wait_for_rejection("upstream 'missing' does not exist")
        code, output, _ = await run_cli("status", "--url", f"http://127.0.0.1:{gateway.status_port}")
        assert code == 1, output
        assert "last change REJECTED" in output
        assert f"{gateway.config_path}:" in output and "route by-header field upstream" in output
        # Both Envoys still hold the last good revision.
        assert output.count(": in sync, revision") == 2, output
        assert (await scrape(metrics_url))["xgate_config_rejected"] == 1


async def test_status_reports_an_undecodable_save_and_a_deleted_file_until_they_are_repaired(
    make_config: Callable[..., str], work_dir: Path
) -> None:
    port = free_port()
    good = make_config(port)
    async with run_gateway(good, work_dir) as gateway, httpx.AsyncClient() as client:
        assert gateway.config_path is not None
        url = f"http://127.0.0.1:{gateway.status_port}"
        binary = b"\x7fELF\x02\x01\x01\x00\xff\xfe\x00\x00"
        gateway.config_path.write_bytes(binary)
        await gateway.wait_for_rejection("not UTF-8 text")
        code, output, _ = await run_cli("status", "--url", url)
        assert code == 1, output
        assert f"last change REJECTED (revision {revision_of(binary)}):" in output
        assert f"{gateway.config_path}: document: not UTF-8 text (byte 8)" in output

        # The good content back, the very bytes that are served: the report clears.
        write_atomic(gateway.config_path, good)
        await wait_for(lambda: gateway.plane.state.rejected is None, 10, "the rejection to clear")
        code, output, _ = await run_cli("status", "--url", url)
        assert code == 0 and "REJECTED" not in output, output

        gateway.config_path.unlink()
        await gateway.wait_for_rejection("no such file")
        code, output, _ = await run_cli("status", "--url", url)
        assert code == 1, output
        assert "last change REJECTED (revision missing):" in output
        assert f"{gateway.config_path}: document: no such file (deleted or renamed away?)" in output
        assert (await client.get(f"http://127.0.0.1:{port}/healthz")).text == "ok"  # the last good config serves

        gateway.config_path.write_text(good)
        await wait_for(lambda: gateway.plane.state.rejected is None, 10, "the rejection to clear")
        code, output, _ = await run_cli("status", "--url", url)
        assert code == 0 and "REJECTED" not in output, output


async def test_a_revision_envoy_rejected_is_not_labelled_serving(
    make_config: Callable[..., str], work_dir: Path
) -> None:
    """Validation should stop such a revision; the test pushes one past it, as an Envoy of another version
    might refuse what this one accepts."""
    port = free_port()
    config = make_config(port)
    async with run_gateway(config, work_dir, envoys=2) as gateway:
        resources = compile_config(parse_document(config, "test")).resources
        routes = resources.route_config("routes/public")
        routes.virtual_hosts[0].routes[0].match.safe_regex.regex = "/(unclosed"
        gateway.plane.cache.update(resources, "bad-revision")

        def rejected() -> bool:
            proxies = gateway.plane.report()["proxies"]
            return len(proxies) == 2 and all(proxy["types"]["RDS"]["rejection"] for proxy in proxies)

        await wait_for(rejected, 10, "both Envoys to reject the route configuration")
        code, output, _ = await run_cli("status", "--url", f"http://127.0.0.1:{gateway.status_port}")
        assert code == 1, output
        assert "(serving)" not in output
        assert output.startswith(
            "config revision bad-revision REJECTED by 2 of 2 Envoys (each keeps serving the last revision it accepted)"
        ), output
        assert output.count(f": NOT in sync, revision {revision_of(config)}") == 2, output
