"""The dashboard on the status port, in a real headless browser (Debian's chromium): the fleet with its sync
state, a NACK with its message and config object, recent revisions with each Envoy's propagation time. The
screenshot is kept under the test's tmp dir and its path printed."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from tests.integration.conftest import ConfigMaker

from xgate.config.load import parse_document
from xgate.pipeline import compile_config
from xgate.sources.revision import revision_of
from xgate.testing import free_port, run_gateway
from xgate.testing.gateway import wait_for

pytestmark = pytest.mark.integration


async def _chromium(url: str, profile: Path, *flags: str) -> str:
    """Run headless chromium on `url` (the page's scripts run for a few seconds of virtual time); its stdout."""
    binary = shutil.which("chromium")
    assert binary is not None, "chromium is not installed: scripts/system-deps.sh installs it"
    process = await asyncio.create_subprocess_exec(
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--window-size=1280,900", *flags, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), 90)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


async def test_the_dashboard_shows_the_fleet_a_nack_and_recent_revisions(
    make_config: ConfigMaker, work_dir: Path, tmp_path: Path
) -> None:
    config = make_config(free_port())
    async with run_gateway(config, work_dir, envoys=2) as gateway:
        changed = config.replace("body: ok", "body: changed")
        await gateway.apply(changed)
        # A revision both Envoys refuse (pushed past validation, as an Envoy of another version might refuse).
        resources = compile_config(parse_document(changed, "test")).resources
        resources.route_config("routes/public").virtual_hosts[0].routes[0].match.safe_regex.regex = "/(unclosed"
        gateway.plane.cache.update(resources, "bad-revision")

        def rejected() -> bool:
            proxies = gateway.plane.report()["proxies"]
            return len(proxies) == 2 and all(proxy["types"]["RDS"]["rejection"] for proxy in proxies)

        await wait_for(rejected, 10, "both Envoys to reject the route configuration")
        url = f"http://127.0.0.1:{gateway.status_port}/dashboard"
        dom = (await _chromium(url, tmp_path / "profile", "--dump-dom")).split("<script>")[0]  # what it shows
        assert 'data-loaded="true"' in dom, dom[-3000:]
        assert "revision bad-revision: NOT all in sync" in dom
        assert dom.count("test-envoy-0") >= 3 and dom.count("test-envoy-1") >= 3  # fleet, and two revisions each
        assert dom.count("RDS rejected revision bad-revision: ") == 2
        assert "from: route" in dom
        assert dom.count("NACK: ") == 2
        assert revision_of(changed) in dom and " ms</span>" in dom
        assert dom.count(" ms (from connecting)</span>") == 2  # the first revision: start-up, told apart

        screenshot = tmp_path / "dashboard.png"
        await _chromium(url, tmp_path / "profile-shot", f"--screenshot={screenshot}")
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000
        print(f"dashboard screenshot: {screenshot}")
