"""etcd with authentication on: the client authenticates with user/password; without them etcd refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from xgate.sources.etcd.client import EtcdClient, EtcdRequestError, EtcdSettings
from xgate.testing import run_etcd

pytestmark = pytest.mark.integration


async def test_user_and_password_are_used_and_required(tmp_path: Path) -> None:
    async with run_etcd(tmp_path / "etcd") as etcd:
        await etcd.call("/v3/auth/role/add", {"name": "root"})
        await etcd.call("/v3/auth/user/add", {"name": "root", "password": "s3cret"})
        await etcd.call("/v3/auth/user/grant", {"user": "root", "role": "root"})
        await etcd.call("/v3/auth/enable", {})
        endpoints = tuple(etcd.endpoints)

        async with EtcdClient(EtcdSettings(endpoints=endpoints, username="root", password="s3cret")) as client:
            revision = await client.put(b"/xgate/route/a", b'{"direct_response": {"status": 200}}')
            read_at, kvs = await client.get_prefix(b"/xgate/")
            assert read_at >= revision and [kv.key for kv in kvs] == [b"/xgate/route/a"]

        async with EtcdClient(EtcdSettings(endpoints=endpoints)) as anonymous:
            with pytest.raises(EtcdRequestError, match="user name"):
                await anonymous.get_prefix(b"/xgate/")

        async with EtcdClient(EtcdSettings(endpoints=endpoints, username="root", password="wrong")) as wrong:
            with pytest.raises(EtcdRequestError, match="authentication failed"):
                await wrong.get_prefix(b"/xgate/")
