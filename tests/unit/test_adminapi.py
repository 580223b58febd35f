"""The admin API on a real grpc.aio server on loopback: each answer is the status port's document, and errors
carry gRPC codes the CLI turns into one line."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from tests.unit.test_controlplane import BASE, file_revision

from xgate.api.v1 import admin_pb2
from xgate.cli.admin import admin_dump, admin_explain, admin_status, plain, watch_reports
from xgate.cli.status import StatusError
from xgate.cli.statuswatch import watch_status
from xgate.config.load import parse_document
from xgate.controlplane import ControlPlane
from xgate.discovery.dump import config_dump
from xgate.explain import explain_request
from xgate.pipeline import compile_config
from xgate.runtime import start_xds
from xgate.testing import free_port

PATH = "/xgate.api.v1.Admin/"


@pytest.fixture
async def served() -> AsyncIterator[tuple[ControlPlane, grpc.aio.Channel, str]]:
    plane = ControlPlane()
    await plane.on_revision(file_revision(BASE))
    server, port = await start_xds(plane.cache, "127.0.0.1", 0, plane=plane)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield plane, channel, f"127.0.0.1:{port}"
    finally:
        await channel.close()
        await server.stop(None)


def _unary(channel: grpc.aio.Channel, method: str, reply: type[Message]) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
    return channel.unary_unary(
        PATH + method,
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=reply.FromString,
    )


def _json(document: object) -> object:
    return json.loads(json.dumps(document))  # what the status port's json_response sends


async def test_get_status_is_the_status_port_report(served: tuple[ControlPlane, grpc.aio.Channel, str]) -> None:
    plane, channel, address = served
    reply = await _unary(channel, "GetStatus", admin_pb2.StatusReport)(admin_pb2.GetStatusRequest())
    assert plain(reply.report) == _json(plane.report())
    assert plain(reply.report)["config"]["applied_revision"] == plane.state.applied is not None
    assert await asyncio.to_thread(admin_status, address) == _json(plane.report())  # the CLI's client


async def test_config_dump_is_the_consumer_s_dump_and_an_unknown_node_is_not_found(
    served: tuple[ControlPlane, grpc.aio.Channel, str],
) -> None:
    plane, channel, address = served
    call = _unary(channel, "ConfigDump", admin_pb2.ConfigDumpReply)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(admin_pb2.ConfigDumpRequest())
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND and "no Envoy" in (caught.value.details() or "")
    proxy = plane.cache.status.connect("127.0.0.1:1")
    proxy.node_id = "edge-1"
    reply = await call(admin_pb2.ConfigDumpRequest(node="edge-1"))
    assert plain(reply.dump) == _json(config_dump(proxy)()) and plain(reply.dump)["node"] == "edge-1"
    with pytest.raises(StatusError, match=r"^no consumer with node id 'nope' is connected \(connected: edge-1\)$"):
        await asyncio.to_thread(admin_dump, address, "nope")


async def test_watch_status_sends_a_report_now_and_one_after_a_change(
    served: tuple[ControlPlane, grpc.aio.Channel, str],
) -> None:
    plane, channel, _ = served
    watch = channel.unary_stream(
        PATH + "WatchStatus",
        request_serializer=admin_pb2.WatchStatusRequest.SerializeToString,
        response_deserializer=admin_pb2.StatusReport.FromString,
    )
    stream = watch(admin_pb2.WatchStatusRequest(interval_ms=100))
    first = plain((await asyncio.wait_for(stream.read(), 5)).report)
    assert first == _json(plane.report())
    await plane.on_revision(file_revision(BASE.replace("/two", "/three")))
    assert plane.state.applied != first["config"]["applied_revision"]
    second = plain((await asyncio.wait_for(stream.read(), 5)).report)
    assert second["config"]["applied_revision"] == plane.state.applied
    stream.cancel()


async def test_the_cli_client_reads_the_stream(served: tuple[ControlPlane, grpc.aio.Channel, str]) -> None:
    plane, _, address = served

    def first_report() -> dict[str, object]:
        reports = watch_reports(address, 100)
        try:
            return next(reports)
        finally:
            reports.close()

    assert await asyncio.to_thread(first_report) == _json(plane.report())


async def test_explain_answers_from_the_served_config(served: tuple[ControlPlane, grpc.aio.Channel, str]) -> None:
    _, channel, address = served
    call = _unary(channel, "Explain", admin_pb2.ExplainReply)
    offline = compile_config(parse_document(BASE, "gateway.yaml"))
    for path, route in (("/two/x", "two"), ("/nothing", None)):
        url = f"http://api.test:10000{path}"
        reply = await call(admin_pb2.ExplainRequest(method="GET", url=url, headers=["x-a: 1"]))
        expected = _json(explain_request(offline, "GET", url, ["x-a: 1"], None))
        assert plain(reply.explanation) == expected and expected["route"] == route
        assert reply.matched is (route is not None)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(admin_pb2.ExplainRequest(method="GET", url="api.test/two"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "give a full http://" in str(
        caught.value.details()
    )
    with pytest.raises(StatusError, match="no listener 'other'"):
        await asyncio.to_thread(admin_explain, address, "GET", "http://api.test/", [], "other")


async def test_explain_before_any_config_is_a_failed_precondition() -> None:
    plane = ControlPlane()
    server, port = await start_xds(plane.cache, "127.0.0.1", 0, plane=plane)
    try:
        with pytest.raises(StatusError, match=r"^the control plane serves no config yet$"):
            await asyncio.to_thread(admin_explain, f"127.0.0.1:{port}", "GET", "http://a.test/", [], None)
    finally:
        await server.stop(None)


async def test_a_port_without_the_admin_api_or_without_anything_is_one_clear_line() -> None:
    plane = ControlPlane()
    server, port = await start_xds(plane.cache, "127.0.0.1", 0)  # ADS only
    try:
        with pytest.raises(StatusError, match="has no xgate admin API"):
            await asyncio.to_thread(admin_status, f"127.0.0.1:{port}")
    finally:
        await server.stop(None)
    with pytest.raises(StatusError, match="cannot reach the control plane's admin API"):
        await asyncio.to_thread(admin_status, f"127.0.0.1:{free_port()}")
    with pytest.raises(StatusError, match="give the control plane's xDS address as HOST:PORT"):
        admin_status("localhost")


def test_whole_numbers_come_back_as_ints() -> None:
    struct = json_format.ParseDict({"a": 3, "b": 2.5, "c": [1, {"d": None}]}, admin_pb2.StatusReport().report)
    assert plain(struct) == {"a": 3, "b": 2.5, "c": [1, {"d": None}]} and isinstance(plain(struct)["a"], int)


async def test_status_watch_over_the_admin_api(
    served: tuple[ControlPlane, grpc.aio.Channel, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`xgate status --admin --watch -o json`: each line's report is GetStatus's; no Envoy, so not ok (exit 1)."""
    plane, _, address = served
    code = await asyncio.to_thread(watch_status, "", "json", 0.1, 2, lambda _url: admin_status(address))
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1 and len(lines) == 2
    assert all(line["report"] == _json(plane.report()) and line["error"] is None for line in lines)
