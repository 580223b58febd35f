"""`xgate authz` moves its heap out of the cyclic collector's reach after each config load: without it, full
collections walked every module and policy again under load and paused every check in flight (30-45 ms)."""

from __future__ import annotations

import gc

from xgate.api import authz_pb2
from xgate.authz.config import AuthzService
from xgate.testing.gateway import wait_for


async def test_a_config_load_freezes_the_heap_soon_after() -> None:
    gc.unfreeze()
    service = AuthzService()
    try:
        await service.apply_policies({"p": authz_pb2.Policy(name="p", import_path="xgate.authz.rules:rule")})
        assert gc.get_freeze_count() == 0  # deferred: the load's first checks do not wait for a collection
        await wait_for(lambda: gc.get_freeze_count() > 0, 10, "the heap to be frozen after the load")
    finally:
        gc.unfreeze()
