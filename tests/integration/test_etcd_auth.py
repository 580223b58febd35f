"""etcd with authentication on: the client authenticates with user/password; without them etcd refuses; a
wrong password is reported, not a crash; `xgate up` hands the credentials to every child."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from xgate.cli.etcdstore import execute, plan_apply, read_stored
from xgate.config.load import parse_document
from xgate.sources.etcd.client import EtcdClient, EtcdRequestError, EtcdSettings
from xgate.testing import free_port, run_cli, run_etcd

pytestmark = pytest.mark.integration
PASSWORD = "s3cret"


@contextlib.asynccontextmanager
async def etcd_with_auth(work: Path) -> AsyncIterator[tuple[str, ...]]:
    """One etcd member with authentication on (user root, password PASSWORD); yields its endpoints."""
    async with run_etcd(work) as etcd:
        await etcd.call("/v3/auth/role/add", {"name": "root"})
        await etcd.call("/v3/auth/user/add", {"name": "root", "password": PASSWORD})
        await etcd.call("/v3/auth/user/grant", {"user": "root", "role": "root"})
        await etcd.call("/v3/auth/enable", {})
        yield tuple(etcd.endpoints)


async def test_user_and_password_are_used_and_required(tmp_path: Path) -> None:
    async with etcd_with_auth(tmp_path / "etcd") as endpoints:
        async with EtcdClient(EtcdSettings(endpoints=endpoints, username="root", password=PASSWORD)) as client:
            revision = await client.put(b"/xgate/route/a", b'{"direct_response": {"status": 200}}')
            read_at, kvs = await client.get_prefix(b"/xgate/")
            assert read_at >= revision and [kv.key for kv in kvs] == [b"/xgate/route/a"]

        async with EtcdClient(EtcdSettings(endpoints=endpoints)) as anonymous:
            with pytest.raises(EtcdRequestError, match="user name"):
                await anonymous.get_prefix(b"/xgate/")

        async with EtcdClient(EtcdSettings(endpoints=endpoints, username="root", password="wrong")) as wrong:
            with pytest.raises(EtcdRequestError, match="authentication failed"):
                await wrong.get_prefix(b"/xgate/")


async def test_a_wrong_password_is_reported_not_a_crash(tmp_path: Path) -> None:
    """The control plane starts (as with etcd down), logs why it has no config, and status answers no."""
    async with etcd_with_auth(tmp_path / "etcd") as endpoints:
        argv = ["controlplane", "--etcd", ",".join(endpoints), "--etcd-user", "root", "--xds", "127.0.0.1:0",
                "--status", "127.0.0.1:0"]  # fmt: skip
        plane = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "xgate", *argv, env={**os.environ, "XGATE_ETCD_PASSWORD": "wrong"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert plane.stdout is not None and plane.stderr is not None
        try:
            ready = (await asyncio.wait_for(plane.stdout.readline(), 30)).decode()
            assert "control plane ready" in ready, ready
            status_url = ready.split(" status ")[1].split()[0].removesuffix("/status")
            code, out, _ = await run_cli("status", "--url", status_url)
            assert code == 1 and "authentication failed" in out, out
        finally:
            if plane.returncode is None:
                plane.terminate()
            assert await asyncio.wait_for(plane.wait(), 20) == 0
        log = (await plane.stderr.read()).decode()
        assert "no config from etcd: etcd refused the request" in log and "Traceback" not in log, log


async def test_up_hands_etcd_auth_to_every_child(tmp_path: Path) -> None:
    """`xgate up --etcd ... --etcd-user root` with the password in the environment: the control plane reads etcd,
    the three services are configured by it, Envoy serves what etcd holds, and no child's command line shows
    the password."""
    port, xds, status, admin = free_port(), free_port(), free_port(), free_port()
    text = (
        f"listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]\n"
        "routes: [{name: hello, match: {path: {exact: /hello}}, direct_response: {status: 200, body: from-etcd}}]\n"
    )
    async with etcd_with_auth(tmp_path / "etcd") as endpoints:
        async with EtcdClient(EtcdSettings(endpoints=endpoints, username="root", password=PASSWORD)) as client:
            await execute(
                client, plan_apply(await read_stored(client, "/xgate/"), parse_document(text, "t"), "/xgate/")
            )
        argv = ["up", "--etcd", ",".join(endpoints), "--etcd-user", "root", "--xds", f"127.0.0.1:{xds}",
                "--status", f"127.0.0.1:{status}", "--admin-port", str(admin)]  # fmt: skip
        log_path = tmp_path / "up.log"
        with log_path.open("wb") as log:
            up = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "xgate", *argv, env={**os.environ, "XGATE_ETCD_PASSWORD": PASSWORD},
                stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        try:
            loaded = ("[authz]", "[dyeing]", "[ratelimit]")
            async with httpx.AsyncClient() as http:
                for _ in range(600):
                    text_now = log_path.read_text()
                    every = all("ready: grpc" in _lines(text_now, name) for name in loaded)
                    with contextlib.suppress(httpx.HTTPError):
                        if every and (await http.get(f"http://127.0.0.1:{port}/hello")).text == "from-etcd":
                            break
                    assert up.returncode is None, log_path.read_text()
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError(log_path.read_text())
            code, out, _ = await run_cli("status", "--url", f"http://127.0.0.1:{status}")
            assert code == 0, out
            code, out, _ = await run_cli("status", "--url", f"http://127.0.0.1:{status}", "--json")
            assert sorted(service["kind"] for service in json.loads(out)["services"]) == [
                "authz",
                "dyeing",
                "ratelimit",
            ]
            assert "no config from etcd" not in log_path.read_text()
            children = _children(up.pid)
            assert len(children) >= 5  # the control plane, the three services and Envoy
            assert PASSWORD not in " ".join(Path(f"/proc/{pid}/cmdline").read_text() for pid in children)
        finally:
            if up.returncode is None:
                os.killpg(up.pid, signal.SIGINT)
            assert await asyncio.wait_for(up.wait(), 30) == 0


def _lines(log: str, prefix: str) -> str:
    return "\n".join(line for line in log.splitlines() if line.startswith(prefix))


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(pid):
                    found.append(int(entry.name))
    return found
